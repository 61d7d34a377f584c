//! The dstack event log (`evidence.event_log`): parsing, RTMR3 replay and the runtime events a
//! verifier reads (`app-id`, `compose-hash`, `os-image-hash`), per protocol.md §6.4 step 5, with
//! three rules stricter than the reference verifier's (issue 18): every RTMR3 event must be a
//! dstack runtime event (whose digest is recomputed, so its type is bound); the identity events
//! count only before the first `system-ready`, each at most once, and one after it is refused
//! (the workload extended it itself); a log without `system-ready` measures nothing.

use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384};

use crate::error::{AttestationFailure, Error, Result};
use crate::hex;

/// `event_type` of dstack runtime events, whose digest a verifier recomputes.
pub(crate) const DSTACK_RUNTIME_EVENT: u32 = 0x0800_0001;

/// The most events a log may hold (a real one has a few dozen).
const MAX_EVENTS: usize = 4096;

#[derive(Deserialize)]
struct RawEvent {
    imr: u32,
    event_type: u32,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    event_payload: String,
}

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) imr: u32,
    pub(crate) event_type: u32,
    pub(crate) digest: Vec<u8>,
    pub(crate) event: String,
    pub(crate) payload: Vec<u8>,
}

impl Event {
    /// The digest extended into the RTMR: recomputed for dstack runtime events, as published for
    /// the others; right-padded with zeros to 48 bytes.
    pub(crate) fn measured_digest(&self) -> Result<[u8; 48]> {
        let mut out = [0u8; 48];
        if self.event_type == DSTACK_RUNTIME_EVENT {
            let mut h = Sha384::new();
            h.update(self.event_type.to_le_bytes());
            h.update(b":");
            h.update(self.event.as_bytes());
            h.update(b":");
            h.update(&self.payload);
            out.copy_from_slice(&h.finalize());
        } else {
            if self.digest.len() > 48 {
                return Err(event_log_error("an event digest is longer than 48 bytes"));
            }
            out[..self.digest.len()].copy_from_slice(&self.digest);
        }
        Ok(out)
    }
}

fn event_log_error(message: &'static str) -> Error {
    Error::attestation(AttestationFailure::EventLog, message)
}

fn hex_field(text: &str) -> Result<Vec<u8>> {
    hex::decode_prefixed(text).ok_or_else(|| event_log_error("an event field is not hex"))
}

/// Parse the event log text (a JSON array of `{imr, event_type, digest, event, event_payload}`).
pub(crate) fn parse(text: &str) -> Result<Vec<Event>> {
    let raw: Vec<RawEvent> =
        serde_json::from_str(text).map_err(|_| event_log_error("the event log is not a JSON array of events"))?;
    if raw.len() > MAX_EVENTS {
        return Err(event_log_error("the event log has too many events"));
    }
    raw.into_iter()
        .map(|e| {
            Ok(Event {
                imr: e.imr,
                event_type: e.event_type,
                digest: hex_field(&e.digest)?,
                event: e.event,
                payload: hex_field(&e.event_payload)?,
            })
        })
        .collect()
}

/// Replay the events of `imr` in log order: `mr = SHA-384(mr ‖ digest)` from 48 zero bytes.
///
/// RTMR3 holds only dstack runtime events, whose digests are recomputed: an `imr == 3` event of
/// any other type fails with `EventLog`. Otherwise its published digest would be extended as is,
/// so a runtime event relabelled with another type would replay the same while dropping out of
/// the runtime-event lookups.
#[cfg_attr(not(test), allow(dead_code, reason = "compared to the quote's RTMR3 by the hardware verifier"))]
pub(crate) fn replay_rtmr(events: &[Event], imr: u32) -> Result<[u8; 48]> {
    let mut mr = [0u8; 48];
    for e in events.iter().filter(|e| e.imr == imr) {
        if imr == 3 {
            check_runtime(e)?;
        }
        let d = e.measured_digest()?;
        let mut h = Sha384::new();
        h.update(mr);
        h.update(d);
        mr.copy_from_slice(&h.finalize());
    }
    Ok(mr)
}

