//! `[receipts]`: delivery receipts published back to MQTT (topic template, retain, outbox
//! bound); present turns the log's receipt outbox on.

use super::*;

/// `[receipts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceipts {
    /// Topic template; `{name}` takes the placeholder `name` of `mapping.topic_pattern` from the
    /// alert's topic, `{client_id}` is `mqtt.client_id`.
    pub topic: Option<String>,
    /// Publish receipts retained (the topic holds its latest receipt).
    pub retain: Option<bool>,
    /// Most receipts waiting to be published; beyond it the oldest are dropped (counted).
    pub max_pending: Option<u64>,
    /// A receipt older than this when it could be published is dropped (counted).
    pub max_age_secs: Option<u64>,
    /// What an MQTT 5 publisher's response topic does: `prefer`, `only`, `ignore`.
    pub response_topic: Option<String>,
}

/// `receipts.response_topic`: where the receipt of an alert whose MQTT 5 publisher set a
/// Response Topic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseTopic {
    /// To the response topic, with the publisher's Correlation Data; others to the template.
    Prefer,
    /// Only alerts whose publisher set a response topic get a receipt.
    Only,
    /// Every receipt to the template.
    Ignore,
}

/// Delivery receipts to MQTT, validated (see `crate::receipts`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiptsConfig {
    /// Topic template (validated: placeholders known, no wildcard, no ingest filter matches it).
    pub topic: String,
    /// `mapping.topic_pattern`, where the template's placeholders take their values.
    pub topic_pattern: String,
    /// Publish retained.
    pub retain: bool,
    /// Most receipts waiting; the oldest beyond it are dropped.
    pub max_pending: u64,
    /// Receipts older than this are dropped instead of published.
    pub max_age: Duration,
    /// Where an MQTT 5 publisher's response topic sends its alert's receipt.
    pub response_topic: ResponseTopic,
    /// `mqtt.topics`: a response topic one of them matches is refused.
    pub ingest_filters: Vec<String>,
}

/// Default receipt topic template.
pub const DEFAULT_RECEIPTS_TOPIC: &str = "alertbridge/receipts/{device}";

pub(super) fn receipts_from_raw(
    raw: Option<RawReceipts>,
    mqtt: &MqttConfig,
    mapping: &MappingConfig,
) -> Result<Option<ReceiptsConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let topic = raw
        .topic
        .unwrap_or_else(|| DEFAULT_RECEIPTS_TOPIC.to_owned());
    let template = crate::receipts::Template::parse(&topic).map_err(|problem| {
        invalid(
            "receipts.topic",
            format!("{topic:?} {problem}"),
            "write a topic like \"alertbridge/receipts/{device}\": levels of text and              {placeholder}s, no '+' or '#', not starting with '$'",
        )
    })?;
    let known = crate::receipts::pattern_placeholders(&mapping.topic_pattern);
    for name in template.placeholders() {
        if name != "client_id" && !known.iter().any(|k| k == name) {
            return Err(invalid(
                "receipts.topic",
                format!(
                    "{{{name}}} is not a placeholder of mapping.topic_pattern {:?}",
                    mapping.topic_pattern
                ),
                "name the level in mapping.topic_pattern (e.g. \"plant/{site}/alerts/{device}\"), \
                 or use only {client_id} and placeholders it has",
            ));
        }
    }
    // A receipt an ingest filter matches would come back in as an alert, and its receipt too.
    for filter in &mqtt.topics {
        if crate::receipts::overlaps(&template.as_filter(), crate::receipts::matched_part(filter)) {
            return Err(invalid(
                "receipts.topic",
                format!("{topic:?} can produce topics that mqtt.topics filter {filter:?} matches: receipts would come back in as alerts"),
                "publish receipts under a prefix no ingest filter covers (default \"alertbridge/receipts/{device}\")",
            ));
        }
    }
    let max_pending = raw.max_pending.unwrap_or(50_000);
    if max_pending == 0 {
        return Err(invalid(
            "receipts.max_pending",
            "is 0",
            "use at least 1 (default 50000)",
        ));
    }
    let max_age_secs = raw.max_age_secs.unwrap_or(86_400);
    if max_age_secs == 0 {
        return Err(invalid(
            "receipts.max_age_secs",
            "is 0",
            "use at least 1 (default 86400 = 1 day)",
        ));
    }
    let response_topic =
        match raw.response_topic.as_deref() {
            None | Some("prefer") => ResponseTopic::Prefer,
            Some("only") => ResponseTopic::Only,
            Some("ignore") => ResponseTopic::Ignore,
            Some(other) => return Err(invalid(
                "receipts.response_topic",
                format!("{other:?} is not a mode"),
                "use \"prefer\" (default: the publisher's MQTT 5 response topic when set, else \
                 receipts.topic), \"only\" (receipts only where a response topic was set) or \
                 \"ignore\" (always receipts.topic)",
            )),
        };
    if response_topic == ResponseTopic::Only && mqtt.protocol != MqttProtocol::V5 {
        return Err(invalid(
            "receipts.response_topic",
            "is \"only\" but mqtt.protocol is \"3.1.1\", which has no response topics: no \
             receipt would ever be published",
            "set mqtt.protocol = \"5\", or use response_topic = \"prefer\"",
        ));
    }
    Ok(Some(ReceiptsConfig {
        topic,
        topic_pattern: mapping.topic_pattern.clone(),
        retain: raw.retain.unwrap_or(false),
        max_pending,
        max_age: Duration::from_secs(max_age_secs),
        response_topic,
        ingest_filters: mqtt.topics.clone(),
    }))
}
