//! One receipt as published: its JSON body and where it goes.

use alertbridge_wal::{Key, OutboxEntry, ReceiptState};

use super::topic::{reply_topic_problem, sanitise_level, topic_values, Template};
use crate::config::{ReceiptsConfig, ResponseTopic};

fn state_name(state: ReceiptState) -> &'static str {
    match state {
        ReceiptState::Delivered => "delivered",
        ReceiptState::DeadLettered => "dead_lettered",
        ReceiptState::Expired => "expired",
    }
}

/// The JSON receipt (schema `v: 1`; fields are only ever added) for the entry under `key`.
/// `receipt_id` is `<client_id>/<seq of the entry>`: the same on every re-publish.
pub fn payload(entry: &OutboxEntry, key: Key, client_id: &str, device: Option<&str>) -> Vec<u8> {
    let dead = entry.dead.as_ref().map(|d| {
        serde_json::json!({
            "id": d.id,
            "kind": d.kind.name(),
            "reason": d.reason,
            "api_message": d.api_message,
        })
    });
    let genesys = match entry.state {
        ReceiptState::Delivered => serde_json::json!({
            "status": entry.status,
            "execution_id": entry.execution_id,
            "correlation_id": entry.correlation_id,
        }),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "v": 1,
        "receipt_id": format!("{client_id}/{}", key.seq),
        "alert_id": entry.alert_id,
        "topic": entry.topic,
        "device": device,
        "state": state_name(entry.state),
        "at_ms": entry.at_ms,
        "received_at_ms": entry.received_at_ms,
        "latency_ms": entry.at_ms.saturating_sub(entry.received_at_ms),
        "attempts": entry.attempts,
        "status": entry.status,
        "genesys": genesys,
        "dead_letter": dead,
    })
    .to_string()
    .into_bytes()
}

/// Where and how one receipt is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptPublish {
    /// Topic.
    pub topic: String,
    /// JSON body.
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
    /// MQTT 5 Correlation Data echoed to the publisher that asked (with its response topic).
    pub correlation: Option<Vec<u8>>,
}

/// What becomes of one receipt: its publish, if any, and why the publisher's response topic
/// was not used when it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The publish; `None` with `receipts.response_topic = "only"` when no usable response
    /// topic was set.
    pub publish: Option<ReceiptPublish>,
    /// Why the alert's response topic was refused (it would come back in as an alert, or it is
    /// no topic name); the receipt then follows the template, or is not published ("only").
    pub refused_reply: Option<String>,
}

/// Routes one entry (`receipts.response_topic`):
/// - `prefer`: the publisher's MQTT 5 response topic with its correlation data, never retained
///   (it is a conversation); otherwise the template, retained as configured;
/// - `only`: the response topic, or nothing;
/// - `ignore`: always the template.
///
/// A response topic an ingest filter matches, one of the template's topics, or one that is no
/// valid topic name, is refused ([`reply_topic_problem`]): the agent must not be a way to
/// publish into its own input, nor to post receipts in another device's name.
pub fn outgoing(
    cfg: &ReceiptsConfig,
    template: &Template,
    client_id: &str,
    key: Key,
    entry: &OutboxEntry,
) -> Routed {
    let mut values = topic_values(&cfg.topic_pattern, &entry.topic);
    let device = values
        .iter()
        .find(|(n, _)| n == "device")
        .map(|(_, v)| sanitise_level(v));
    values.push(("client_id".to_owned(), client_id.to_owned()));
    let body = || payload(entry, key, client_id, device.as_deref());
    let mut refused_reply = None;
    let reply = entry
        .reply
        .as_ref()
        .filter(|_| cfg.response_topic != ResponseTopic::Ignore)
        .filter(|r| {
            match reply_topic_problem(&r.topic, &cfg.ingest_filters, &template.as_filter()) {
                None => true,
                Some(problem) => {
                    refused_reply = Some(problem);
                    false
                }
            }
        });
    let publish = match reply {
        Some(reply) => Some(ReceiptPublish {
            topic: reply.topic.clone(),
            payload: body(),
            retain: false,
            correlation: reply.correlation.clone(),
        }),
        None if cfg.response_topic == ResponseTopic::Only => None,
        None => Some(ReceiptPublish {
            topic: template.render(&values),
            payload: body(),
            retain: cfg.retain,
            correlation: None,
        }),
    };
    Routed {
        publish,
        refused_reply,
    }
}
