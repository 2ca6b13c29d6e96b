//! Identity: the alert id (the dedup key) and the priority lane, for ingest ([`Mapper::identify`])
//! and for [`Mapper::map`], which must agree on both.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Identity, Mapper, Priority};
use crate::json;

/// Longest alert id taken from a payload field, and longest site/device/level text kept.
const MAX_ID_CHARS: usize = 128;

/// How the alert id was found.
pub(super) enum IdFrom {
    /// `alert_id_field` gave a usable id.
    Field,
    /// The digest of topic and payload; `unusable` says why the configured field was not used
    /// when it was present.
    Digest { unusable: Option<String> },
}

impl Mapper {
    /// Cheap identity and lane, used by ingest before persisting. Total: works for any bytes
    /// (the digest of topic and payload when the payload cannot be parsed) and agrees with
    /// [`Mapper::map`] on every payload `map` accepts.
    pub fn identify(&self, topic: &str, payload: &[u8]) -> Identity {
        if payload.len() <= self.max_payload_bytes {
            if let Ok(parsed) = json::parse(payload, self.max_depth, self.max_keys) {
                if let Value::Object(obj) = &parsed.value {
                    return self.resolve_identity(topic, payload, Some(obj)).0;
                }
            }
        }
        self.resolve_identity(topic, payload, None).0
    }

    /// The identity from the parsed object (`None` when the payload is not a JSON object), and
    /// how the id was found, so `map` can consume the id field or keep an unusable one.
    pub(super) fn resolve_identity(
        &self,
        topic: &str,
        payload: &[u8],
        obj: Option<&Map<String, Value>>,
    ) -> (Identity, IdFrom) {
        let mut from = IdFrom::Digest { unusable: None };
        let mut alert_id = None;
        if let (Some(path), Some(obj)) = (&self.alert_id_path, obj) {
            match path.get(obj) {
                None | Some(Value::Null) => {}
                Some(v) => match usable_id(v) {
                    Some(id) => {
                        alert_id = Some(id);
                        from = IdFrom::Field;
                    }
                    None => {
                        from = IdFrom::Digest {
                            unusable: Some(format!(
                                "`{}` is not a usable alert id (a string or number of 1..=128 characters without control characters); using the digest",
                                path.as_str()
                            )),
                        }
                    }
                },
            }
        }
        let alert_id = alert_id.unwrap_or_else(|| digest_id(topic, payload));
        let level = obj
            .and_then(|o| {
                self.priority_paths
                    .iter()
                    .find_map(|p| p.get(o).filter(|v| !v.is_null() && v.as_str() != Some("")))
            })
            .and_then(scalar_text);
        let priority = match &level {
            Some(l) if self.critical_levels.contains(&l.to_lowercase()) => Priority::Critical,
            _ => Priority::Normal,
        };
        (
            Identity {
                alert_id,
                priority,
                level,
            },
            from,
        )
    }
}

/// An alert's id when no payload field gives one: `sha256(topic \0 payload)`, its first 16
/// bytes in hex (32 characters).
///
/// This is dedup identity, and it is persisted: ingest stores it as the record's alert id, the
/// duplicate window recognises a redelivery by (topic, alert id), and the workflow sees it as
/// `alertId`. Changing this function changes which redeliveries are recognised (an alert stored
/// before an upgrade and redelivered after it would be stored again) and which ids operators see;
/// the test `digest_id_is_pinned_to_sha256_of_topic_nul_payload` pins its output.
pub fn digest_id(topic: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(payload);
    hex::encode(&h.finalize()[..16])
}

/// The id a payload value gives: a string of 1..=128 characters without control characters, or
/// a number; `None` for anything else.
fn usable_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s)
            if !s.trim().is_empty()
                && s.chars().count() <= MAX_ID_CHARS
                && !s.chars().any(char::is_control) =>
        {
            Some(s.clone())
        }
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// At most [`MAX_ID_CHARS`] chars of `s`.
pub(super) fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_ID_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A scalar's text (strings trimmed and clipped); `None` for null, objects and arrays.
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(clip(s.trim()).to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
