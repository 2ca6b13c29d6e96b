//! The compiled mapping: [`Mapper::new`] checks a [`MappingConfig`](crate::MappingConfig) once;
//! [`Mapper::map`] and [`Mapper::identify`] apply it to one alert, purely (no I/O, no clock, no
//! randomness).
//!
//! This file holds the public types and [`Mapper::map`], which applies the rules in the order the
//! crate doc lists them; each rule lives in its own file:
//! - `compile`: [`Mapper::new`], the config checks and the compiled `[mapping.fields]`;
//! - `identity`: the alert id ([`digest_id`] when no payload field gives one) and the priority lane;
//! - `fields`: required fields, pass-through and explicit mapping;
//! - `coercion`: a value converted to its declared `type`;
//! - `keys`: nested keys checked and normalised under `key_case`;
//! - `blob_policy`: binary-looking values stripped or rejected;
//! - `budget`: pass-through fields spilled into the catch-all, and the over-budget rejection;
//! - `catch_all`: schema drift kept as one JSON string, cut to fit the budget;
//! - `summary`: the `data` of a storm summary.

use std::fmt;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::{BlobPolicy, CoalesceConfig, FieldType, KeyCase};
use crate::json::{self, ParseError};
use crate::path::{Path, Source, TopicPattern};
use crate::size::json_len;

mod blob_policy;
mod budget;
mod catch_all;
mod coercion;
mod compile;
mod fields;
mod identity;
mod keys;
mod summary;

use compile::Field;
use fields::resolve_text;
pub use identity::digest_id;
use identity::IdFrom;

/// Delivery lane of an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// The alert level is one of `critical_levels`: delivered ahead of normal alerts and never
    /// coalesced unless `coalesce.include_critical` is set.
    Critical,
    /// Everything else.
    Normal,
}

/// What ingest needs before persisting an alert: its id (the dedup key) and its lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// From `alert_id_field` when usable, else the digest of topic and payload (32 hex chars).
    pub alert_id: String,
    /// Lane from the first present `priority_fields` value.
    pub priority: Priority,
    /// That value as text (at most 128 chars), if any; used for a summary's worst level.
    pub level: Option<String>,
}

/// A successfully mapped alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    /// Same as [`Identity::alert_id`]; also in `data` under the alert id key.
    pub alert_id: String,
    /// Same as [`Identity::priority`].
    pub priority: Priority,
    /// Same as [`Identity::level`].
    pub level: Option<String>,
    /// Site key for storm coalescing (from `coalesce.site`), only when coalescing is enabled.
    pub site: Option<String>,
    /// Device name for summaries (from `coalesce.device`), only when coalescing is enabled.
    pub device: Option<String>,
    /// The object to send as `inputData` (workflow) or `data` (events). Every key, at every depth,
    /// is legal (see [`crate::is_legal_key`]).
    pub data: Map<String, Value>,
    /// Exact size of `data` serialized as compact JSON; at most `max_data_bytes`.
    pub serialized_len: usize,
    /// Everything the mapper changed that the audit record should mention.
    pub notes: Vec<Note>,
}

