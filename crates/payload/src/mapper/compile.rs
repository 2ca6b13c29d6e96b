//! Compiling `[mapping]`: every key checked once, every problem named by its config key
//! (`mapping.fields.readingValue: ...`), output keys that collide after normalisation refused here
//! and never met at run time.

use std::collections::HashMap;

use serde_json::Value;

use super::coercion::coerce;
use super::keys::{check_keys, rename_keys};
use super::Mapper;
use crate::config::{FieldType, MappingConfig, MappingConfigError};
use crate::key::normalize_key;
use crate::path::{Path, Source, TopicPattern};

/// Where a mapped field's value comes from.
#[derive(Debug)]
pub(super) enum FieldSource {
    /// A payload path or a topic placeholder.
    Source(Source),
    /// A constant from the config, already coerced and with its keys normalised.
    Const(Value),
}

/// One compiled `[mapping.fields]` entry.
#[derive(Debug)]
pub(super) struct Field {
    /// The normalised output key.
    pub(super) out_key: String,
    /// Where the value comes from.
    pub(super) source: FieldSource,
    /// The declared `type` the value is coerced to.
    pub(super) kind: FieldType,
    /// A missing value rejects the alert (`MissingField`) instead of omitting the key.
    pub(super) required: bool,
    /// Used when the source has no value; already coerced and with its keys normalised.
    pub(super) default: Option<Value>,
}

impl Field {
    /// The field as a reason names it: output key and source.
    pub(super) fn describe(&self) -> String {
        match &self.source {
            FieldSource::Source(s) => format!("field `{}` (from `{}`)", self.out_key, s.describe()),
            FieldSource::Const(_) => format!("field `{}` (constant)", self.out_key),
        }
    }
}

/// `value` of config key `key` within `min..=max`, else the error naming the key and the range.
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

/// A count as `u64` (saturating; `usize` is at most 64 bits on every supported target).
pub(super) fn as_u64(n: usize) -> u64 {
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
                Ok(Source::Prop(_)) => Err(E::InvalidSource {
                    key: key.to_owned(),
                    text: text.to_owned(),
                    reason: "must be a payload path, not an MQTT 5 user property".into(),
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
}
