//! Hardware verification of the gateway's Intel TDX quote (feature `dcap`).
//!
//! The quote in `evidence.quote` is verified with [`dcap-qvl`](dcap_qvl) (pure Rust, RustCrypto
//! backend) against Intel's root CA and a set of [`Collateral`]: the PCK CRL, the root CA CRL, the
//! platform's TCB info and the quoting enclave's identity, each with its issuer chain. Collateral
//! is either supplied offline ([`PolicyBuilder::collateral`](crate::attest::PolicyBuilder::collateral))
//! or fetched from a PCCS through the same tower HTTP service the key provider fetches reports
//! with ([`KeyProviderBuilder::pccs`](crate::attest::KeyProviderBuilder::pccs), or
//! [`fetch_collateral`] directly).
//!
//! Collateral carries its own validity window (`issueDate`/`nextUpdate`, CRL `thisUpdate`/
//! `nextUpdate`); verification happens at the `now` given to
//! [`verify_report`](crate::attest::verify_report), so stale collateral is refused and tests can
//! pin the time.
//!
//! [`verify_report`](crate::attest::verify_report) runs this as step 2 under a policy that
//! requires hardware verification: the quote must parse as TDX, its 64-byte report-data slot must
//! equal `report_data ‖ 32 zero bytes` (and `quote_report_data`, if published, the slot), it must
//! verify against the collateral at `now`, and its TCB status must be one the policy accepts
//! (`UpToDate` by default), and no Intel advisory that applies to it may be one the policy refuses
//! ([`PolicyBuilder::refuse_advisories`](crate::attest::PolicyBuilder::refuse_advisories)). Step 7
//! then replays the dstack event log to the quote's RTMR3, reads the measured compose hash and app
//! id from it, and compares the quote's MRTD and RTMR0–2 with the policy's pinned boot measurements
//! ([`PolicyBuilder::allow_boot_measurements`](crate::attest::PolicyBuilder::allow_boot_measurements)).
//! A keyset verified this way reports
//! [`hardware_verified() == true`](crate::attest::AttestedKeyset::hardware_verified), its
//! [`boot_measurements`](crate::attest::AttestedKeyset::boot_measurements),
//! [`tcb_status`](crate::attest::AttestedKeyset::tcb_status) and
//! [`advisory_ids`](crate::attest::AttestedKeyset::advisory_ids).
//!
//! ```no_run
//! use tower_aci::attest::dcap::Collateral;
//! use tower_aci::attest::{Policy, verify_report_with_collateral};
//!
//! # fn demo(report: &[u8], nonce: &[u8; 32], now: u64) -> tower_aci::Result<()> {
//! // Collateral as dcap-qvl serialises it (`QuoteCollateralV3`), e.g. saved from a PCCS earlier
//! // (`fetch_collateral`, then `Collateral::to_json`).
//! let collateral = Collateral::from_json(&std::fs::read("collateral.json").unwrap())?;
//!
//! // The code, the TD's boot chain and the KMS that provisioned it (see `Policy`; the real June
//! // 2026 capture's values, as `aci-proxy inspect` prints them).
//! let policy = Policy::builder()
//!     .allow_compose_hash("5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb")
//!     .allow_boot_measurements(
//!         "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077",
//!         "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072",
//!         "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c",
//!         "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f",
//!     )
//!     .allow_kms_identity(concat!(
//!         "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bb",
//!         "d19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f",
//!     ))
//!     .refuse_advisories(["INTEL-SA-00837"])
//!     .accept_tcb_statuses(["UpToDate"])
//!     .build()?;
//!
//! // Verify a report offline: quote, collateral window, TCB status, advisories, boot chain.
//! let keyset = verify_report_with_collateral(report, nonce, now, &policy, &collateral)?;
//! assert!(keyset.hardware_verified());
//! println!("TCB status {:?}, advisories {:?}", keyset.tcb_status(), keyset.advisory_ids());
//! # Ok(()) }
//! ```

use std::fmt;

use bytes::Bytes;
use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::configs::RustCryptoConfig;
use dcap_qvl::quote::{Quote, TDReport10};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower::ServiceExt;
use tower_service::Service;

