//! The compiled mapping: [`Mapper::new`] checks a [`MappingConfig`] once; [`Mapper::map`] and
//! [`Mapper::identify`] apply it to one alert, purely (no I/O, no clock, no randomness).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::blob;
use crate::coalesce::Summary;
use crate::config::{
    BlobPolicy, CoalesceConfig, FieldType, KeyCase, MappingConfig, MappingConfigError,
};
use crate::json::{self, ParseError};
use crate::key::{normalize_key, normalize_key_cow};
use crate::path::{Path, Source, TopicPattern};
use crate::size::{json_len, string_len, truncate_with_marker};

/// Longest alert id taken from a payload field, and longest site/device/level text kept.
const MAX_ID_CHARS: usize = 128;

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

fn reject(kind: RejectionKind, field: Option<&str>, reason: String) -> Rejection {
    Rejection {
        kind,
        reason,
        field: field.map(str::to_owned),
    }
}

/// Where a mapped field's value comes from.
#[derive(Debug)]
enum FieldSource {
    Source(Source),
    Const(Value),
}

/// One compiled `[mapping.fields]` entry.
#[derive(Debug)]
struct Field {
    out_key: String,
    source: FieldSource,
    kind: FieldType,
    required: bool,
    default: Option<Value>,
}

impl Field {
    fn describe(&self) -> String {
        match &self.source {
            FieldSource::Source(s) => format!("field `{}` (from `{}`)", self.out_key, s.describe()),
            FieldSource::Const(_) => format!("field `{}` (constant)", self.out_key),
        }
    }
}

