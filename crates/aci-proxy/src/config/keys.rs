//! The keys of the configuration file, checked before it is read, so that a key spelt otherwise
//! than its flag gets a message naming the key to use (serde's own says only "unknown field").
//!
//! The accepted keys are read from the derived `Deserialize` impls themselves (the field names
//! serde passes to `deserialize_struct`), so a setting added to [`ProxyConfig`](super::ProxyConfig)
//! or [`PolicyPins`](super::PolicyPins) is known here without a second list to keep in step.

use serde::de::{DeserializeOwned, Visitor};

/// Names of settings before they were spelt like their flags, whose new key is more than the
/// `_` → `-` of the old one (lists took plural names).
const RENAMED: &[(&str, &str)] = &[
    ("compose-hashes", "compose-hash"),
    ("app-ids", "app-id"),
    ("os-image-hashes", "os-image-hash"),
    ("kms-roots", "kms-root"),
    ("kms-identities", "kms-identity"),
    ("tcb-statuses", "tcb-status"),
    ("refused-advisories", "refuse-advisory"),
    ("allow-origins", "allow-origin"),
];

/// Where a key sits in the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Pins,
}

/// Check every key of the top level and of `[pins]`; the first one spelt otherwise than its
/// flag, or in the wrong table, is an error naming the key to use. Keys nobody knows are left
/// to serde (whose message lists the keys it expects).
pub(super) fn check<Top: DeserializeOwned, Pins: DeserializeOwned>(
    table: &toml::Table,
    text: &str,
) -> std::result::Result<(), String> {
    let top = fields::<Top>();
    let pins = fields::<Pins>();
    for key in table.keys() {
        if !top.contains(&key.as_str()) {
            if let Some(hint) = hint(key, Level::Top, top, pins, table.get(key)) {
                return Err(at_line(text, key, hint));
            }
        }
    }
    if let Some(toml::Value::Table(p)) = table.get("pins") {
        for key in p.keys() {
            if !pins.contains(&key.as_str()) {
                if let Some(hint) = hint(key, Level::Pins, pins, top, p.get(key)) {
                    return Err(at_line(text, key, hint));
                }
            }
        }
    }
    Ok(())
}

/// Why keys are spelt as they are.
const SPELLING: &str = "TOML keys are the flags without `--`; a repeatable flag keeps its singular name and takes \
an array";
/// Where keys sit.
const PLACES: &str = "the attestation pins sit in the `[pins]` table, every other setting at the top";

/// The key `key` (at `level`) should be, as a message (what is wrong, then `fix:` and `why:`
/// lines); `None` when it is not a known setting under any spelling.
fn hint(key: &str, level: Level, here: &[&str], there: &[&str], value: Option<&toml::Value>) -> Option<String> {
    let kebab = key.replace('_', "-");
    let new = RENAMED.iter().find(|(old, _)| *old == kebab).map_or(kebab.as_str(), |(_, new)| new);
    let tables = matches!(value, Some(toml::Value::Array(a)) if !a.is_empty() && a.iter().all(toml::Value::is_table));
    let to = match (level, there.contains(&new)) {
        (_, false) if here.contains(&new) => level,
        (Level::Top, true) => Level::Pins,
        (Level::Pins, true) => Level::Top,
        _ => return None,
    };
    let place = match (to, tables) {
        (Level::Pins, true) => format!("`[[pins.{new}]]` tables"),
        (Level::Pins, false) => format!("`{new}` in the `[pins]` table"),
        (Level::Top, _) => format!("`{new}` at the top of the file, before any table"),
    };
    let (what, why) = match (to == level, new == key) {
        (true, _) => (format!("`{key}` is spelt `{new}`, like its flag --{new}"), SPELLING),
        (false, true) => (format!("`{key}` is not in its place"), PLACES),
        (false, false) => (format!("`{key}` is spelt `{new}`, like its flag --{new}, and is not in its place"), PLACES),
    };
    Some(format!("{what}\n  fix: write {place}\n  why: {why}"))
}

/// `message`, with the line of the file where `key` appears, when it can be found.
fn at_line(text: &str, key: &str, message: String) -> String {
    let found = text.lines().position(|line| {
        let l = line.trim_start();
        let bare = l.strip_prefix(key).or_else(|| l.strip_prefix(&format!("\"{key}\"")));
        let as_key = bare.is_some_and(|rest| rest.trim_start().starts_with(['=', '.']));
        let as_table = l.starts_with('[')
            && l.trim_start_matches('[')
                .trim_end()
                .trim_end_matches(']')
                .split('.')
                .any(|part| part.trim() == key || part.trim() == format!("\"{key}\""));
        as_key || as_table
    });
    match found {
        Some(i) => format!("line {}: {message}", i + 1),
        None => message,
    }
}

/// The keys serde accepts for `T`: the field names its derived `Deserialize` passes to
/// `deserialize_struct`, after renaming (skipped fields are not among them).
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// A deserializer that holds no data and records the field names of the struct asked of it.
struct Probe<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for Probe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("a probe for field names holds no data"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("a probe for field names holds no data"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyPins, ProxyConfig};

    #[test]
    fn the_probe_reads_the_keys_serde_accepts() {
        let top = fields::<ProxyConfig>();
        for key in ["gateway", "api-key-env", "allow-origin", "cache-salt-env", "pins", "request-timeout"] {
            assert!(top.contains(&key), "{key} not in {top:?}");
        }
        assert!(!top.contains(&"policy") && !top.contains(&"local-test-gateway-event-delay"), "{top:?}");
        let pins = fields::<PolicyPins>();
        for key in ["compose-hash", "boot-measurements", "kms-identity", "refuse-advisory", "tcb-status"] {
            assert!(pins.contains(&key), "{key} not in {pins:?}");
        }
    }
}