use crate::attest::keyset::{self, BootMeasurements, HardwareEvidence};
use crate::error::{AttestationFailure, BoxError, Error, ErrorKind, Result};
use crate::hex;

/// The dcap-qvl crate this module is built on (for [`QuoteCollateralV3`] and the report types).
pub use dcap_qvl;

/// The largest raw quote accepted (a TDX quote with its PCK chain is about 5 KiB).
const MAX_QUOTE_LEN: usize = 64 * 1024;

/// The largest PCCS response body accepted.
const MAX_PCCS_RESPONSE: usize = 1024 * 1024;

/// Certification data type 5: the PCK certificate chain is embedded in the quote.
const CERT_TYPE_PCK_CHAIN: u16 = 5;

fn quote_error(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::attestation(AttestationFailure::Quote, message)
}

/// Collateral for verifying TDX quotes of one platform (FMSPC): the PCK CRL and its issuer chain,
/// the root CA CRL, the signed TCB info and QE identity with their issuer chains, and optionally
/// the PCK certificate chain.
///
/// Build it from dcap-qvl's JSON form ([`from_json`](Self::from_json)), from a
/// [`QuoteCollateralV3`] (`From`), or fetch it from a PCCS with [`fetch_collateral`].
#[derive(Clone)]
pub struct Collateral {
    inner: QuoteCollateralV3,
    /// Uppercase hex FMSPC named by the TCB info, if it names one.
    fmspc: Option<String>,
}

impl Collateral {
    /// Parse dcap-qvl's JSON serialisation of [`QuoteCollateralV3`] (binary members as hex). Fails
    /// with [`Config`](ErrorKind::Config) when it is not one.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let inner: QuoteCollateralV3 = serde_json::from_slice(json).map_err(|e| {
            Error::new(ErrorKind::Config, format!("the collateral is not dcap-qvl collateral JSON: {e}"))
        })?;
        Ok(Self::from(inner))
    }

    /// dcap-qvl's JSON serialisation (the form [`from_json`](Self::from_json) reads), for caching.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and byte vectors cannot fail.
        serde_json::to_vec(&self.inner).unwrap_or_default()
    }

    /// The collateral as dcap-qvl represents it.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn as_qvl(&self) -> &QuoteCollateralV3 {
        &self.inner
    }

    /// The platform FMSPC the TCB info is for (uppercase hex), if the TCB info names one.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn fmspc(&self) -> Option<&str> {
        self.fmspc.as_deref()
    }
}

impl From<QuoteCollateralV3> for Collateral {
    fn from(inner: QuoteCollateralV3) -> Self {
        #[derive(Deserialize)]
        struct TcbInfoFmspc {
            fmspc: Option<String>,
        }
        let fmspc = serde_json::from_str::<TcbInfoFmspc>(&inner.tcb_info)
            .ok()
            .and_then(|t| t.fmspc)
            .map(|f| f.to_ascii_uppercase());
        Collateral { inner, fmspc }
    }
}

impl From<Collateral> for QuoteCollateralV3 {
    fn from(c: Collateral) -> Self {
        c.inner
    }
}

impl fmt::Debug for Collateral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collateral").field("fmspc", &self.fmspc).finish_non_exhaustive()
    }
}

/// A TDX quote that verified against collateral at a given time.
///
/// Its TCB status has not been judged yet: see [`check_tcb_status`](Self::check_tcb_status).
#[derive(Clone, Debug)]
#[doc(hidden)] // a hook for the crate's own tests: not API
pub struct VerifiedQuote {
    tcb_status: String,
    advisory_ids: Vec<String>,
    td_report: TDReport10,
}

impl VerifiedQuote {
    /// The TCB status dcap-qvl derived from the collateral (`UpToDate`, `SWHardeningNeeded`,
    /// `ConfigurationNeeded`, `ConfigurationAndSWHardeningNeeded`, `OutOfDate`,
    /// `OutOfDateConfigurationNeeded`; `Revoked` never verifies).
    pub fn tcb_status(&self) -> &str {
        &self.tcb_status
    }

    /// The Intel security advisories that apply to the platform's TCB level.
    pub fn advisory_ids(&self) -> &[String] {
        &self.advisory_ids
    }