/// A change the mapper made while mapping an accepted alert. Any note that loses information
/// (`StrippedBlob`, `TruncatedExtra`, `TruncatedDevices`, `HugeNumber` does not) means the caller
/// must keep the original payload in the audit record (alertbridge keeps it for every alert).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A binary-looking value at `field` (output key or payload path) was replaced by a marker.
    StrippedBlob {
        /// Where the value was.
        field: String,
        /// Its size (bytes of a string, elements of an array).
        len: usize,
    },
    /// The catch-all text was cut to fit the budget and ends with a `...[truncated: N bytes in
    /// total]` marker.
    TruncatedExtra {
        /// Bytes of the full catch-all JSON text.
        orig_len: usize,
        /// Bytes of it that were kept.
        kept_len: usize,
    },
    /// A summary's device list was cut to fit the budget.
    TruncatedDevices {
        /// Devices in the summary.
        total: usize,
    },
    /// The value of output key `field` was converted to its declared type.
    Coerced {
        /// Output key.
        field: String,
        /// Declared type.
        to: FieldType,
    },
    /// A number at payload path `field` does not fit 64-bit integers or `f64`; it is kept as a
    /// string with its exact digits.
    HugeNumber {
        /// Payload path.
        field: String,
    },
    /// The payload field `field` has a key that cannot become a legal key; it went into the
    /// catch-all unchanged.
    UnmappableKey {
        /// Payload path of the top-level field.
        field: String,
    },
    /// `alert_id_field` was present but unusable; the digest was used and the value stays in the
    /// catch-all.
    AlertIdDigest {
        /// Why the field was not used.
        reason: String,
    },
    /// Pass-through only: the field `field` (output key) made the body exceed the budget and was
    /// moved into the catch-all, where it may be truncated. Ordinary fields go first, largest
    /// first; identifying fields (`required`, `priority_fields`, the coalesce device and site
    /// fields) only if the body still does not fit.
    SpilledToCatchAll {
        /// Output key of the moved field.
        field: String,
    },
    /// The topic does not match `topic_pattern`, so topic placeholders had no values.
    TopicMismatch {
        /// The configured pattern.
        pattern: String,
    },
}

/// Why an alert cannot be mapped. The caller moves it to dead letters with `reason`; retrying
/// cannot help, the payload itself (or the mapping) has to change.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{reason}")]
pub struct Rejection {
    /// The category, for metrics and tests.
    pub kind: RejectionKind,
    /// One readable sentence naming the field when there is one.
    pub reason: String,
    /// The field concerned (payload path or output key), when there is one.
    pub field: Option<String>,
}

/// Categories of [`Rejection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The payload is not valid UTF-8.
    NotUtf8,
    /// The payload is not JSON.
    NotJson,
    /// The payload is JSON but not an object (an array, a string, ...).
    NotObject,
    /// The payload is larger than `max_payload_bytes`.
    TooLarge,
    /// The payload nests deeper than `max_depth`.
    TooDeep,
    /// An object in the payload has the same key twice.
    DuplicateKey,
    /// A required field is absent, null or empty.
    MissingField,
    /// A required field is not scalar, or a value cannot be coerced to its declared type.
    WrongType,
    /// Two keys normalise to the same output key (or to a reserved one).
    KeyCollision,
    /// A nested key of an explicitly mapped value cannot become a legal key.
    IllegalKey,
    /// The named fields alone exceed `max_data_bytes`.
    OverBudget,
    /// A binary-looking value, with `blob_policy = "dead_letter"`.
    BinaryBlob,
    /// The payload has more object keys (all depths) than `max_keys`.
    TooManyKeys,
}

