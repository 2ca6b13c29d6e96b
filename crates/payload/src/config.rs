//! The `[mapping]` section of `alertbridge.toml`: the raw, serde-facing configuration types and the
//! errors [`crate::Mapper::new`] reports when a configuration cannot be compiled.
//!
//! Every field has a default, so an absent `[mapping]` section is the pass-through mapping with the
//! `camelCase` key policy. Unknown keys are rejected (`deny_unknown_fields`) so a typo never turns
//! into a silently ignored rule.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

/// `[mapping]`: how a device's MQTT payload becomes the Genesys `inputData` (workflow target) or
/// `data` (events target) object. See `docs/payload.md` for every rule with examples.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MappingConfig {
    /// Case policy for every output key (`preserve`, `camelCase`, `snake_case`). Default `camelCase`:
    /// the integration guide's rule ("field names in the data object are camelCase"), the style of
    /// Architect variables (`Flow.deviceId`) and of the Genesys API itself.
    pub key_case: KeyCase,
    /// Output key → source. Empty (the default) means pass-through: every top-level payload field is
    /// sent under its normalised key. Non-empty means an explicit mapping: only these keys are sent,
    /// and every payload field they do not name goes into the catch-all field as one JSON string.
    pub fields: BTreeMap<String, FieldSpec>,
    /// Payload paths that must be present, non-null, non-empty and scalar (string, number, boolean);
    /// otherwise the alert is rejected (dead letter) with a reason naming the field.
    /// Default empty; `["device_id", "alert_level"]` is the recommended production setting.
    pub required: Vec<String>,
    /// MQTT topic pattern whose `{name}` segments can be used as sources (`"{site}"`), e.g.
    /// `plant/{site}/alerts/{device}`; `+` and a final `#` match like MQTT wildcards. Empty: no
    /// placeholders.
    pub topic_pattern: String,
    /// Payload path of the device's own alert id (string or number, at most 128 characters).
    /// When absent or unusable the alert id is the digest `sha256(topic \0 payload)`, first 16
    /// bytes in hex. Empty: always the digest. Default `alert_id`.
    pub alert_id_field: String,
    /// Output key carrying the alert id (normalised by `key_case`). Default `alertId`.
    pub alert_id_key: String,
    /// Output key of the catch-all field for payload fields the mapping does not name (normalised
    /// by `key_case`). Default `extra`.
    pub catch_all_key: String,
    /// Payload paths consulted in order for the alert level; the first present (non-null) wins.
    pub priority_fields: Vec<String>,
    /// Levels (compared case-insensitively) that put an alert in the critical lane.
    pub critical_levels: Vec<String>,
    /// Largest accepted raw payload in bytes; larger payloads are rejected (`TooLarge`).
    /// Default 65 536.
    pub max_payload_bytes: usize,
    /// Budget for the serialized `data` / `inputData` object in bytes. Default 8 192: the guide's
    /// safety margin under its 10 KB figure, far below the 512 000-byte platform request limit.
    pub max_data_bytes: usize,
    /// Deepest accepted nesting of objects and arrays in a payload (top-level object = 1).
    /// Default 32, at most 128.
    pub max_depth: usize,
    /// Most object keys a payload may have, counted at every depth while it is parsed; a payload
    /// with more is rejected (`TooManyKeys`) as soon as the reader meets key `max_keys + 1`, before
    /// any mapping work. Default 1 024, range 1 ..= 1 000 000: a real alert has tens of keys, and
    /// the default 8 KiB data budget holds at most about 1 360 of even the smallest fields
    /// (`"a":0,`), so a payload with more can never be sent field by field anyway.
    pub max_keys: usize,
    /// Strings (bytes) and byte arrays (elements) at least this long are tested for looking
    /// binary (base64, data URI, control characters, arrays of 0..=255). Default 256.
    pub blob_min_len: usize,
    /// What happens to a binary-looking value: `strip` (replace with a marker, default) or
    /// `dead_letter` (reject the alert).
    pub blob_policy: BlobPolicy,
    /// `[mapping.coalesce]`: optional storm coalescing.
    pub coalesce: CoalesceConfig,
}

