//! One integration-test binary (keeps link time down on small machines).

mod data;
mod protocol_props;
mod protocol_vectors;