impl RejectionKind {
    /// Stable snake_case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::NotUtf8 => "not_utf8",
            RejectionKind::NotJson => "not_json",
            RejectionKind::NotObject => "not_object",
            RejectionKind::TooLarge => "too_large",
            RejectionKind::TooDeep => "too_deep",
            RejectionKind::DuplicateKey => "duplicate_key",
            RejectionKind::MissingField => "missing_field",
            RejectionKind::WrongType => "wrong_type",
            RejectionKind::KeyCollision => "key_collision",
            RejectionKind::IllegalKey => "illegal_key",
            RejectionKind::OverBudget => "over_budget",
            RejectionKind::BinaryBlob => "binary_blob",
            RejectionKind::TooManyKeys => "too_many_keys",
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejection of `kind` naming `field` when there is one.
fn reject(kind: RejectionKind, field: Option<&str>, reason: String) -> Rejection {
    Rejection {
        kind,
        reason,
        field: field.map(str::to_owned),
    }
}

/// A compiled `[mapping]`: built once, shared by reference (`Send + Sync`), applied per alert.
#[derive(Debug)]
pub struct Mapper {
    case: KeyCase,
    /// `None`: pass-through.
    fields: Option<Vec<Field>>,
    required: Vec<Path>,
    topic: Option<TopicPattern>,
    alert_id_path: Option<Path>,
    alert_id_key: String,
    catch_all_key: String,
    level_key: String,
    priority_paths: Vec<Path>,
    /// Lowercased.
    critical_levels: Vec<String>,
    max_payload_bytes: usize,
    max_data_bytes: usize,
    max_depth: usize,
    max_keys: usize,
    blob_min_len: usize,
    blob_policy: BlobPolicy,
    /// Pass-through: output keys of the top-level fields that identify the alert and its device
    /// (first segment of each `required`, `priority_fields`, `coalesce.site` and `coalesce.device`
    /// payload path, normalised). They are the last to be spilled into the catch-all.
    identifying: Vec<String>,
    /// Set only when coalescing is enabled.
    site: Option<Source>,
    /// Set only when coalescing is enabled.
    device: Option<Source>,
    /// `[mapping.coalesce]` as checked here; set only when coalescing is enabled.
    coalesce: Option<CoalesceConfig>,
}

impl Mapper {
    /// The checked `[mapping.coalesce]` section when storm coalescing is enabled, `None` when it
    /// is off: the agent builds its storm coalescer from it.
    pub fn coalesce(&self) -> Option<&CoalesceConfig> {
        self.coalesce.as_ref()
    }

    /// The output keys of an explicit mapping in the order they are sent (alert id key, fields,
    /// catch-all key): the Architect workflow's input variables. `None` for pass-through.
    pub fn declared_keys(&self) -> Option<Vec<String>> {
        let fields = self.fields.as_ref()?;
        let mut keys = vec![self.alert_id_key.clone()];
        keys.extend(fields.iter().map(|f| f.out_key.clone()));
        keys.push(self.catch_all_key.clone());
        Some(keys)
    }

    /// The normalised output key carrying the alert id.
    pub fn alert_id_key(&self) -> &str {
        &self.alert_id_key
    }

    /// The normalised output key of the catch-all field.
    pub fn catch_all_key(&self) -> &str {
        &self.catch_all_key
    }

    /// The data budget in bytes (`max_data_bytes`).
    pub fn max_data_bytes(&self) -> usize {
        self.max_data_bytes
    }

    /// Pure: topic and raw payload bytes → the object to send as `inputData` / `data`, or a
    /// rejection naming the field. See the crate doc for the order of the rules.
    pub fn map(&self, topic: &str, payload: &[u8]) -> Result<Mapped, Rejection> {
        self.map_with_props(topic, payload, &[])
    }