/// The runtime events that name the workload's identity. dstack measures each once, before
/// `system-ready`; the workload itself can extend RTMR3 afterwards with events of any name.
pub(crate) const IDENTITY_EVENTS: [&str; 6] =
    ["app-id", "compose-hash", "os-image-hash", "instance-id", "key-provider", "mr-kms"];

/// The event that ends dstack's boot-time measurements.
const SYSTEM_READY: &str = "system-ready";

/// An `imr == 3` event must be a dstack runtime event.
fn check_runtime(e: &Event) -> Result<()> {
    if e.event_type == DSTACK_RUNTIME_EVENT {
        Ok(())
    } else {
        Err(Error::attestation(
            AttestationFailure::EventLog,
            format!(
                "the event log's RTMR3 event {:?} has event_type {:#x}, not the dstack runtime type {:#x} \
                 (RTMR3 holds only runtime events, whose digests a verifier recomputes)",
                e.event, e.event_type, DSTACK_RUNTIME_EVENT
            ),
        ))
    }
}

/// The RTMR3 events dstack measured at boot: those before the first `system-ready`, after
/// checking the rules that make them the boot's own:
///
/// - every `imr == 3` event is a dstack runtime event;
/// - the log has a `system-ready` event (a boot that never finished satisfies no pin);
/// - each identity event ([`IDENTITY_EVENTS`]) appears at most once, and only before it.
pub(crate) fn boot_events(events: &[Event]) -> Result<Vec<&Event>> {
    let mut boot = Vec::new();
    let mut ready = false;
    for e in events.iter().filter(|e| e.imr == 3) {
        check_runtime(e)?;
        if ready {
            if IDENTITY_EVENTS.contains(&e.event.as_str()) {
                return Err(Error::attestation(
                    AttestationFailure::EventLog,
                    format!(
                        "the event log measures a {:?} event after system-ready: identity events are measured \
                         only at boot, so the workload extended it itself",
                        e.event
                    ),
                ));
            }
        } else if e.event == SYSTEM_READY {
            ready = true;
        } else {
            if IDENTITY_EVENTS.contains(&e.event.as_str()) && boot.iter().any(|b: &&Event| b.event == e.event) {
                return Err(Error::attestation(
                    AttestationFailure::EventLog,
                    format!("the event log measures the {:?} event more than once", e.event),
                ));
            }
            boot.push(e);
        }
    }
    if !ready {
        return Err(event_log_error(
            "the event log has no system-ready event: the boot did not complete, so its measurements cannot \
             satisfy a pin",
        ));
    }
    Ok(boot)
}

/// The single RTMR3 runtime event named `name` measured before `system-ready`, if any, after the
/// checks of [`boot_events`]. More than one is an error. ([`measured`] reads the identity
/// events in one pass.)
#[cfg(test)]
pub(crate) fn runtime_event<'a>(events: &'a [Event], name: &str) -> Result<Option<&'a Event>> {
    let mut found = None;
    for e in boot_events(events)? {
        if e.event == name {
            if found.is_some() {
                return Err(event_log_error("the event log measures a runtime event more than once"));
            }
            found = Some(e);
        }
    }
    Ok(found)
}

/// Values the event log measures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Measured {
    pub(crate) app_id: Option<Vec<u8>>,
    pub(crate) compose_hash: Option<[u8; 32]>,
    pub(crate) os_image_hash: Option<Vec<u8>>,
    /// The payload of the `key-provider` event: the KMS that provisioned the app.
    pub(crate) key_provider: Option<Vec<u8>>,
    /// The payload of the `mr-kms` event: the measurement of that KMS's own TD.
    pub(crate) mr_kms: Option<Vec<u8>>,
}

