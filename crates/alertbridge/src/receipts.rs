//! Delivery receipts back to MQTT (`[receipts]`): a task with its own MQTT connection publishes,
//! at QoS 1, the receipts the log queued with each alert's state change (delivered,
//! dead-lettered, expired), and marks each done only after the broker's PUBACK for it.
//!
//! # Why from the log, and at least once
//!
//! The receipt is written in the same log frame as the state change it reports (RC1, see
//! `alertbridge_wal`'s `wal/outbox.rs`), so a crash between the Genesys 2xx and the publish
//! still publishes it after the restart. Marking done is not fsynced, and a connection lost
//! with receipts in flight publishes them again on the next one: a subscriber may see a receipt
//! twice and deduplicates on `receipt_id`, which is stable across re-publishes.
//!
//! # Its own connection
//!
//! Client id `<mqtt.client_id>-receipts`, clean session, same broker, credentials and TLS as
//! ingest. Ingest's acks, epochs and subscriptions stay untouched, a burst of receipts never
//! delays a PUBACK of an alert, and with a clean session nothing is re-sent behind our back: on
//! every new connection the client is built afresh and the receipts not yet done are read from
//! the log again. Within one connection the client sends requests in order, so the n-th
//! outgoing PUBLISH is the n-th receipt handed to it; that is how a PUBACK's packet id finds
//! its receipt.
//!
//! # Bounded, never backpressure
//!
//! At most `max_pending` receipts wait (the oldest beyond it are dropped), and one older than
//! `max_age` when it could be published is dropped; both counted (`receipts_dropped`) and
//! warned at most once a minute. Receipts never hold up delivery: stopping the calls to
//! specialists because a plant display cannot be told about them would trade the primary
//! guarantee for a courtesy (see docs/decisions.md).
//!
//! # Topic
//!
//! `receipts.topic` is a template: `{name}` takes the value of placeholder `name` of
//! `mapping.topic_pattern` in the alert's topic (e.g. `{device}` in
//! `plant/{site}/alerts/{device}`), `{client_id}` is `mqtt.client_id`. A value is sanitised
//! ([`sanitise_level`]) so it can never add a level or a wildcard; a topic that does not match
//! the pattern gives `_unknown`. Config validation refuses a template an ingest filter matches.
//! An MQTT 5 publisher's `response_topic` (an entry's `reply`) takes the place of the template
//! once ingest keeps it with the record.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_wal::{Key, OutboxEntry, OutboxItem, ReceiptState, Wal};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, ReceiptsConfig};
use crate::events::{self, Counters};

/// Receipts handed to the client and not yet acknowledged, at most.
const WINDOW: usize = 64;

/// How often the task looks for new receipts, writes the done ones and checks the bound.
const TICK: Duration = Duration::from_millis(50);

/// Longest value a placeholder puts in a topic level, in bytes.
const LEVEL_MAX: usize = 128;

/// What a placeholder gives when the alert's topic does not match `mapping.topic_pattern`.
pub const UNKNOWN: &str = "_unknown";