    /// The 64-byte report-data slot.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.td_report.report_data
    }

    /// MRTD, the measurement of the initial TD image.
    pub fn mr_td(&self) -> &[u8; 48] {
        &self.td_report.mr_td
    }

    /// RTMR0, the firmware's boot configuration.
    pub fn rt_mr0(&self) -> &[u8; 48] {
        &self.td_report.rt_mr0
    }

    /// RTMR1, the OS loader and kernel.
    pub fn rt_mr1(&self) -> &[u8; 48] {
        &self.td_report.rt_mr1
    }

    /// RTMR2, the kernel command line and initrd.
    pub fn rt_mr2(&self) -> &[u8; 48] {
        &self.td_report.rt_mr2
    }

    /// RTMR3, the runtime register the dstack event log replays to.
    pub fn rt_mr3(&self) -> &[u8; 48] {
        &self.td_report.rt_mr3
    }

    /// MRTD and RTMR0–2: what
    /// [`PolicyBuilder::allow_boot_measurements`](crate::attest::PolicyBuilder::allow_boot_measurements)
    /// pins.
    pub fn boot_measurements(&self) -> BootMeasurements {
        let r = &self.td_report;
        BootMeasurements { mrtd: r.mr_td, rtmr0: r.rt_mr0, rtmr1: r.rt_mr1, rtmr2: r.rt_mr2 }
    }

    /// Fails with [`NotAllowed`](AttestationFailure::NotAllowed) unless the quote's MRTD and
    /// RTMR0–2 equal one of `allowed` — typically a policy's
    /// [`allowed_boot_measurements`](crate::attest::Policy::allowed_boot_measurements). An empty
    /// `allowed` pins nothing. The message names the measured values in full.
    pub fn check_boot_measurements(&self, allowed: &[BootMeasurements]) -> Result<()> {
        keyset::check_boot_measurements(allowed, Some(&self.boot_measurements()))
    }

    /// Fails with [`TcbStatus`](AttestationFailure::TcbStatus) when an advisory that applies to
    /// the platform's TCB level is one of `refused` (compared case-insensitively) — typically a
    /// policy's [`refused_advisories`](crate::attest::Policy::refused_advisories).
    pub fn check_advisories<T: AsRef<str>>(&self, refused: &[T]) -> Result<()> {
        let hits: Vec<&str> = self
            .advisory_ids
            .iter()
            .map(String::as_str)
            .filter(|id| refused.iter().any(|r| r.as_ref().eq_ignore_ascii_case(id)))
            .collect();
        if hits.is_empty() {
            return Ok(());
        }
        Err(Error::attestation(
            AttestationFailure::TcbStatus,
            format!(
                "the platform's TCB level is affected by {}, which the policy refuses (advisories that apply: {}); \
                 the platform needs a TCB recovery (microcode / TDX module update) first",
                hits.join(", "),
                self.advisory_ids.join(", ")
            ),
        ))
    }

    /// Fails with [`TcbStatus`](AttestationFailure::TcbStatus) unless the quote's TCB status is
    /// one of `accepted` — typically a policy's
    /// [`accepted_tcb_statuses`](crate::attest::Policy::accepted_tcb_statuses) (set with
    /// [`PolicyBuilder::accept_tcb_statuses`](crate::attest::PolicyBuilder::accept_tcb_statuses);
    /// `UpToDate` only by default).
    pub fn check_tcb_status<T: AsRef<str>>(&self, accepted: &[T]) -> Result<()> {
        if accepted.iter().any(|a| a.as_ref() == self.tcb_status) {
            Ok(())
        } else {
            Err(Error::attestation(
                AttestationFailure::TcbStatus,
                format!(
                    "the platform's TCB status {} is not accepted by the policy (accepted: {})",
                    self.tcb_status,
                    accepted.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }
}

/// Parse a raw quote; it must be a TDX quote of a sane size.
pub(crate) fn parse_tdx(raw_quote: &[u8]) -> Result<Quote> {
    if raw_quote.len() > MAX_QUOTE_LEN {
        return Err(quote_error(format!("the quote is longer than {MAX_QUOTE_LEN} bytes")));
    }
    let quote = Quote::parse(raw_quote).map_err(|e| quote_error(format!("the quote does not parse: {e:#}")))?;
    if quote.report.as_td10().is_none() {
        return Err(quote_error("the quote is not a TDX quote"));
    }
    Ok(quote)
}

/// The quote's 64-byte report-data slot.
pub(crate) fn slot_of(quote: &Quote) -> Result<&[u8; 64]> {
    quote.report.as_td10().map(|r| &r.report_data).ok_or_else(|| quote_error("the quote is not a TDX quote"))
}

/// The FMSPC of the quote's PCK certificate (uppercase hex).
fn quote_fmspc(quote: &Quote) -> Result<String> {
    dcap_qvl::intel::quote_fmspc_with::<RustCryptoConfig>(quote)
        .map(hex::encode_upper)
        .map_err(|e| quote_error(format!("the quote's PCK certificate names no FMSPC: {e:#}")))
}

/// Verify a raw TDX quote against `collateral` at `now` (Unix seconds) with Intel's production
/// root CA.
///
/// Checks, in order: the quote parses as a TDX quote (at most 64 KiB); if `expected_slot` is
/// given, the quote's report-data slot equals it; the quote, its PCK chain and the collateral
/// verify to Intel's root at `now` (every CRL, the TCB info and the QE identity must be within
/// their validity window), and the TD is not a debug TD. The TCB status is reported, not judged:
/// use [`VerifiedQuote::check_tcb_status`]. Every failure is
/// [`Quote`](AttestationFailure::Quote).
///
/// [`verify_report`](crate::attest::verify_report) calls this with
/// `expected_slot = report_data ‖ 32 zero bytes`.
#[doc(hidden)] // a hook for the crate's own tests: not API
pub fn verify_quote(
    raw_quote: &[u8],
    collateral: &Collateral,
    now: u64,
    expected_slot: Option<&[u8; 64]>,
) -> Result<VerifiedQuote> {
    let quote = parse_tdx(raw_quote)?;
    if let Some(expected) = expected_slot {
        if slot_of(&quote)? != expected {
            return Err(quote_error("the quote's report-data slot does not carry report_data"));
        }
    }
    let verified = dcap_qvl::verify::rustcrypto::verify(raw_quote, &collateral.inner, now)
        .map_err(|e| quote_error(format!("the quote does not verify against the collateral at {now}: {e:#}")))?;
    let td_report = verified.report.as_td10().cloned().ok_or_else(|| quote_error("the quote is not a TDX quote"))?;
    Ok(VerifiedQuote { tcb_status: verified.status, advisory_ids: verified.advisory_ids, td_report })
}

/// Step 2 of [`verify_report`](crate::attest::verify_report) under a policy that requires
/// hardware verification: returns the verified quote's RTMR3 and the evidence the keyset
/// reports (boot measurements, TCB status, advisories).
///
/// `fetched` (collateral fetched for this quote) wins over the policy's `offline` collateral, of
/// which the one for the quote's FMSPC is used. No collateral for it is
/// [`HardwareUnverifiable`](AttestationFailure::HardwareUnverifiable). The TCB status must be one
/// of `accepted`, and no advisory that applies may be `refused`. (The boot measurements are
/// compared with the policy's in step 7, with the other measured values.)
pub(crate) fn appraise(
    raw_quote: &[u8],
    expected_slot: &[u8; 64],
    fetched: Option<&Collateral>,
    offline: &[Collateral],
    accepted: &[String],
    refused: &[String],
    now: u64,
) -> Result<([u8; 48], HardwareEvidence)> {
    let quote = parse_tdx(raw_quote)?;
    let collateral = match fetched {
        Some(c) => c,
        None => select(&quote, offline)?,
    };
    let verified = verify_quote(raw_quote, collateral, now, Some(expected_slot))?;
    verified.check_tcb_status(accepted)?;
    verified.check_advisories(refused)?;
    let evidence = HardwareEvidence {
        boot: verified.boot_measurements(),
        tcb_status: verified.tcb_status,
        advisory_ids: verified.advisory_ids,
    };
    Ok((verified.td_report.rt_mr3, evidence))
}

/// Fails with [`HardwareUnverifiable`](AttestationFailure::HardwareUnverifiable) when there is
/// no collateral at all (checked before the quote is parsed).
pub(crate) fn require_collateral(fetched: Option<&Collateral>, offline: &[Collateral]) -> Result<()> {
    if fetched.is_none() && offline.is_empty() {
        return Err(Error::attestation(
            AttestationFailure::HardwareUnverifiable,
            "the policy requires hardware verification of the TDX quote and no collateral is available \
             (PolicyBuilder::collateral, or KeyProviderBuilder::pccs to fetch it)",
        ));
    }
    Ok(())
}

/// The offline collateral for the quote's platform.
fn select<'a>(quote: &Quote, offline: &'a [Collateral]) -> Result<&'a Collateral> {
    let fmspc = quote_fmspc(quote)?;
    offline.iter().find(|c| c.fmspc.as_deref() == Some(fmspc.as_str())).ok_or_else(|| {
        Error::attestation(
            AttestationFailure::HardwareUnverifiable,
            format!("the policy has no collateral for the quote's platform (FMSPC {fmspc})"),
        )
    })
}

/// Fetch the collateral for `raw_quote` from a PCCS (Intel's v4 API, as
/// `https://pccs.phala.network` or a local Intel PCCS serve it) through `service`: four `GET`s
/// to `{pccs_url}/sgx/certification/v4/pckcrl`, `…/tdx/certification/v4/tcb`,
/// `…/tdx/certification/v4/qe/identity` and `…/sgx/certification/v4/rootcacrl`.
///
/// `service` must route absolute URIs (any general HTTP client does). The quote must embed its
/// PCK certificate chain (certification data type 5, as TDX quotes do); the PCK chain is taken
/// from it. Intel's PCS, which has no `rootcacrl` endpoint, is not supported. The TCB info and
/// QE identity are kept byte-exact as served (their signatures cover those bytes).
///
/// Fails with [`Quote`](AttestationFailure::Quote) when the quote cannot be read and with
/// [`Transport`](ErrorKind::Transport) when the PCCS cannot be reached or answers with an error
/// or a malformed document.
pub async fn fetch_collateral<S, ReqB, B>(service: S, pccs_url: &Uri, raw_quote: &[u8]) -> Result<Collateral>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    ReqB: From<Bytes>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let quote = parse_tdx(raw_quote)?;
    if quote.inner_cert_type() != CERT_TYPE_PCK_CHAIN {
        return Err(quote_error(format!(
            "the quote does not embed its PCK certificate chain (certification data type {})",
            quote.inner_cert_type()
        )));
    }
    let pck_chain = String::from_utf8_lossy(quote.inner_cert_data()).trim_end_matches('\0').to_owned();
    let fmspc = quote_fmspc(&quote)?;
    let ca = dcap_qvl::intel::quote_ca_with::<RustCryptoConfig>(&quote)
        .map_err(|e| quote_error(format!("the quote's PCK certificate names no CA: {e:#}")))?
        .as_id_str();
    let tee = if quote.header.is_sgx() { "sgx" } else { "tdx" };

    let base = pccs_base(pccs_url);

    let (headers, pck_crl) =
        pccs_get(service.clone(), &base, format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der")).await?;
    let pck_crl_issuer_chain = issuer_chain(&headers, &["SGX-PCK-CRL-Issuer-Chain"])?;

    let (headers, body) =
        pccs_get(service.clone(), &base, format!("{tee}/certification/v4/tcb?fmspc={fmspc}&update=standard")).await?;
    let tcb_info_issuer_chain = issuer_chain(&headers, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
    let (tcb_info, tcb_info_signature) = signed_document(&body, "tcbInfo")?;

    let (headers, body) =
        pccs_get(service.clone(), &base, format!("{tee}/certification/v4/qe/identity?update=standard")).await?;
    let qe_identity_issuer_chain = issuer_chain(&headers, &["SGX-Enclave-Identity-Issuer-Chain"])?;
    let (qe_identity, qe_identity_signature) = signed_document(&body, "enclaveIdentity")?;

    let (_, body) = pccs_get(service, &base, "sgx/certification/v4/rootcacrl".to_owned()).await?;
    let root_ca_crl = hex_or_der(&body);

    Ok(Collateral::from(QuoteCollateralV3 {
        pck_crl_issuer_chain,
        root_ca_crl,
        pck_crl: pck_crl.to_vec(),
        tcb_info_issuer_chain,
        tcb_info,
        tcb_info_signature,
        qe_identity_issuer_chain,
        qe_identity,
        qe_identity_signature,
        pck_certificate_chain: Some(pck_chain),
    }))
}

/// The PCCS base URL without a trailing slash or a `/{sgx,tdx}/certification/v4` suffix.
fn pccs_base(url: &Uri) -> String {
    let text = url.to_string();
    let mut base = text.trim_end_matches('/');
    for suffix in ["/sgx/certification/v4", "/tdx/certification/v4"] {
        base = base.strip_suffix(suffix).unwrap_or(base);
    }
    base.to_owned()
}

fn transport(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Transport, message)
}

/// `GET {base}/{path}`: the headers and body of a `200` answer.
async fn pccs_get<S, ReqB, B>(service: S, base: &str, path: String) -> Result<(http::HeaderMap, Bytes)>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    ReqB: From<Bytes>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let url = format!("{base}/{path}");
    let uri: Uri =
        url.parse().map_err(|e| Error::new(ErrorKind::Config, format!("invalid PCCS URL {url}")).with_source(e))?;
    let request = Request::get(uri)
        .body(ReqB::from(Bytes::new()))
        .map_err(|e| Error::new(ErrorKind::Config, "cannot build the PCCS request").with_source(e))?;
    let response =
        service.oneshot(request).await.map_err(|e| transport(format!("fetching {url} failed")).with_source(e))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_PCCS_RESPONSE)
        .collect()
        .await
        .map_err(|e| transport(format!("reading {url} failed")).with_source(e))?
        .to_bytes();
    if parts.status != StatusCode::OK {
        return Err(transport(format!("the PCCS answered {} for {url}", parts.status)));
    }
    Ok((parts.headers, body))
}

