//! [`Answer`]: what [`Client::post`](crate::Client::post) returns, the decrypted answer with its
//! receipt's outcome ([`ReceiptVerdict`]).

use std::fmt;

use bytes::Bytes;

use crate::client::service::ReceiptCheck;
use crate::error::{Error, ErrorKind, ReceiptFailure, Result};
use crate::receipt::{ExchangeRecord, VerifiedReceipt};

/// A decrypted answer and what became of its receipt, from [`Client::post`](crate::Client::post).
///
/// ```no_run
/// # async fn run(client: tower_aci::Client, chat: String) -> tower_aci::Result<()> {
/// let answer = client.post("/v1/chat/completions", chat).await?;
/// println!("{}", String::from_utf8_lossy(&answer.body)); // decrypted, authenticated per field
/// let receipt = answer.receipt.verified().await?; // the gateway signed exactly these bytes
/// println!("receipt {} verified", receipt.receipt().receipt_id());
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Answer {
    /// The decrypted answer, read whole (a stream's events with their SSE framing).
    pub body: Bytes,
    /// The receipt: verified already, being verified, or not verified at all, as the client's
    /// [`ReceiptMode`](crate::client::ReceiptMode) says.
    pub receipt: ReceiptVerdict,
    /// What the client saw of the exchange, for [`Client::verify_receipt`](crate::Client::verify_receipt)
    /// (under [`ReceiptMode::Off`](crate::client::ReceiptMode::Off)) or an audit trail.
    pub record: ExchangeRecord,
}

/// The outcome of an answer's receipt, as the client's [`ReceiptMode`](crate::client::ReceiptMode)
/// decides it.
#[derive(Clone)]
#[non_exhaustive]
pub enum ReceiptVerdict {
    /// `BeforeRelease` or `HoldUntilVerified`: the receipt verified before the answer was
    /// released (had it failed, the call would have failed).
    Verified(Box<VerifiedReceipt>),
    /// `Background`: the receipt is being fetched and verified now; await
    /// [`verified`](Self::verified) (or [`ReceiptCheck::verified`]) for the outcome. A failure
    /// is counted in [`Client::receipt_stats`](crate::Client::receipt_stats) too.
    Background(ReceiptCheck),
    /// `Off`: the receipt is not verified (verify it with
    /// [`Client::verify_receipt`](crate::Client::verify_receipt) and [`Answer::record`]).
    Off,
}

impl fmt::Debug for ReceiptVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiptVerdict::Verified(v) => f.debug_tuple("Verified").field(&v.receipt().receipt_id()).finish(),
            ReceiptVerdict::Background(check) => f.debug_tuple("Background").field(check).finish(),
            ReceiptVerdict::Off => f.write_str("Off"),
        }
    }
}

impl ReceiptVerdict {
    /// The verified receipt: at once when it verified before release, once the background
    /// check ended otherwise. Fails with the check's error (kind
    /// [`Receipt`](ErrorKind::Receipt), or a fetch error), and under `Off` with
    /// `Receipt(NotAvailable)` saying that receipts are off.
    pub async fn verified(&self) -> Result<VerifiedReceipt> {
        match self {
            ReceiptVerdict::Verified(v) => Ok((**v).clone()),
            ReceiptVerdict::Background(check) => check.verified().await,
            ReceiptVerdict::Off => Err(Error::new(
                ErrorKind::Receipt(ReceiptFailure::NotAvailable),
                "receipts are off (ReceiptMode::Off): verify this one with Client::verify_receipt(&answer.record)",
            )),
        }
    }
}
