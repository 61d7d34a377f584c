//! [`ReceiptMode`]: when the gateway's signed receipt of an exchange is verified, for
//! [`Client`](crate::Client) and `aci-proxy` alike.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// When a [`Client`](crate::Client) (and `aci-proxy`, built on it) verifies the gateway's signed
/// receipt of each exchange. The names in parentheses are how `aci-proxy --receipts` and its
/// TOML file spell the mode ([`FromStr`], serde, `Display`).
///
/// ```
/// use tower_aci::client::ReceiptMode;
/// let mode: ReceiptMode = "hold-until-verified".parse().unwrap();
/// assert_eq!(mode, ReceiptMode::HoldUntilVerified);
/// assert_eq!(ReceiptMode::Background.as_str(), "verify"); // the default
/// assert!("sometimes".parse::<ReceiptMode>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReceiptMode {
    /// (`verify`) Once the answer was read to its end, fetch and verify its receipt in the
    /// background (on Tokio); the answer itself is not held back. The outcome is the
    /// [`ReceiptCheck`](crate::client::ReceiptCheck) in the response's extensions
    /// ([`ReceiptVerdict::Background`](crate::client::ReceiptVerdict::Background) of
    /// [`Client::post`](crate::Client::post)), counted in
    /// [`Client::receipt_stats`](crate::Client::receipt_stats) and logged at `error` when it fails.
    #[default]
    #[serde(rename = "verify")]
    Background,
    /// (`before-release`) Release an answer only once its receipt verified
    /// ([`VerifyBeforeReleaseLayer`](crate::receipt::VerifyBeforeReleaseLayer)): a buffered
    /// answer is the call's error when the receipt does not verify; a stream's events flow as
    /// they authenticate, and its `[DONE]` waits for the receipt (an event an on-path attacker
    /// dropped, duplicated or reordered may reach you before the receipt's error).
    BeforeRelease,
    /// (`off`) Do not verify receipts (verify some yourself with
    /// [`Client::verify_receipt`](crate::Client::verify_receipt)).
    Off,
    /// (`hold-until-verified`) Release no byte of any answer before its receipt verified: as
    /// [`BeforeRelease`](Self::BeforeRelease) for buffered answers, and a stream is read to its
    /// end and held (at most 64 MiB, else `TooLarge`: the default of
    /// [`max_release_body`](crate::receipt::ReceiptClient::max_release_body)) until its receipt
    /// verified, then released whole; on any failure
    /// the body's first frame is the error
    /// ([`hold_whole_stream`](crate::receipt::VerifyBeforeReleaseLayer::hold_whole_stream)). You
    /// wait for the end of every stream, and never see a forged answer.
    HoldUntilVerified,
}

impl ReceiptMode {
    /// The mode as `aci-proxy --receipts` spells it: `off`, `verify`, `before-release`,
    /// `hold-until-verified` (a stable string, for status pages and labels).
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptMode::Off => "off",
            ReceiptMode::Background => "verify",
            ReceiptMode::BeforeRelease => "before-release",
            ReceiptMode::HoldUntilVerified => "hold-until-verified",
        }
    }
}

impl fmt::Display for ReceiptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReceiptMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [ReceiptMode::Off, ReceiptMode::Background, ReceiptMode::BeforeRelease, ReceiptMode::HoldUntilVerified]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::config(format!("unknown receipt mode {s:?} (off, verify, before-release, hold-until-verified)"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_reads_back_as_it_is_written() {
        for mode in
            [ReceiptMode::Off, ReceiptMode::Background, ReceiptMode::BeforeRelease, ReceiptMode::HoldUntilVerified]
        {
            assert_eq!(mode.as_str().parse::<ReceiptMode>().unwrap(), mode);
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            assert_eq!(serde_json::from_str::<ReceiptMode>(&json).unwrap(), mode);
        }
        assert!(serde_json::from_str::<ReceiptMode>("\"background\"").is_err());
    }
}