/// A percent-encoded PEM issuer-chain header (the first of `names` present).
fn issuer_chain(headers: &http::HeaderMap, names: &[&'static str]) -> Result<String> {
    let value = names
        .iter()
        .find_map(|n| headers.get(*n))
        .ok_or_else(|| transport(format!("the PCCS response has no {} header", names.join(" / "))))?;
    crate::percent::decode_strict(value.as_bytes())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| transport(format!("the PCCS {} header is not a percent-encoded PEM chain", names.join(" / "))))
}

/// `{"<member>": {…}, "signature": "<hex>"}`: the member's exact bytes and the signature.
fn signed_document(body: &[u8], member: &'static str) -> Result<(String, Vec<u8>)> {
    #[derive(Deserialize)]
    struct Signed<'a> {
        #[serde(rename = "tcbInfo", alias = "enclaveIdentity", borrow)]
        document: &'a RawValue,
        signature: String,
    }
    let malformed = || transport(format!("the PCCS {member} response is not a signed {member} document"));
    let signed: Signed<'_> = serde_json::from_slice(body).map_err(|_| malformed())?;
    let signature = hex::decode(&signed.signature).ok_or_else(malformed)?;
    Ok((signed.document.get().to_owned(), signature))
}

/// A PCCS serves the root CA CRL as hex; Intel's distribution point as DER.
fn hex_or_der(body: &[u8]) -> Vec<u8> {
    let text = body.trim_ascii();
    hex::decode(text).unwrap_or_else(|| body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_QUOTE: &[u8] = include_bytes!("../../tests/data/dcap/tdx_quote");
    /// Inside the sample collateral's window (see `tests/all/attest_dcap.rs`).
    const SAMPLE_NOW: u64 = 1_751_328_000;

    fn sample() -> (Collateral, [u8; 64]) {
        let collateral =
            Collateral::from_json(include_bytes!("../../tests/data/dcap/tdx_quote_collateral.json")).unwrap();
        let slot = *slot_of(&parse_tdx(SAMPLE_QUOTE).unwrap()).unwrap();
        (collateral, slot)
    }

    #[test]
    fn appraise_returns_what_the_keyset_reports() {
        let (collateral, slot) = sample();
        let accepted = ["UpToDate".to_owned()];
        let (rt_mr3, evidence) =
            appraise(SAMPLE_QUOTE, &slot, Some(&collateral), &[], &accepted, &["INTEL-SA-00837".into()], SAMPLE_NOW)
                .unwrap();
        let verified = verify_quote(SAMPLE_QUOTE, &collateral, SAMPLE_NOW, None).unwrap();
        assert_eq!(&rt_mr3, verified.rt_mr3());
        assert_eq!(evidence.boot, verified.boot_measurements());
        assert_eq!(evidence.boot.mrtd(), &SAMPLE_QUOTE[48 + 136..48 + 184]);
        assert_eq!(evidence.tcb_status, "UpToDate");
        assert!(evidence.advisory_ids.is_empty());
    }

    #[test]
    fn a_refused_advisory_fails_with_tcb_status_naming_it() {
        let (collateral, _) = sample();
        let mut verified = verify_quote(SAMPLE_QUOTE, &collateral, SAMPLE_NOW, None).unwrap();
        // The sample platform has no advisory; give it the ones a real TCB level lists.
        verified.advisory_ids = vec!["INTEL-SA-00837".to_owned(), "INTEL-SA-01036".to_owned()];
        verified.check_advisories::<&str>(&[]).unwrap();
        verified.check_advisories(&["INTEL-SA-00999"]).unwrap();
        let e = verified.check_advisories(&["intel-sa-01036", "INTEL-SA-00999"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::TcbStatus));
        let message = e.to_string();
        assert!(message.contains("affected by INTEL-SA-01036, which the policy refuses"), "{message}");
        assert!(message.contains("advisories that apply: INTEL-SA-00837, INTEL-SA-01036"), "{message}");
    }

    #[test]
    fn pccs_base_drops_api_suffixes() {
        for url in [
            "https://pccs.example/",
            "https://pccs.example/sgx/certification/v4",
            "https://pccs.example/tdx/certification/v4/",
        ] {
            assert_eq!(pccs_base(&url.parse().unwrap()), "https://pccs.example");
        }
        assert_eq!(pccs_base(&"http://10.0.0.1:8081/pccs".parse().unwrap()), "http://10.0.0.1:8081/pccs");
    }

    #[test]
    fn issuer_chain_headers_are_strictly_percent_decoded() {
        let chain = |value: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("TCB-Info-Issuer-Chain", http::HeaderValue::from_static(value));
            issuer_chain(&h, &["SGX-TCB-Info-Issuer-Chain", "TCB-Info-Issuer-Chain"])
        };
        assert_eq!(chain("-----BEGIN%20CERT%0A").unwrap(), "-----BEGIN CERT\n");
        for bad in ["%2", "%zz", "%ff"] {
            assert_eq!(chain(bad).unwrap_err().kind(), ErrorKind::Transport, "{bad}");
        }
        assert_eq!(issuer_chain(&http::HeaderMap::new(), &["X"]).unwrap_err().kind(), ErrorKind::Transport);
    }

    #[test]
    fn signed_documents_keep_their_bytes() {
        let body = br#"{"tcbInfo":{"b":1, "a":"x\/y"},"signature":"0a0b"}"#;
        let (doc, sig) = signed_document(body, "tcbInfo").unwrap();
        assert_eq!(doc, r#"{"b":1, "a":"x\/y"}"#);
        assert_eq!(sig, [10, 11]);
        let body = br#"{"enclaveIdentity":{"id":"TD_QE"},"signature":"00"}"#;
        assert_eq!(signed_document(body, "enclaveIdentity").unwrap().0, r#"{"id":"TD_QE"}"#);
        assert!(signed_document(b"{}", "tcbInfo").is_err());
        assert!(signed_document(br#"{"tcbInfo":{},"signature":"zz"}"#, "tcbInfo").is_err());
    }

    #[test]
    fn root_ca_crl_hex_or_der() {
        assert_eq!(hex_or_der(b"3082\n"), [0x30, 0x82]);
        assert_eq!(hex_or_der(&[0x30, 0x82]), [0x30, 0x82]);
    }

    #[test]
    fn hostile_inputs_fail_without_panicking() {
        for raw in [&[][..], &[0u8; 48][..], &[0xff; 1000][..]] {
            assert!(parse_tdx(raw).is_err());
        }
        assert!(parse_tdx(&vec![0u8; MAX_QUOTE_LEN + 1]).is_err());
    }
}