/// Drops are warned at most this often (they are counted every time).
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// Errors of one connection of the publisher (each ends it; the task connects again).
#[derive(Debug, thiserror::Error)]
pub enum ReceiptsError {
    /// Building the MQTT options failed (password file, CA file).
    #[error("receipts connection options")]
    Options(#[source] crate::ingest::IngestError),
    /// The connection failed or was lost.
    #[error("receipts connection")]
    Connection(#[source] rumqttc::ConnectionError),
    /// The client refused a publish (its channel closed).
    #[error("receipts publish")]
    Client(#[source] rumqttc::ClientError),
    /// The log failed (it is poisoned; the agent stops on its own).
    #[error("log")]
    Log(#[source] alertbridge_wal::WalError),
    /// A blocking log call did not complete.
    #[error("log call")]
    Join(#[source] tokio::task::JoinError),
}

/// One piece of a topic template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Placeholder(String),
}

/// A parsed `receipts.topic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        if text.starts_with('$') {
            return Err("starts with '$' (reserved for the broker)".into());
        }
        if text.contains(['+', '#', '\0']) {
            return Err(
                "contains '+', '#' or NUL (a receipt topic is a topic, not a filter)".into(),
            );
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err("has a '{' without '}'".into());
            };
            let name = &rest[open + 1..open + close];
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                return Err(format!(
                    "has an invalid placeholder {{{name}}} (ASCII letters, digits, '_')"
                ));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            pieces.push(Piece::Placeholder(name.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("has a '}' without '{'".into());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    /// The placeholder names it uses.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Placeholder(n) => Some(n.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The filter of every topic it can produce: a level holding a placeholder becomes `+`.
    pub fn as_filter(&self) -> String {
        let mut text = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => text.push_str(t),
                // Marks the level; no template text can contain it ('+' is refused).
                Piece::Placeholder(_) => text.push('+'),
            }
        }
        text.split('/')
            .map(|level| if level.contains('+') { "+" } else { level })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The topic for `values` (name → value); a missing value gives [`UNKNOWN`]. Values are
    /// sanitised with [`sanitise_level`].
    pub fn render(&self, values: &[(String, String)]) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Placeholder(name) => {
                    let value = values
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| sanitise_level(v))
                        .unwrap_or_else(|| UNKNOWN.to_owned());
                    out.push_str(&value);
                }
            }
        }
        out
    }
}

/// A value made safe as (part of) one topic level: `/`, `+`, `#` and NUL become `_`, a leading
/// `$` too, an empty value is [`UNKNOWN`], and it is cut to 128 bytes on a char boundary. So a
/// device name from a topic or payload can never add a level or a wildcard to a receipt topic.
pub fn sanitise_level(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect();
    if out.starts_with('$') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        return UNKNOWN.to_owned();
    }
    alertbridge_wal::cut_text(&out, LEVEL_MAX)
}

/// The placeholder names of a `mapping.topic_pattern` (levels written `{name}`).
pub fn pattern_placeholders(pattern: &str) -> Vec<String> {
    pattern
        .split('/')
        .filter_map(|l| l.strip_prefix('{').and_then(|l| l.strip_suffix('}')))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The values of `pattern`'s placeholders in `topic`; empty when it does not match.
pub fn topic_values(pattern: &str, topic: &str) -> Vec<(String, String)> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut parts = topic.split('/');
    for level in pattern.split('/') {
        if level == "#" {
            return out;
        }
        let Some(part) = parts.next() else {
            return Vec::new();
        };
        if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            if part.is_empty() {
                return Vec::new();
            }
            out.push((name.to_owned(), part.to_owned()));
        } else if level != "+" && level != part {
            return Vec::new();
        }
    }
    if parts.next().is_some() {
        return Vec::new();
    }
    out
}

/// Whether some topic matches both filters (`+` and a final `#` are wildcards).
pub fn overlaps(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (Some(&"#"), _) | (_, Some(&"#")) => true,
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(x), Some(y)) => (*x == "+" || *y == "+" || x == y) && go(&a[1..], &b[1..]),
        }
    }
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    go(&a, &b)
}

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
}

/// Builds the publish of one entry.
pub fn outgoing(
    cfg: &ReceiptsConfig,
    template: &Template,
    client_id: &str,
    key: Key,
    entry: &OutboxEntry,
) -> ReceiptPublish {
    let mut values = topic_values(&cfg.topic_pattern, &entry.topic);
    let device = values
        .iter()
        .find(|(n, _)| n == "device")
        .map(|(_, v)| sanitise_level(v));
    values.push(("client_id".to_owned(), client_id.to_owned()));
    match &entry.reply {
        // An MQTT 5 publisher's own answer topic: never retained (it is a conversation).
        Some(reply) => ReceiptPublish {
            topic: reply.topic.clone(),
            payload: payload(entry, key, client_id, device.as_deref()),
            retain: false,
        },
        None => ReceiptPublish {
            topic: template.render(&values),
            payload: payload(entry, key, client_id, device.as_deref()),
            retain: cfg.retain,
        },
    }
}

