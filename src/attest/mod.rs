//! Attestation: verify a gateway's report under a policy and keep its keyset current.

mod clock;
mod handle;
mod keyset;

pub use clock::{Clock, ManualClock, SystemClock};
pub use handle::KeyHandle;
pub use keyset::{AttestedKeyset, ReceiptKey, TlsKey};