/// Read the measured values (the rules of [`boot_events`] apply), checking
/// `compose-hash == SHA-256(app_compose)` when both exist.
pub(crate) fn measured(events: &[Event], app_compose: Option<&str>) -> Result<Measured> {
    let boot = boot_events(events)?;
    let find = |name: &str| boot.iter().copied().find(|e| e.event == name);
    let mut m = Measured::default();
    if let Some(e) = find("compose-hash") {
        let hash: [u8; 32] = e
            .payload
            .as_slice()
            .try_into()
            .map_err(|_| event_log_error("the compose-hash event payload is not 32 bytes"))?;
        if let Some(compose) = app_compose {
            if Sha256::digest(compose.as_bytes()).as_slice() != hash {
                return Err(event_log_error("app_compose does not hash to the measured compose-hash"));
            }
        }
        m.compose_hash = Some(hash);
    }
    if let Some(e) = find("app-id") {
        if e.payload.is_empty() {
            return Err(event_log_error("the app-id event payload is empty"));
        }
        m.app_id = Some(e.payload.clone());
    }
    if let Some(e) = find("os-image-hash") {
        m.os_image_hash = Some(e.payload.clone());
    }
    if let Some(e) = find("key-provider") {
        m.key_provider = Some(e.payload.clone());
    }
    if let Some(e) = find("mr-kms") {
        m.mr_kms = Some(e.payload.clone());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn runtime(name: &str, payload: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "imr": 3, "event_type": DSTACK_RUNTIME_EVENT, "digest": "00",
            "event": name, "event_payload": hex::encode(payload),
        })
    }

    const COMPOSE: &str = r#"{"services":{"gw":{"image":"gw@sha256:aa"}}}"#;

    fn log() -> String {
        let compose_hash = Sha256::digest(COMPOSE.as_bytes());
        serde_json::json!([
            {"imr": 0, "event_type": 1, "digest": "11".repeat(48), "event": "", "event_payload": ""},
            {"imr": 1, "event_type": 4, "digest": "22".repeat(32), "event": "", "event_payload": ""},
            runtime("system-preparing", b""),
            runtime("app-id", &[0xab; 20]),
            runtime("compose-hash", &compose_hash),
            runtime("os-image-hash", &[0xcd; 32]),
            runtime("system-ready", b""),
            runtime("workload-event", &[0xee; 20]),
        ])
        .to_string()
    }

    fn sha384(parts: &[&[u8]]) -> [u8; 48] {
        let mut h = Sha384::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn replays_rtmr3_recomputing_runtime_digests() {
        let events = parse(&log()).unwrap();
        // Independent replay: recompute the runtime digests.
        let mut mr = [0u8; 48];
        let compose_hash = Sha256::digest(COMPOSE.as_bytes());
        for (name, payload) in [
            ("system-preparing", &[][..]),
            ("app-id", &[0xab; 20][..]),
            ("compose-hash", &compose_hash[..]),
            ("os-image-hash", &[0xcd; 32][..]),
            ("system-ready", &[][..]),
            ("workload-event", &[0xee; 20][..]),
        ] {
            let d = sha384(&[&DSTACK_RUNTIME_EVENT.to_le_bytes(), b":", name.as_bytes(), b":", payload]);
            mr = sha384(&[&mr, &d]);
        }
        assert_eq!(replay_rtmr(&events, 3).unwrap(), mr);
        // RTMR0 only sees its own event; other registers extend the padded published digest.
        assert_eq!(replay_rtmr(&events, 0).unwrap(), sha384(&[&[0u8; 48], &[0x11; 48]]));
        let mut padded = [0u8; 48];
        padded[..32].copy_from_slice(&[0x22; 32]);
        assert_eq!(replay_rtmr(&events, 1).unwrap(), sha384(&[&[0u8; 48], &padded]));
    }

    #[test]
    fn reads_measured_values_before_system_ready() {
        let events = parse(&log()).unwrap();
        let m = measured(&events, Some(COMPOSE)).unwrap();
        assert_eq!(m.app_id, Some(vec![0xab; 20]));
        assert_eq!(m.compose_hash.map(|h| h.to_vec()), Some(Sha256::digest(COMPOSE.as_bytes()).to_vec()));
        assert_eq!(m.os_image_hash, Some(vec![0xcd; 32]));
    }

    #[test]
    fn refuses_a_compose_that_does_not_hash_to_the_measurement() {
        let events = parse(&log()).unwrap();
        let e = measured(&events, Some("{}")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::EventLog));
    }

    #[test]
    fn refuses_duplicate_boot_events_and_bad_logs() {
        let dup =
            serde_json::json!(
                [runtime("app-id", &[1; 20]), runtime("app-id", &[2; 20]), runtime("system-ready", b""),]
            )
            .to_string();
        let events = parse(&dup).unwrap();
        assert!(runtime_event(&events, "app-id").is_err());
        assert!(measured(&events, None).is_err());
        assert!(parse("{}").is_err());
        assert!(parse(r#"[{"imr":3,"event_type":1,"digest":"zz"}]"#).is_err());
        let long = serde_json::json!([{"imr": 0, "event_type": 1, "digest": "00".repeat(49)}]).to_string();
        assert!(replay_rtmr(&parse(&long).unwrap(), 0).is_err());
    }

    fn event_log_failure<T: std::fmt::Debug>(r: Result<T>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::EventLog), "{e}");
        e.to_string()
    }

    #[test]
    fn rtmr3_holds_only_runtime_events() {
        let mut log: Vec<serde_json::Value> = serde_json::from_str(&log()).unwrap();
        log[2]["event_type"] = 0x8000_0007u32.into();
        let events = parse(&serde_json::Value::Array(log).to_string()).unwrap();
        assert!(event_log_failure(replay_rtmr(&events, 3)).contains("0x80000007"));
        event_log_failure(measured(&events, None));
        event_log_failure(runtime_event(&events, "app-id"));
        // Other registers may hold events of any type.
        assert!(replay_rtmr(&events, 0).is_ok());
    }

    #[test]
    fn identity_events_are_read_once_and_only_at_boot() {
        let compose_hash = Sha256::digest(COMPOSE.as_bytes());
        for name in IDENTITY_EVENTS {
            // After system-ready: refused, even though the boot-time value is there too.
            let after = serde_json::json!([
                runtime("app-id", &[0xab; 20]),
                runtime("compose-hash", &compose_hash),
                runtime("system-ready", b""),
                runtime(name, &[0x01; 32]),
            ]);
            let events = parse(&after.to_string()).unwrap();
            assert!(event_log_failure(measured(&events, None)).contains("after system-ready"), "{name}");
            // Twice before it: refused.
            let twice = serde_json::json!([
                runtime(name, &[0x01; 32]),
                runtime(name, &[0x01; 32]),
                runtime("system-ready", b"")
            ]);
            let events = parse(&twice.to_string()).unwrap();
            assert!(event_log_failure(measured(&events, None)).contains("more than once"), "{name}");
        }
        // A second system-ready, and other events after the first, are the workload's business.
        let later = serde_json::json!([
            runtime("compose-hash", &compose_hash),
            runtime("system-ready", b""),
            runtime("system-ready", b""),
            runtime("my-event", b"x"),
        ]);
        let m = measured(&parse(&later.to_string()).unwrap(), Some(COMPOSE)).unwrap();
        assert_eq!(m.compose_hash.map(|h| h.to_vec()), Some(compose_hash.to_vec()));
    }

    #[test]
    fn a_log_without_system_ready_measures_nothing() {
        let unfinished = serde_json::json!([runtime("app-id", &[0xab; 20])]);
        let events = parse(&unfinished.to_string()).unwrap();
        assert!(event_log_failure(measured(&events, None)).contains("no system-ready"));
        event_log_failure(runtime_event(&events, "app-id"));
        // An empty log too.
        event_log_failure(measured(&[], None));
    }
}