/// Runs the publisher until `cancel`, connecting again after each lost connection (backoff
/// `mqtt.reconnect_min` doubling to `reconnect_max`). Receipts never stop the agent: every
/// error is logged and counted, and the task goes on.
pub async fn run(
    cfg: ReceiptsConfig,
    mqtt: MqttConfig,
    wal: Wal,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    if fault_hold_receipts() {
        tracing::warn!("ALERTBRIDGE_FAULT_HOLD_RECEIPTS=1: the receipts publisher does not run");
        cancel.cancelled().await;
        return;
    }
    let template = match Template::parse(&cfg.topic) {
        Ok(t) => t,
        Err(problem) => {
            // Validated with the config: cannot happen, but must not take the agent down.
            tracing::error!(topic = %cfg.topic, problem, "receipts.topic is invalid; receipts stay queued");
            return;
        }
    };
    let mut backoff = mqtt.reconnect_min;
    let mut publisher = Publisher {
        cfg,
        template,
        client_id: mqtt.client_id.clone(),
        wal,
        counters,
        dropped_unwarned: 0,
        last_drop_warn: None,
    };
    loop {
        let result = publisher.connection(&mqtt, &cancel).await;
        events::receipts_connection(&publisher.counters, false, None);
        match result {
            Ok(true) => return,
            Ok(false) => backoff = mqtt.reconnect_min,
            Err(e) => {
                events::receipts_connection_failed(&publisher.counters, &e, backoff);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(mqtt.reconnect_max);
    }
}

/// Fault injection for the end-to-end tests, never set in production: with
/// `ALERTBRIDGE_FAULT_HOLD_RECEIPTS=1` in its environment the publisher never connects, so
/// receipts only accumulate in the log (a crash between the 2xx and the publish, stretched).
fn fault_hold_receipts() -> bool {
    std::env::var_os("ALERTBRIDGE_FAULT_HOLD_RECEIPTS").is_some_and(|v| v == "1")
}

struct Publisher {
    cfg: ReceiptsConfig,
    template: Template,
    client_id: String,
    wal: Wal,
    counters: Arc<Counters>,
    dropped_unwarned: u64,
    last_drop_warn: Option<Instant>,
}

async fn wal_call<T: Send + 'static>(
    wal: &Wal,
    f: impl FnOnce(&Wal) -> Result<T, alertbridge_wal::WalError> + Send + 'static,
) -> Result<T, ReceiptsError> {
    let w = wal.clone();
    tokio::task::spawn_blocking(move || f(&w))
        .await
        .map_err(ReceiptsError::Join)?
        .map_err(ReceiptsError::Log)
}

impl Publisher {
    /// One connection: publishes until it fails (`Err`), or `cancel` (`Ok(true)`). The
    /// receipts done so far are written to the log in every case.
    async fn connection(
        &mut self,
        mqtt: &MqttConfig,
        cancel: &CancellationToken,
    ) -> Result<bool, ReceiptsError> {
        let mut own = mqtt.clone();
        own.client_id = format!("{}-receipts", mqtt.client_id);
        let mut options =
            crate::ingest::mqtt_options(&own, WINDOW).map_err(ReceiptsError::Options)?;
        // Clean session: nothing is re-sent behind our back; the log is the only queue.
        options
            .set_clean_session(true)
            .set_manual_acks(false)
            .set_inflight(WINDOW as u16);
        let (client, mut eventloop) = AsyncClient::new(options, WINDOW * 2);
        let mut cursor = self.wal.outbox_cursor();
        // Handed to the client, waiting for their outgoing PUBLISH (in order).
        let mut handed: VecDeque<Key> = VecDeque::new();
        let mut inflight: HashMap<u16, Key> = HashMap::new();
        let mut done: Vec<Key> = Vec::new();
        let mut connected = false;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(true),
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        events::receipts_connection(&self.counters, true, Some(&own.client_id));
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(key) = handed.pop_front() {
                            inflight.insert(pkid, key);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(key) = inflight.remove(&ack.pkid) {
                            done.push(key);
                            events::receipt_published(&self.counters);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break Err(ReceiptsError::Connection(e)),
                },
                _ = tick.tick() => {
                    if let Err(e) = self.turn(&client, &mut cursor, &mut handed, &inflight, &mut done, connected).await {
                        break Err(e);
                    }
                }
            }
        };
        // Whatever the broker acknowledged stays done; the rest is published again.
        let flushed = self.write_done(&mut done).await;
        if result.as_ref().is_ok_and(|stop| *stop) {
            let _ = client.try_disconnect();
        }
        flushed?;
        result
    }

    async fn write_done(&self, done: &mut Vec<Key>) -> Result<(), ReceiptsError> {
        if done.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(done);
        wal_call(&self.wal, move |w| w.outbox_done(&keys)).await
    }

    /// One tick: write what is done, keep the bound, hand new receipts to the client.
    async fn turn(
        &mut self,
        client: &AsyncClient,
        cursor: &mut alertbridge_wal::Cursor,
        handed: &mut VecDeque<Key>,
        inflight: &HashMap<u16, Key>,
        done: &mut Vec<Key>,
        connected: bool,
    ) -> Result<(), ReceiptsError> {
        self.write_done(done).await?;
        self.keep_bound().await?;
        let space = WINDOW.saturating_sub(handed.len() + inflight.len());
        if !connected || space == 0 {
            return Ok(());
        }
        let mut c = cursor.clone();
        let (page, c) = wal_call(&self.wal, move |w| {
            let page = w.read_outbox(&mut c, space)?;
            Ok((page, c))
        })
        .await?;
        *cursor = c;
        let now = crate::clock::now_ms();
        let max_age_ms = self.cfg.max_age.as_millis() as u64;
        let mut stale = Vec::new();
        let mut oldest_stale = None;
        for item in page {
            let (key, entry) = match item {
                Ok(found) => found,
                Err(corrupt) => {
                    // A receipt that does not decode cannot be published; it must not pin
                    // its segment either.
                    tracing::warn!(key = %corrupt.key, error = %corrupt.error, "dropping an undecodable receipt");
                    stale.push(corrupt.key);
                    continue;
                }
            };
            if now.saturating_sub(entry.at_ms) > max_age_ms {
                oldest_stale.get_or_insert_with(|| entry.alert_id.clone());
                stale.push(key);
                continue;
            }
            let out = outgoing(&self.cfg, &self.template, &self.client_id, key, &entry);
            client
                .try_publish(out.topic, QoS::AtLeastOnce, out.retain, out.payload)
                .map_err(ReceiptsError::Client)?;
            handed.push_back(key);
        }
        if !stale.is_empty() {
            let n = stale.len() as u64;
            wal_call(&self.wal, move |w| w.outbox_done(&stale)).await?;
            self.dropped(
                n,
                "older than receipts.max_age_secs",
                oldest_stale.as_deref(),
            );
        }
        Ok(())
    }

    /// Over `max_pending`: the oldest receipts are dropped (marked done unpublished).
    async fn keep_bound(&mut self) -> Result<(), ReceiptsError> {
        let max = self.cfg.max_pending;
        // On the blocking pool like every log call (D1): the log's mutex can be held by a
        // dead letter's fsync.
        let (n, oldest) = wal_call(&self.wal, move |w| {
            let over = w.outbox_len().saturating_sub(max);
            if over == 0 {
                return Ok((0, None));
            }
            let mut c = w.outbox_cursor();
            let page = w.read_outbox(&mut c, over as usize)?;
            let oldest = page
                .iter()
                .find_map(|i| i.as_ref().ok().map(|(_, e)| e.alert_id.clone()));
            let keys: Vec<Key> = page
                .iter()
                .map(|i: &OutboxItem| match i {
                    Ok((k, _)) => *k,
                    Err(c) => c.key,
                })
                .collect();
            w.outbox_done(&keys)?;
            Ok((keys.len() as u64, oldest))
        })
        .await?;
        if n > 0 {
            self.dropped(n, "over receipts.max_pending", oldest.as_deref());
        }
        Ok(())
    }

    fn dropped(&mut self, n: u64, why: &str, oldest: Option<&str>) {
        self.counters
            .receipts_dropped
            .fetch_add(n, Ordering::Relaxed);
        self.dropped_unwarned += n;
        let due = self
            .last_drop_warn
            .is_none_or(|at| at.elapsed() >= DROP_WARN_EVERY);
        if due {
            events::receipts_dropped(self.dropped_unwarned, why, oldest.unwrap_or(""));
            self.dropped_unwarned = 0;
            self.last_drop_warn = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alertbridge_wal::{OutboxDead, Reply};

    fn cfg(topic: &str) -> ReceiptsConfig {
        ReceiptsConfig {
            topic: topic.to_owned(),
            topic_pattern: "plant/{site}/alerts/{device}".to_owned(),
            retain: true,
            max_pending: 10,
            max_age: Duration::from_secs(60),
        }
    }

    fn entry(topic: &str, state: ReceiptState) -> OutboxEntry {
        OutboxEntry {
            alert_id: "A-1".into(),
            topic: topic.into(),
            state,
            at_ms: 2_500,
            received_at_ms: 1_000,
            attempts: 1,
            status: Some(202),
            execution_id: Some("exec-9".into()),
            correlation_id: Some("corr-9".into()),
            dead: None,
            reply: None,
        }
    }

    fn key(seq: u64) -> Key {
        Key {
            priority: alertbridge_wal::LANE_OUTBOX,
            seq,
        }
    }

    #[test]
    fn a_device_name_can_never_add_a_level_or_a_wildcard_to_the_topic() {
        assert_eq!(sanitise_level("a/b"), "a_b");
        assert_eq!(sanitise_level("+"), "_");
        assert_eq!(sanitise_level("#"), "_");
        assert_eq!(sanitise_level("$SYS"), "_SYS");
        assert_eq!(sanitise_level(""), UNKNOWN);
        let long = "é".repeat(300);
        let cut = sanitise_level(&long);
        assert!(cut.len() <= LEVEL_MAX && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_topic_takes_the_placeholders_of_the_alerts_topic() {
        let c = cfg("alertbridge/receipts/{site}/{device}");
        let t = Template::parse(&c.topic).expect("valid");
        let e = entry("plant/berlin/alerts/pump-7", ReceiptState::Delivered);
        let out = outgoing(&c, &t, "gw1", key(7), &e);
        assert_eq!(out.topic, "alertbridge/receipts/berlin/pump-7");
        assert!(out.retain);
        let hostile = entry("plant/berlin/alerts/$x", ReceiptState::Delivered);
        assert_eq!(
            outgoing(&c, &t, "gw1", key(7), &hostile).topic,
            "alertbridge/receipts/berlin/_x"
        );
        let other = entry("elsewhere/p1", ReceiptState::Delivered);
        assert_eq!(
            outgoing(&c, &t, "gw1", key(7), &other).topic,
            "alertbridge/receipts/_unknown/_unknown"
        );
    }

    #[test]
    fn an_mqtt5_reply_topic_replaces_the_template_and_is_never_retained() {
        let c = cfg("alertbridge/receipts/{device}");
        let t = Template::parse(&c.topic).expect("valid");
        let mut e = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
        e.reply = Some(Reply {
            topic: "hmi/answers/7".into(),
            correlation: Some(vec![1, 2]),
        });
        let out = outgoing(&c, &t, "gw1", key(1), &e);
        assert_eq!((out.topic.as_str(), out.retain), ("hmi/answers/7", false));
    }

    #[test]
    fn the_payload_says_state_ids_latency_and_the_dead_letter() {
        let e = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&e, key(42), "gw1", Some("p7"))).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["receipt_id"], "gw1/42");
        assert_eq!(v["state"], "delivered");
        assert_eq!(v["latency_ms"], 1_500);
        assert_eq!(v["device"], "p7");
        assert_eq!(v["genesys"]["execution_id"], "exec-9");
        assert!(v["dead_letter"].is_null());
        let mut d = entry("plant/berlin/alerts/p7", ReceiptState::Expired);
        d.dead = Some(OutboxDead {
            id: 3,
            kind: alertbridge_wal::DeadKind::Expired,
            reason: "ttl".into(),
            api_message: None,
        });
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&d, key(43), "gw1", None)).expect("json");
        assert_eq!(v["state"], "expired");
        assert_eq!(v["dead_letter"]["kind"], "expired");
        assert_eq!(v["dead_letter"]["id"], 3);
        assert!(v["genesys"].is_null());
    }

    #[test]
    fn templates_with_wildcards_or_broken_placeholders_are_refused() {
        for bad in [
            "", "$SYS/x", "a/+/b", "a/#", "a/{dev", "a/dev}", "a/{}", "a/{d-x}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
        let t = Template::parse("r/{client_id}/x-{device}").expect("valid");
        assert_eq!(t.as_filter(), "r/+/+");
        assert_eq!(
            t.placeholders().collect::<Vec<_>>(),
            ["client_id", "device"]
        );
    }

    const MINIMAL: &str = r#"
[genesys]
region = "mypurecloud.ie"
client_id = "abc"
client_secret_file = "/run/credentials/alertbridge/genesys"
flow_id = "f-1"

[mqtt]
topics = ["plant/+/alerts/+"]

[mapping]
topic_pattern = "plant/{site}/alerts/{device}"
"#;

    fn parse(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::parse(
            &format!("{MINIMAL}\n{extra}"),
            std::path::Path::new("test.toml"),
        )
    }

    #[test]
    fn receipts_are_off_without_a_section_and_the_log_keeps_no_outbox() {
        let c = parse("").expect("valid");
        assert!(c.receipts.is_none());
        assert!(!c.store.wal.outbox);
    }

    #[test]
    fn an_empty_receipts_section_turns_them_on_with_the_documented_defaults() {
        let c = parse("[receipts]\n").expect("valid");
        let r = c.receipts.expect("on");
        assert_eq!(r.topic, crate::config::DEFAULT_RECEIPTS_TOPIC);
        assert_eq!((r.retain, r.max_pending), (false, 50_000));
        assert_eq!(r.max_age, Duration::from_secs(86_400));
        assert!(c.store.wal.outbox);
    }

    #[test]
    fn a_receipt_topic_an_ingest_filter_matches_is_refused() {
        for topic in ["plant/x/alerts/{device}", "plant/{site}/alerts/{device}"] {
            let err = parse(&format!("[receipts]\ntopic = \"{topic}\"\n"))
                .expect_err("a loop must be refused");
            assert!(err.to_string().contains("receipts.topic"), "{err}");
        }
    }

    #[test]
    fn a_receipt_topic_naming_an_unknown_placeholder_is_refused() {
        let err = parse("[receipts]\ntopic = \"r/{line}\"\n").expect_err("unknown");
        assert!(err.to_string().contains("receipts.topic"), "{err}");
    }

    /// A log with the outbox on and `n` delivered alerts (receipts queued), delivered at
    /// `at_ms(i)`.
    fn queued(n: usize, at_ms: impl Fn(usize) -> u64) -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(alertbridge_wal::WalConfig {
            outbox: true,
            ..alertbridge_wal::WalConfig::new(dir.path().join("wal"))
        })
        .expect("log opens");
        for i in 0..n {
            let record = alertbridge_wal::Record::new(
                format!("a-{i}"),
                "plant/north/alerts/p1",
                b"{}".to_vec(),
                alertbridge_wal::PRIORITY_NORMAL,
                1,
            );
            let out = wal
                .append_batch(vec![alertbridge_wal::Entry::Pending(record.clone())])
                .expect("append")
                .into_inner();
            let Some(alertbridge_wal::Appended::Pending(k)) = out.first().cloned() else {
                panic!("appended: {out:?}");
            };
            let mut e = entry(&record.topic, ReceiptState::Delivered);
            e.alert_id = record.alert_id.clone();
            e.at_ms = at_ms(i);
            let receipt = alertbridge_wal::Receipt {
                alert_id: record.alert_id.clone(),
                seq: k.seq,
                delivered_at_ms: e.at_ms,
                status: 202,
                execution_id: None,
                correlation_id: None,
                attempts: 1,
                received_at_ms: 1,
            };
            wal.remove_and_queue(k, receipt, &e).expect("queue");
        }
        (dir, wal)
    }

    fn publisher(wal: &Wal, max_pending: u64) -> Publisher {
        let c = ReceiptsConfig {
            max_pending,
            ..cfg("alertbridge/receipts/{device}")
        };
        Publisher {
            template: Template::parse(&c.topic).expect("valid"),
            cfg: c,
            client_id: "gw1".into(),
            wal: wal.clone(),
            counters: Arc::new(Counters::default()),
            dropped_unwarned: 0,
            last_drop_warn: None,
        }
    }

    fn left(wal: &Wal) -> Vec<String> {
        let mut c = wal.outbox_cursor();
        wal.read_outbox(&mut c, 1000)
            .expect("read")
            .into_iter()
            .map(|i| i.expect("decodable").1.alert_id)
            .collect()
    }

    #[tokio::test]
    async fn over_max_pending_the_oldest_receipts_are_dropped_and_counted() {
        let now = crate::clock::now_ms();
        let (_dir, wal) = queued(30, |_| now);
        let mut p = publisher(&wal, 10);
        p.keep_bound().await.expect("bound kept");
        let want: Vec<String> = (20..30).map(|i| format!("a-{i}")).collect();
        assert_eq!(left(&wal), want, "the newest stay");
        assert_eq!(p.counters.receipts_dropped.load(Ordering::Relaxed), 20);
        assert_eq!(wal.stats().expect("stats").pending, 0, "alerts untouched");
    }

    #[tokio::test]
    async fn receipts_older_than_max_age_are_dropped_and_the_rest_handed_to_the_client() {
        let now = crate::clock::now_ms();
        // cfg(): max_age 60 s. The first three are two minutes old.
        let (_dir, wal) = queued(5, |i| if i < 3 { now - 120_000 } else { now });
        let mut p = publisher(&wal, 100);
        let (client, _eventloop) =
            AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 128);
        let mut cursor = wal.outbox_cursor();
        let mut handed = VecDeque::new();
        let mut done = Vec::new();
        p.turn(
            &client,
            &mut cursor,
            &mut handed,
            &HashMap::new(),
            &mut done,
            true,
        )
        .await
        .expect("turn");
        assert_eq!(handed.len(), 2, "the two young ones are published");
        assert_eq!(p.counters.receipts_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(
            left(&wal),
            ["a-3", "a-4"],
            "handed ones wait for their PUBACK"
        );
    }

    #[test]
    fn overlapping_filters_are_found() {
        assert!(overlaps("alertbridge/receipts/+", "alertbridge/#"));
        assert!(overlaps("alertbridge/receipts/+", "#"));
        assert!(overlaps("alertbridge/receipts/+", "+/receipts/x"));
        assert!(!overlaps("alertbridge/receipts/+", "plant/+/alerts/+"));
        assert!(!overlaps("alertbridge/receipts/+", "alertbridge/receipts"));
        assert!(overlaps("a/b", "a/b/#"));
    }
}