/// How the alert id was found.
enum IdFrom {
    Field,
    Digest { unusable: Option<String> },
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

fn out_of_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), MappingConfigError> {
    if value < min || value > max {
        return Err(MappingConfigError::OutOfRange {
            key: key.to_owned(),
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Mapper {
    /// Compiles `cfg`. Errors name the config key (`mapping.fields.readingValue: ...`); output keys
    /// that collide after normalisation are reported here, never at run time.
    pub fn new(cfg: &MappingConfig) -> Result<Mapper, MappingConfigError> {
        use MappingConfigError as E;
        let case = cfg.key_case;
        out_of_range(
            "mapping.max_payload_bytes",
            as_u64(cfg.max_payload_bytes),
            2,
            16 << 20,
        )?;
        out_of_range(
            "mapping.max_data_bytes",
            as_u64(cfg.max_data_bytes),
            1024,
            512_000,
        )?;
        out_of_range("mapping.max_depth", as_u64(cfg.max_depth), 1, 128)?;
        out_of_range("mapping.max_keys", as_u64(cfg.max_keys), 1, 1_000_000)?;
        out_of_range(
            "mapping.blob_min_len",
            as_u64(cfg.blob_min_len),
            64,
            1 << 20,
        )?;

        let topic = if cfg.topic_pattern.is_empty() {
            None
        } else {
            Some(TopicPattern::parse(&cfg.topic_pattern).map_err(|reason| {
                E::InvalidTopicPattern {
                    pattern: cfg.topic_pattern.clone(),
                    reason,
                }
            })?)
        };
        let source = |key: &str, text: &str| -> Result<Source, MappingConfigError> {
            let src = Source::parse(text).map_err(|reason| E::InvalidSource {
                key: key.to_owned(),
                text: text.to_owned(),
                reason,
            })?;
            if let Source::Topic(name) = &src {
                if !topic.as_ref().is_some_and(|t| t.has_placeholder(name)) {
                    return Err(E::UnknownPlaceholder {
                        key: key.to_owned(),
                        placeholder: name.clone(),
                        pattern: cfg.topic_pattern.clone(),
                    });
                }
            }
            Ok(src)
        };
        let path = |key: &str, text: &str| -> Result<Path, MappingConfigError> {
            match source(key, text) {
                Ok(Source::Payload(p)) => Ok(p),
                Ok(Source::Topic(_)) | Err(E::UnknownPlaceholder { .. }) => Err(E::InvalidSource {
                    key: key.to_owned(),
                    text: text.to_owned(),
                    reason: "must be a payload path, not a topic placeholder".into(),
                }),
                Err(e) => Err(e),
            }
        };
        let legal = |key: &str, name: &str| -> Result<String, MappingConfigError> {
            normalize_key(name, case).ok_or_else(|| E::IllegalKey {
                key: key.to_owned(),
                name: name.to_owned(),
                case,
            })
        };

        let alert_id_key = legal("mapping.alert_id_key", &cfg.alert_id_key)?;
        let catch_all_key = legal("mapping.catch_all_key", &cfg.catch_all_key)?;
        // normalised key -> config key that claimed it
        let mut claimed: HashMap<String, String> = HashMap::new();
        claimed.insert(alert_id_key.clone(), "mapping.alert_id_key".into());
        if let Some(other) = claimed.get(&catch_all_key) {
            return Err(E::KeyCollision {
                key: "mapping.catch_all_key".into(),
                other: other.clone(),
                normalized: catch_all_key,
            });
        }
        claimed.insert(catch_all_key.clone(), "mapping.catch_all_key".into());

        let alert_id_path = if cfg.alert_id_field.is_empty() {
            None
        } else {
            Some(path("mapping.alert_id_field", &cfg.alert_id_field)?)
        };
        let required = cfg
            .required
            .iter()
            .enumerate()
            .map(|(i, p)| path(&format!("mapping.required[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let priority_paths = cfg
            .priority_fields
            .iter()
            .enumerate()
            .map(|(i, p)| path(&format!("mapping.priority_fields[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut critical_levels = Vec::with_capacity(cfg.critical_levels.len());
        for (i, level) in cfg.critical_levels.iter().enumerate() {
            if level.trim().is_empty() {
                return Err(E::InvalidValue {
                    key: format!("mapping.critical_levels[{i}]"),
                    reason: "a level name cannot be empty".into(),
                });
            }
            critical_levels.push(level.trim().to_lowercase());
        }
        let level_key = cfg
            .priority_fields
            .first()
            .and_then(|p| normalize_key(p, case))
            .or_else(|| normalize_key("alert_level", case))
            .unwrap_or_else(|| "alertLevel".to_owned());

        let fields = if cfg.fields.is_empty() {
            None
        } else {
            let mut fields = Vec::with_capacity(cfg.fields.len());
            for (name, spec) in &cfg.fields {
                let key = format!("mapping.fields.{name}");
                let out_key = legal(&key, name)?;
                if let Some(other) = claimed.get(&out_key) {
                    return Err(E::KeyCollision {
                        key,
                        other: other.clone(),
                        normalized: out_key,
                    });
                }
                claimed.insert(out_key.clone(), key.clone());
                let invalid = |what: &str, v: &Value, why: String| E::InvalidValue {
                    key: key.clone(),
                    reason: format!("{what} {v} {why}"),
                };
                let checked = |what: &str, v: &Value| -> Result<Value, MappingConfigError> {
                    let (v2, _) = coerce(v.clone(), spec.kind).map_err(|got| {
                        invalid(what, v, format!("is {got}, not a {}", spec.kind))
                    })?;
                    match check_keys(&v2, case, &mut String::new()) {
                        Ok(_) => Ok(rename_keys(v2, case)),
                        Err(issue) => Err(invalid(what, v, issue.describe(case))),
                    }
                };
                let source = match (&spec.from, &spec.value) {
                    (Some(from), None) => FieldSource::Source(source(&key, from)?),
                    (None, Some(v)) => FieldSource::Const(checked("value", v)?),
                    _ => return Err(E::SourceConflict { key }),
                };
                let default = match &spec.default {
                    Some(v) => Some(checked("default", v)?),
                    None => None,
                };
                fields.push(Field {
                    out_key,
                    source,
                    kind: spec.kind,
                    required: spec.required,
                    default,
                });
            }
            Some(fields)
        };

        // The device and site sources count whether coalescing is on or not: `coalesce.device`
        // (default `device_id`) is the configured name of the device field. Sources that are not
        // payload paths (placeholders, or text only checked when coalescing is enabled) name no
        // field.
        let mut identifying: Vec<String> = Vec::new();
        let coalesce_paths = [&cfg.coalesce.site, &cfg.coalesce.device]
            .into_iter()
            .filter_map(|text| match Source::parse(text) {
                Ok(Source::Payload(p)) => Some(p),
                _ => None,
            })
            .collect::<Vec<_>>();
        for p in required
            .iter()
            .chain(&priority_paths)
            .chain(&coalesce_paths)
        {
            if let Some(k) = normalize_key(p.first(), case) {
                if !identifying.contains(&k) {
                    identifying.push(k);
                }
            }
        }

        let (site, device) = if cfg.coalesce.enabled {
            let c = &cfg.coalesce;
            out_of_range("mapping.coalesce.window_ms", c.window_ms, 1_000, 86_400_000)?;
            out_of_range(
                "mapping.coalesce.min_count",
                u64::from(c.min_count),
                1,
                1_000_000,
            )?;
            for (i, level) in c.level_order.iter().enumerate() {
                if level.trim().is_empty() {
                    return Err(E::InvalidValue {
                        key: format!("mapping.coalesce.level_order[{i}]"),
                        reason: "a level name cannot be empty".into(),
                    });
                }
            }
            (
                Some(source("mapping.coalesce.site", &c.site)?),
                Some(source("mapping.coalesce.device", &c.device)?),
            )
        } else {
            (None, None)
        };

        Ok(Mapper {
            case,
            fields,
            required,
            topic,
            alert_id_path,
            alert_id_key,
            catch_all_key,
            level_key,
            priority_paths,
            critical_levels,
            max_payload_bytes: cfg.max_payload_bytes,
            max_data_bytes: cfg.max_data_bytes,
            max_depth: cfg.max_depth,
            max_keys: cfg.max_keys,
            blob_min_len: cfg.blob_min_len,
            blob_policy: cfg.blob_policy,
            identifying,
            site,
            device,
            coalesce: cfg.coalesce.enabled.then(|| cfg.coalesce.clone()),
        })
    }

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

    fn resolve_identity(
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

    /// Pure: topic and raw payload bytes → the object to send as `inputData` / `data`, or a
    /// rejection naming the field. See the crate doc for the order of the rules.
    pub fn map(&self, topic: &str, payload: &[u8]) -> Result<Mapped, Rejection> {
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
            .and_then(|s| resolve_text(s, &obj, captures));
        let device = self
            .device
            .as_ref()
            .and_then(|s| resolve_text(s, &obj, captures));

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
            Some(fields) => self.explicit(fields, obj, captures, &mut out, &mut notes)?,
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

    fn check_required(&self, obj: &Map<String, Value>) -> Result<(), Rejection> {
        for path in &self.required {
            let p = path.as_str();
            let problem = match path.get(obj) {
                None | Some(Value::Null) => {
                    Some((RejectionKind::MissingField, "is missing".to_owned()))
                }
                Some(Value::String(s)) if s.trim().is_empty() => {
                    Some((RejectionKind::MissingField, "is empty".to_owned()))
                }
                Some(v @ (Value::Object(_) | Value::Array(_))) => Some((
                    RejectionKind::WrongType,
                    format!("must be a string, number or boolean, got {}", type_name(v)),
                )),
                Some(_) => None,
            };
            if let Some((kind, what)) = problem {
                return Err(reject(
                    kind,
                    Some(p),
                    format!("required field `{p}` {what}"),
                ));
            }
        }
        Ok(())
    }

    /// Pass-through: every top-level field under its normalised key; fields with keys that cannot
    /// be normalised are returned for the catch-all.
    fn pass_through(
        &self,
        obj: Map<String, Value>,
        out: &mut Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<Map<String, Value>, Rejection> {
        // Top-level keys the policy changed: (normalised, original), to name a collision.
        let mut renamed: Vec<(String, String)> = Vec::new();
        let mut rest = Map::new();
        let mut path = String::new();
        for (k, v) in obj {
            let new_key = match normalize_key_cow(&k, self.case) {
                None => {
                    notes.push(Note::UnmappableKey { field: k.clone() });
                    rest.insert(k, v);
                    continue;
                }
                Some(Cow::Borrowed(_)) => None,
                Some(Cow::Owned(nk)) => Some(nk),
            };
            let nk = new_key.as_deref().unwrap_or(&k);
            if nk == self.alert_id_key || nk == self.catch_all_key {
                let role = if nk == self.alert_id_key {
                    "the alert id"
                } else {
                    "the catch-all field"
                };
                return Err(reject(
                    RejectionKind::KeyCollision,
                    Some(&k),
                    format!(
                        "payload key `{k}` normalises to `{nk}`, which is reserved for {role}; map the field explicitly under another name (or set mapping.alert_id_field to it)"
                    ),
                ));
            }
            path.clear();
            path.push_str(&k);
            let v = match check_keys(&v, self.case, &mut path) {
                Ok(true) => rename_keys(v, self.case),
                Ok(false) => v,
                Err(NestedIssue::Illegal { .. }) => {
                    notes.push(Note::UnmappableKey { field: k.clone() });
                    rest.insert(k, v);
                    continue;
                }
                Err(issue @ NestedIssue::Collision { .. }) => {
                    return Err(reject(
                        RejectionKind::KeyCollision,
                        Some(&k),
                        issue.describe(self.case),
                    ))
                }
            };
            let out_key = match new_key {
                Some(nk) => {
                    renamed.push((nk.clone(), k.clone()));
                    nk
                }
                None => k.clone(),
            };
            // Payload keys are unique (the reader rejects duplicates), so two keys can only meet
            // here after normalisation. The overwrite is never seen: the alert is rejected.
            if out.insert(out_key.clone(), v).is_some() {
                let prev = renamed
                    .iter()
                    .find(|(nk, orig)| *nk == out_key && *orig != k)
                    .map_or(out_key.as_str(), |(_, orig)| orig.as_str());
                return Err(reject(
                    RejectionKind::KeyCollision,
                    Some(&k),
                    format!("payload keys `{prev}` and `{k}` both normalise to `{out_key}`"),
                ));
            }
        }
        Ok(rest)
    }

    /// Explicit mapping: the declared fields; everything they do not name is returned for the
    /// catch-all.
    fn explicit(
        &self,
        fields: &[Field],
        mut obj: Map<String, Value>,
        captures: Option<&[(&str, &str)]>,
        out: &mut Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<Map<String, Value>, Rejection> {
        for f in fields {
            let value = match &f.source {
                FieldSource::Const(v) => Some(v.clone()),
                FieldSource::Source(s) => resolve(s, &obj, captures),
            };
            let Some(value) = value.or_else(|| f.default.clone()) else {
                if f.required {
                    let why = match (&f.source, &self.topic) {
                        (FieldSource::Source(Source::Topic(_)), Some(t)) => {
                            format!(
                                " (the topic does not match mapping.topic_pattern `{}`)",
                                t.as_str()
                            )
                        }
                        _ => String::new(),
                    };
                    return Err(reject(
                        RejectionKind::MissingField,
                        Some(&f.out_key),
                        format!("required {} is missing{why}", f.describe()),
                    ));
                }
                continue;
            };
            let (value, coerced) = coerce(value, f.kind).map_err(|got| {
                reject(
                    RejectionKind::WrongType,
                    Some(&f.out_key),
                    format!("{}: expected {}, got {got}", f.describe(), f.kind),
                )
            })?;
            if coerced {
                notes.push(Note::Coerced {
                    field: f.out_key.clone(),
                    to: f.kind,
                });
            }
            let mut path = f.out_key.clone();
            let value = match check_keys(&value, self.case, &mut path) {
                Ok(false) => value,
                Ok(true) => rename_keys(value, self.case),
                Err(issue) => {
                    let kind = match issue {
                        NestedIssue::Illegal { .. } => RejectionKind::IllegalKey,
                        NestedIssue::Collision { .. } => RejectionKind::KeyCollision,
                    };
                    return Err(reject(
                        kind,
                        Some(&f.out_key),
                        format!("{}: {}", f.describe(), issue.describe(self.case)),
                    ));
                }
            };
            out.insert(f.out_key.clone(), value);
        }
        for f in fields {
            if let FieldSource::Source(Source::Payload(p)) = &f.source {
                p.remove_from(&mut obj);
            }
        }
        Ok(obj)
    }

    fn handle_blobs(
        &self,
        out: &mut Map<String, Value>,
        rest: &mut Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<(), Rejection> {
        let strip = self.blob_policy == BlobPolicy::Strip;
        let mut first: Option<(String, usize)> = None;
        // Paths are clipped: many blobs under one long key must not cost a copy of that key each.
        let mut found = |p: &str, len: usize| {
            if strip {
                notes.push(Note::StrippedBlob {
                    field: json::clip_path(p),
                    len,
                });
                true
            } else {
                first = Some((json::clip_path(p), len));
                false
            }
        };
        let tables = [(&mut *out, true), (&mut *rest, false)];
        'outer: for (table, is_out) in tables {
            for (k, v) in table.iter_mut() {
                if is_out && *k == self.alert_id_key {
                    continue;
                }
                let mut path = k.clone();
                if !blob::scan(v, &mut path, self.blob_min_len, strip, &mut found) {
                    break 'outer;
                }
            }
        }
        match first {
            Some((field, len)) => Err(reject(
                RejectionKind::BinaryBlob,
                Some(&field),
                format!(
                    "field `{field}` holds a binary-looking value ({len} bytes) and mapping.blob_policy = \"dead_letter\""
                ),
            )),
            None => Ok(()),
        }
    }

    /// Pass-through only: while the fields (plus room for a truncated catch-all, when there is
    /// one) exceed the budget, moves fields into the catch-all, where they may be cut to fit:
    /// first the ordinary fields, largest first (the later field first among equals), then, only
    /// if still needed, the identifying ones (`identifying`), largest first. The alert id stays.
    /// An explicit mapping never spills: its fields are the workflow's contract. Returns the new
    /// size of `out` (computed exactly: every spilled entry follows the alert id entry, so it took
    /// a comma, its quoted key, a colon and its value).
    ///
    /// O(n log n) in the number of fields: each entry is measured once, the spill order is one
    /// sort, and `out` is rebuilt in one pass (removing entries one by one from the ordered map,
    /// or searching the largest again after each removal, was quadratic: minutes of CPU for
    /// 100 000 keys).
    fn spill_largest(
        &self,
        out: &mut Map<String, Value>,
        rest: &mut Map<String, Value>,
        mut base: usize,
        notes: &mut Vec<Note>,
    ) -> usize {
        // `,"extra":"...[truncated: NNNNN bytes in total]"` with some text before the marker.
        let reserve = 1 + string_len(&self.catch_all_key) + 1 + 64;
        let over = |base: usize, rest_empty: bool| {
            base > self.max_data_bytes || (!rest_empty && base + reserve > self.max_data_bytes)
        };
        if !over(base, rest.is_empty()) {
            return base;
        }
        // (identifying, cost of `,"key":value`) per entry of `out`, in order.
        let entries: Vec<(bool, usize)> = out
            .iter()
            .map(|(k, v)| {
                (
                    self.identifying.contains(k),
                    1 + string_len(k) + 1 + json_len(v),
                )
            })
            .collect();
        let mut order: Vec<usize> = out
            .keys()
            .enumerate()
            .filter(|(_, k)| **k != self.alert_id_key)
            .map(|(i, _)| i)
            .collect();
        order.sort_unstable_by_key(|&i| (entries[i].0, Reverse(entries[i].1), Reverse(i)));
        // rank in the spill order, for the entries that go
        let mut spill: Vec<Option<usize>> = vec![None; entries.len()];
        let mut rest_empty = rest.is_empty();
        for (rank, &i) in order.iter().enumerate() {
            if !over(base, rest_empty) {
                break;
            }
            base = base.saturating_sub(entries[i].1);
            spill[i] = Some(rank);
            rest_empty = false;
        }
        let mut moved: Vec<(usize, String, Value)> = Vec::new();
        for (i, (k, v)) in std::mem::take(out).into_iter().enumerate() {
            match spill.get(i).copied().flatten() {
                Some(rank) => moved.push((rank, k, v)),
                None => {
                    out.insert(k, v);
                }
            }
        }
        moved.sort_unstable_by_key(|(rank, ..)| *rank);
        for (_, key, value) in moved {
            notes.push(Note::SpilledToCatchAll { field: key.clone() });
            let mut k = key;
            while rest.contains_key(&k) {
                k.push('\'');
            }
            rest.insert(k, value);
        }
        base
    }

    fn over_budget(&self, out: &Map<String, Value>, len: usize) -> Rejection {
        let largest = out
            .iter()
            .map(|(k, v)| (k, json_len(v)))
            .max_by_key(|(_, n)| *n);
        let (field, detail) = match largest {
            Some((k, n)) => (
                Some(k.as_str()),
                format!("; largest field `{k}` is {n} bytes"),
            ),
            None => (None, String::new()),
        };
        reject(
            RejectionKind::OverBudget,
            field,
            format!(
                "mapped data is {len} bytes, over mapping.max_data_bytes = {}{detail}",
                self.max_data_bytes
            ),
        )
    }

    /// Adds the catch-all field holding `rest` as one JSON string, truncated with a marker when
    /// the budget requires it; returns the new serialized size of `out`.
    fn add_catch_all(
        &self,
        out: &mut Map<String, Value>,
        base: usize,
        rest: Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<usize, Rejection> {
        let text = serde_json::to_string(&rest).unwrap_or_default();
        // `,"extra":` plus the string itself.
        let key_cost = 1 + string_len(&self.catch_all_key) + 1;
        let room = self.max_data_bytes.saturating_sub(base + key_cost);
        let text_len = string_len(&text);
        if text_len <= room {
            out.insert(self.catch_all_key.clone(), Value::String(text));
            return Ok(base + key_cost + text_len);
        }
        let marker = format!("...[truncated: {} bytes in total]", text.len());
        match truncate_with_marker(&text, &marker, room) {
            Some(cut) => {
                notes.push(Note::TruncatedExtra {
                    orig_len: text.len(),
                    kept_len: cut.len() - marker.len(),
                });
                let len = base + key_cost + string_len(&cut);
                out.insert(self.catch_all_key.clone(), Value::String(cut));
                Ok(len)
            }
            None => Err(reject(
                RejectionKind::OverBudget,
                Some(&self.catch_all_key),
                format!(
                    "mapped data is {base} bytes, leaving no room within mapping.max_data_bytes = {} for the catch-all field `{}`",
                    self.max_data_bytes, self.catch_all_key
                ),
            )),
        }
    }

    /// The `data` object of a storm summary (see [`crate::Summary`]), under the same key policy
    /// and budget: alert id, `summary = true`, site, alert count, alerts delivered individually,
    /// device count, devices (comma-separated, cut with a marker if needed), first and last time,
    /// worst level (under the first priority field's key, e.g. `alertLevel`).
    pub fn map_summary(&self, s: &Summary) -> Mapped {
        let key = |k: &str| normalize_key(k, self.case).unwrap_or_else(|| k.to_owned());
        let mut hasher = Sha256::new();
        hasher.update(b"summary\0");
        hasher.update(s.site.as_bytes());
        hasher.update(b"\0");
        hasher.update(s.window_start_ms.to_be_bytes());
        for id in &s.alert_ids {
            hasher.update(b"\0");
            hasher.update(id.as_bytes());
        }
        let alert_id = hex::encode(&hasher.finalize()[..16]);
        let mut out = Map::new();
        out.insert(self.alert_id_key.clone(), Value::String(alert_id.clone()));
        out.insert(key("summary"), Value::Bool(true));
        out.insert(key("site"), Value::String(clip(&s.site).to_owned()));
        out.insert(key("alert_count"), Value::from(s.count));
        out.insert(
            key("delivered_individually"),
            Value::from(s.delivered_individually),
        );
        out.insert(key("device_count"), Value::from(as_u64(s.devices.len())));
        out.insert(key("first_ms"), Value::from(s.first_ms));
        out.insert(key("last_ms"), Value::from(s.last_ms));
        if let Some(level) = &s.worst_level {
            out.insert(
                self.level_key.clone(),
                Value::String(clip(level).to_owned()),
            );
        }
        let mut notes = Vec::new();
        let devices_key = key("devices");
        let devices = s
            .devices
            .iter()
            .map(|d| clip(d))
            .collect::<Vec<_>>()
            .join(",");
        let base = json_len(&out);
        let room = self
            .max_data_bytes
            .saturating_sub(base + 1 + string_len(&devices_key) + 1);
        if string_len(&devices) <= room {
            out.insert(devices_key, Value::String(devices));
        } else {
            notes.push(Note::TruncatedDevices {
                total: s.devices.len(),
            });
            let marker = format!("...[{} devices in total]", s.devices.len());
            if let Some(cut) = truncate_with_marker(&devices, &marker, room) {
                out.insert(devices_key, Value::String(cut));
            }
        }
        let serialized_len = json_len(&out);
        Mapped {
            alert_id,
            priority: if s.critical {
                Priority::Critical
            } else {
                Priority::Normal
            },
            level: s.worst_level.clone(),
            site: Some(s.site.clone()),
            device: None,
            data: out,
            serialized_len,
            notes,
        }
    }
}

/// `sha256(topic \0 payload)`, first 16 bytes in hex.
fn digest_id(topic: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(payload);
    hex::encode(&h.finalize()[..16])
}

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
fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_ID_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A scalar's text (strings trimmed and clipped); `None` for null, objects and arrays.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(clip(s.trim()).to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

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

/// The value of a source: a non-null payload value, or a topic placeholder's level.
fn resolve(
    src: &Source,
    obj: &Map<String, Value>,
    captures: Option<&[(&str, &str)]>,
) -> Option<Value> {
    match src {
        Source::Payload(p) => p.get(obj).filter(|v| !v.is_null()).cloned(),
        Source::Topic(name) => captures?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Value::String((*v).to_owned())),
    }
}

fn resolve_text(
    src: &Source,
    obj: &Map<String, Value>,
    captures: Option<&[(&str, &str)]>,
) -> Option<String> {
    resolve(src, obj, captures)
        .as_ref()
        .and_then(scalar_text)
        .filter(|s| !s.is_empty())
}

/// Describes a value for a type error: its type, and for scalars a short excerpt.
fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {:?}", clip_to(s, 40)),
        Value::Number(n) => format!("number {n}"),
        Value::Bool(b) => format!("boolean {b}"),
        other => type_name(other).to_owned(),
    }
}

fn clip_to(s: &str, chars: usize) -> &str {
    match s.char_indices().nth(chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Integral `f64` → `i64` when exactly representable in range.
fn f64_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; the valid range is [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// Coerces `v` to `kind`: the value and whether it changed, or a description of what it was.
fn coerce(v: Value, kind: FieldType) -> Result<(Value, bool), String> {
    let bad = |v: &Value| describe_value(v);
    match (kind, v) {
        (FieldType::Any, v) => Ok((v, false)),
        (FieldType::String, v @ Value::String(_)) => Ok((v, false)),
        (FieldType::String, Value::Number(n)) => Ok((Value::String(n.to_string()), true)),
        (FieldType::String, Value::Bool(b)) => Ok((Value::String(b.to_string()), true)),
        (FieldType::Number, v @ Value::Number(_)) => Ok((v, false)),
        (FieldType::Number, Value::String(s)) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Ok((Value::from(i), true))
            } else if let Some(n) = t.parse::<f64>().ok().and_then(Number::from_f64) {
                Ok((Value::Number(n), true))
            } else {
                Err(bad(&Value::String(s)))
            }
        }
        (FieldType::Integer, Value::Number(n)) => {
            if n.is_i64() || n.is_u64() {
                Ok((Value::Number(n), false))
            } else if let Some(i) = n.as_f64().and_then(f64_to_i64) {
                Ok((Value::from(i), true))
            } else {
                Err(bad(&Value::Number(n)))
            }
        }
        (FieldType::Integer, Value::String(s)) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Ok((Value::from(i), true))
            } else if let Ok(u) = t.parse::<u64>() {
                Ok((Value::from(u), true))
            } else if let Some(i) = t.parse::<f64>().ok().and_then(f64_to_i64) {
                Ok((Value::from(i), true))
            } else {
                Err(bad(&Value::String(s)))
            }
        }
        (FieldType::Boolean, v @ Value::Bool(_)) => Ok((v, false)),
        (FieldType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok((Value::Bool(true), true)),
            "false" | "0" => Ok((Value::Bool(false), true)),
            _ => Err(bad(&Value::String(s))),
        },
        (FieldType::Boolean, Value::Number(n)) => match n.as_f64() {
            Some(1.0) => Ok((Value::Bool(true), true)),
            Some(0.0) => Ok((Value::Bool(false), true)),
            _ => Err(bad(&Value::Number(n))),
        },
        (_, v) => Err(bad(&v)),
    }
}

/// A nested key problem found by [`check_keys`].
enum NestedIssue {
    /// A key at `path` cannot be normalised.
    Illegal { path: String },
    /// Two keys of the object at `path` normalise to the same key.
    Collision {
        path: String,
        first: String,
        second: String,
        normalized: String,
    },
}

impl NestedIssue {
    fn describe(&self, case: KeyCase) -> String {
        match self {
            NestedIssue::Illegal { path } => {
                format!("nested key `{path}` cannot become a legal key under key_case = {case}")
            }
            NestedIssue::Collision {
                path,
                first,
                second,
                normalized,
            } => format!(
                "in `{path}`, keys `{first}` and `{second}` both normalise to `{normalized}`"
            ),
        }
    }
}

/// Checks every key nested in `v` (whose own path is `path`): whether some key changes under
/// normalisation, or the first problem.
fn check_keys(v: &Value, case: KeyCase, path: &mut String) -> Result<bool, NestedIssue> {
    let base = path.len();
    let mut changed = false;
    match v {
        Value::Object(m) => {
            // Keys the policy changes: (normalised, original). Keys in `m` are unique and a
            // normalised key normalises to itself, so two keys meet only if a changed key lands on
            // an existing key or on another changed key.
            let mut renamed: Vec<(String, &str)> = Vec::new();
            for (k, child) in m {
                match normalize_key_cow(k, case) {
                    None => {
                        return Err(NestedIssue::Illegal {
                            path: format!("{path}.{k}"),
                        })
                    }
                    Some(Cow::Borrowed(_)) => {}
                    Some(Cow::Owned(nk)) => renamed.push((nk, k)),
                }
                path.push('.');
                path.push_str(k);
                let r = check_keys(child, case, path);
                path.truncate(base);
                changed |= r?;
            }
            if !renamed.is_empty() {
                changed = true;
                let collision = |first: &str, second: &str, nk: &str| NestedIssue::Collision {
                    path: path.clone(),
                    first: first.to_owned(),
                    second: second.to_owned(),
                    normalized: nk.to_owned(),
                };
                for (nk, orig) in &renamed {
                    if m.contains_key(nk) {
                        return Err(collision(orig, nk, nk));
                    }
                }
                renamed.sort_by(|a, b| a.0.cmp(&b.0));
                for pair in renamed.windows(2) {
                    if pair[0].0 == pair[1].0 {
                        return Err(collision(pair[0].1, pair[1].1, &pair[0].0));
                    }
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push('.');
                path.push_str(&i.to_string());
                let r = check_keys(child, case, path);
                path.truncate(base);
                changed |= r?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// Renames every nested key to its normalised form (after [`check_keys`] found no problem).
fn rename_keys(v: Value, case: KeyCase) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, child)| {
                    let nk = normalize_key(&k, case).unwrap_or(k);
                    (nk, rename_keys(child, case))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|c| rename_keys(c, case)).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests;