impl Default for MappingConfig {
    fn default() -> Self {
        MappingConfig {
            key_case: KeyCase::CamelCase,
            fields: BTreeMap::new(),
            required: Vec::new(),
            topic_pattern: String::new(),
            alert_id_field: "alert_id".to_owned(),
            alert_id_key: "alertId".to_owned(),
            catch_all_key: "extra".to_owned(),
            priority_fields: vec!["alert_level".to_owned(), "severity".to_owned()],
            critical_levels: vec!["critical".to_owned()],
            max_payload_bytes: 64 * 1024,
            max_data_bytes: 8 * 1024,
            max_depth: 32,
            max_keys: 1024,
            blob_min_len: 256,
            blob_policy: BlobPolicy::Strip,
            coalesce: CoalesceConfig::default(),
        }
    }
}

/// Case policy for output keys. Whatever the policy, output keys only contain ASCII letters, digits
/// and underscores and start with a letter.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum KeyCase {
    /// Keep the key as written; only runs of illegal characters become `_` (leading and trailing
    /// `_` are trimmed).
    #[serde(rename = "preserve")]
    Preserve,
    /// `device_id` → `deviceId`, `HTTPStatus` → `httpStatus`.
    #[default]
    #[serde(rename = "camelCase")]
    CamelCase,
    /// `deviceId` → `device_id`, `Sensor-Type` → `sensor_type`.
    #[serde(rename = "snake_case")]
    SnakeCase,
}

impl fmt::Display for KeyCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyCase::Preserve => "preserve",
            KeyCase::CamelCase => "camelCase",
            KeyCase::SnakeCase => "snake_case",
        })
    }
}

/// What to do with a binary-looking value (camera snapshot, firmware dump).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlobPolicy {
    /// Replace the value with the string `[binary value stripped: N bytes]` and add a note.
    #[default]
    Strip,
    /// Reject the alert (`BinaryBlob`): it goes to dead letters with the field named.
    DeadLetter,
}

/// Declared type of a mapped field; values are coerced to it or the alert is rejected (`WrongType`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// No check, no coercion (default).
    #[default]
    Any,
    /// Strings as they are; numbers and booleans as their JSON text.
    String,
    /// Numbers as they are; strings holding a finite number are parsed.
    Number,
    /// Integers; floats with no fractional part and numeric strings are converted.
    Integer,
    /// Booleans; `"true"`/`"false"` (any case), `"1"`/`"0"`, `1`/`0` are converted.
    Boolean,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Any => "any",
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
        })
    }
}

/// One entry of `[mapping.fields]`: where an output key's value comes from.
///
/// In TOML either a source string (`readingValue = "sensor.reading"`, `site = "{site}"`) or a
/// table (`readingValue = { from = "sensor.reading", type = "number", required = true }`,
/// `gatewayId = { value = "gw-01" }`). Exactly one of `from` and `value` is set.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FieldSpec {
    /// Source: a payload path (`sensor.reading`, `readings.0` for an array element) or a topic
    /// placeholder (`{site}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A constant value (site name, gateway id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Declared type; the value is coerced to it. Default `any`.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// When true, a missing (absent or null) source without a `default` rejects the alert.
    pub required: bool,
    /// Used when the source is absent or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

impl FieldSpec {
    /// A field copied from `source` (a payload path or `{placeholder}`), untyped and optional.
    pub fn from_source(source: &str) -> FieldSpec {
        FieldSpec {
            from: Some(source.to_owned()),
            ..FieldSpec::default()
        }
    }
}

