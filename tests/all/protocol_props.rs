//! Property tests of the protocol core.