    /// [`Mapper::map`] with the MQTT 5 user properties the publisher set (name, value; in the
    /// order sent), which `$props.<name>` sources read. MQTT 3.1.1 has none: `map` is this with
    /// an empty list.
    pub fn map_with_props(
        &self,
        topic: &str,
        payload: &[u8],
        props: &[(String, String)],
    ) -> Result<Mapped, Rejection> {
        use RejectionKind as K;
        if payload.len() > self.max_payload_bytes {
            return Err(reject(
                K::TooLarge,
                None,
                format!(
                    "payload is {} bytes, over mapping.max_payload_bytes = {}",
                    payload.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let parsed = json::parse(payload, self.max_depth, self.max_keys)
            .map_err(|e| self.parse_rejection(e))?;
        let mut obj = match parsed.value {
            Value::Object(m) => m,
            other => {
                return Err(reject(
                    K::NotObject,
                    None,
                    format!("payload is a JSON {}, not an object", type_name(&other)),
                ))
            }
        };
        let mut notes: Vec<Note> = parsed
            .huge_numbers
            .into_iter()
            .map(|field| Note::HugeNumber { field })
            .collect();
        let (id, from) = self.resolve_identity(topic, payload, Some(&obj));
        self.check_required(&obj)?;

        let captures = match &self.topic {
            Some(t) => {
                let c = t.captures(topic);
                if c.is_none() {
                    notes.push(Note::TopicMismatch {
                        pattern: t.as_str().to_owned(),
                    });
                }
                c
            }
            None => None,
        };
        let captures = captures.as_deref();
        let site = self
            .site
            .as_ref()
            .and_then(|s| resolve_text(s, &obj, captures, props));
        let device = self
            .device
            .as_ref()
            .and_then(|s| resolve_text(s, &obj, captures, props));

        // The alert id field is consumed when it gave the id. When it was unusable it is kept for
        // the catch-all (in pass-through it would otherwise claim the alert id key).
        let mut stash: Option<(String, Value)> = None;
        match (&from, &self.alert_id_path) {
            (IdFrom::Field, Some(p)) => p.remove_from(&mut obj),
            (IdFrom::Digest { unusable }, Some(p)) => {
                if let Some(reason) = unusable {
                    notes.push(Note::AlertIdDigest {
                        reason: reason.clone(),
                    });
                }
                if self.fields.is_none() {
                    stash = p.get(&obj).cloned().map(|v| (p.as_str().to_owned(), v));
                    p.remove_from(&mut obj);
                }
            }
            _ => {}
        }

        let mut out = Map::new();
        out.insert(
            self.alert_id_key.clone(),
            Value::String(id.alert_id.clone()),
        );
        let mut rest = match &self.fields {
            None => self.pass_through(obj, &mut out, &mut notes)?,
            Some(fields) => self.explicit(fields, obj, captures, props, &mut out, &mut notes)?,
        };
        if let Some((mut k, v)) = stash {
            while rest.contains_key(&k) {
                k.push('\'');
            }
            rest.insert(k, v);
        }
        self.handle_blobs(&mut out, &mut rest, &mut notes)?;

        let mut base = json_len(&out);
        if self.fields.is_none() {
            base = self.spill_largest(&mut out, &mut rest, base, &mut notes);
        }
        if base > self.max_data_bytes {
            return Err(self.over_budget(&out, base));
        }
        // `base` is the measured size; the catch-all entry's size is computed exactly (the
        // escaping rules of `size::string_len` are serde_json's, checked by tests).
        let serialized_len = if rest.is_empty() {
            base
        } else {
            self.add_catch_all(&mut out, base, rest, &mut notes)?
        };
        if serialized_len > self.max_data_bytes {
            // Cannot happen (sizes are computed exactly); refuse rather than send over budget.
            return Err(self.over_budget(&out, serialized_len));
        }
        Ok(Mapped {
            alert_id: id.alert_id,
            priority: id.priority,
            level: id.level,
            site,
            device,
            data: out,
            serialized_len,
            notes,
        })
    }

    /// The rejection for a payload the reader refused, with the limit or offset concerned.
    fn parse_rejection(&self, e: ParseError) -> Rejection {
        use RejectionKind as K;
        match e {
            ParseError::NotUtf8 { offset } => reject(
                K::NotUtf8,
                None,
                format!("payload is not valid UTF-8 (invalid byte at offset {offset})"),
            ),
            ParseError::Syntax { offset, what } => reject(
                K::NotJson,
                None,
                format!("payload is not JSON: {what} at byte {offset}"),
            ),
            ParseError::TooDeep { path, max_depth } => reject(
                K::TooDeep,
                Some(&path),
                format!("payload nests deeper than mapping.max_depth = {max_depth} at `{path}`"),
            ),
            ParseError::DuplicateKey { path } => reject(
                K::DuplicateKey,
                Some(&path),
                format!(
                    "payload has the key `{path}` twice; refusing to guess which value is meant"
                ),
            ),
            ParseError::TooManyKeys { count, max_keys } => reject(
                K::TooManyKeys,
                None,
                format!(
                    "payload has {count} keys (objects at every depth), over mapping.max_keys = {max_keys}"
                ),
            ),
        }
    }
}

/// The JSON type of `v`, as reasons name it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests;