/// The table form of [`FieldSpec`], kept separate so its derive can deny unknown keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpecTable {
    from: Option<String>,
    value: Option<serde_json::Value>,
    #[serde(rename = "type", default)]
    kind: FieldType,
    #[serde(default)]
    required: bool,
    default: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a source string like \"sensor.reading\" or \"{site}\", or a table with `from` or `value`",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::from_source(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                let t = FieldSpecTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(FieldSpec {
                    from: t.from,
                    value: t.value,
                    kind: t.kind,
                    required: t.required,
                    default: t.default,
                })
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// `[mapping.coalesce]`: collapse a storm of non-critical alerts from one site into one summary
/// alert per window (the agent's drain coalesces; [`crate::Mapper::map_summary`] maps the
/// summary). Off by default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoalesceConfig {
    /// Turns coalescing on. Default false.
    pub enabled: bool,
    /// Length of a site's window in milliseconds, counted from its first alert. Default 60 000.
    pub window_ms: u64,
    /// The `min_count`-th alert of a site within one window and all later ones are absorbed into
    /// the window's summary; the first `min_count - 1` are delivered as usual. Default 5.
    pub min_count: u32,
    /// Source of the site key: a topic placeholder (`{site}`, default) or a payload path.
    pub site: String,
    /// Source of the device name listed in summaries: payload path or placeholder. Default
    /// `device_id`.
    pub device: String,
    /// Also coalesce critical alerts. Default false: critical alerts are always delivered singly.
    pub include_critical: bool,
    /// Alert levels from least to most severe (case-insensitive), used to report a summary's worst
    /// level; unknown levels rank below all of them.
    pub level_order: Vec<String>,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            enabled: false,
            window_ms: 60_000,
            min_count: 5,
            site: "{site}".to_owned(),
            device: "device_id".to_owned(),
            include_critical: false,
            level_order: ["info", "warning", "minor", "major", "critical"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// A `[mapping]` configuration that cannot be compiled. Every message starts with the full key
/// (`mapping.fields.readingValue: ...`); the caller reports it and exits with the config-error
/// status, since no alert can be mapped until the operator fixes the file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MappingConfigError {
    /// A source (`from`, a `required` entry, `priority_fields`, `alert_id_field`, coalesce
    /// `site`/`device`) is not a valid payload path or `{placeholder}`.
    #[error("{key}: invalid source {text:?}: {reason}")]
    InvalidSource {
        /// Full config key.
        key: String,
        /// The source as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `{placeholder}` source names no placeholder of `mapping.topic_pattern`.
    #[error("{key}: {{{placeholder}}} is not a placeholder of mapping.topic_pattern {pattern:?}")]
    UnknownPlaceholder {
        /// Full config key.
        key: String,
        /// The placeholder name.
        placeholder: String,
        /// The configured pattern.
        pattern: String,
    },
    /// `mapping.topic_pattern` is malformed.
    #[error("mapping.topic_pattern: {pattern:?} {reason}")]
    InvalidTopicPattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An output key normalises to nothing usable (no ASCII letter to start with).
    #[error("{key}: {name:?} cannot become a legal output key under key_case = {case} (it needs an ASCII letter first and at most 128 characters)")]
    IllegalKey {
        /// Full config key.
        key: String,
        /// The key as written.
        name: String,
        /// The configured policy.
        case: KeyCase,
    },
    /// Two output keys normalise to the same key; rename one.
    #[error("{key}: output key {normalized:?} collides with {other} (both normalise to it)")]
    KeyCollision {
        /// Full config key of the later entry.
        key: String,
        /// Full config key of the earlier entry.
        other: String,
        /// The shared normalised key.
        normalized: String,
    },
    /// A field sets both or neither of `from` and `value`.
    #[error("{key}: set exactly one of `from` and `value`")]
    SourceConflict {
        /// Full config key.
        key: String,
    },
    /// A number outside its allowed range.
    #[error("{key}: {value} is outside the allowed range {min}..={max}")]
    OutOfRange {
        /// Full config key.
        key: String,
        /// The configured value.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// Any other invalid value (a constant that does not match its type, an empty level name).
    #[error("{key}: {reason}")]
    InvalidValue {
        /// Full config key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}
