//! Prometheus metrics, served as `GET /metrics` on the admin listener in the Prometheus text
//! format (0.0.4), encoded by `prometheus-client` (see docs/decisions.md for why that crate).
//!
//! Where each number comes from, so that logs, `status` and metrics never disagree (**O1**):
//! - counters without labels are the [`Counters`] atomics that `events/` bumps next to the
//!   log line, read at scrape time;
//! - labelled counters and histograms live in [`Metrics`] (a field of [`Counters`]) and are
//!   recorded by the same `emit` that writes the log line;
//! - gauges (pending by lane, oldest pending age, store and dead-letter bytes, breaker, pause,
//!   broker, subscriptions, backpressure, rate) are read at scrape time from the log's stats and
//!   the counters' state, never pushed, so they cannot go stale.
//!
//! Every metric is listed in docs/operations.md ("Metrics"); an e2e test checks each listed name
//! is in a real agent's `/metrics`. Nothing here carries an alert id, a topic, a token or a
//! secret: labels take a few fixed values each (invariant I6, bounded cardinality).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use alertbridge_genesys::{GenesysClient, TokenStats};
use alertbridge_wal::{DeadKind, Priority, WalStats, PRIORITY_CRITICAL};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::events::{BreakerView, Counters, Snapshot};

/// The `Content-Type` of `GET /metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One label, a fixed name and one of a few fixed values.
type Label = [(&'static str, &'static str); 1];

/// A histogram family built with the buckets of its metric.
type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

/// The lanes, as the `lane` label names them.
const LANES: [&str; 2] = ["critical", "normal"];

/// `retried` reasons (the `reason` label of `alertbridge_deliveries_retried_total`).
const RETRY_REASONS: [&str; 6] = ["5xx", "timeout", "connect", "429", "401", "other"];

/// `duplicates` reasons.
const DUPLICATE_REASONS: [&str; 2] = ["redelivery", "retained"];

/// Status classes of a Genesys answer (`transport`: no answer: timeout, connect, TLS).
const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "transport"];

/// Dead-letter kinds, as the `kind` label names them.
const DEAD_KINDS: [DeadKind; 7] = [
    DeadKind::Rejected,
    DeadKind::Malformed,
    DeadKind::Expired,
    DeadKind::Corrupt,
    DeadKind::Oversize,
    DeadKind::Exhausted,
    DeadKind::Unconfirmed,
];

/// The lane label of a priority (anything but critical is the normal lane).
pub fn lane_name(priority: Priority) -> &'static str {
    if priority == PRIORITY_CRITICAL {
        "critical"
    } else {
        "normal"
    }
}

/// The `kind` label of a dead-letter kind.
pub fn kind_name(kind: DeadKind) -> &'static str {
    kind.name()
}

/// Why a delivery is retried, as a label: the HTTP status class when the API answered, else
/// `timeout` or `connect` (no answer: refused, reset, DNS, TLS, token endpoint unreachable).
pub fn retry_reason(status: Option<u16>, timed_out: bool) -> &'static str {
    match status {
        Some(429) => "429",
        Some(401) => "401",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None if timed_out => "timeout",
        None => "connect",
    }
}

/// The status class of a Genesys answer (`transport` when there was none).
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        // 1xx never ends a request; anything else is not HTTP
        Some(_) | None => "transport",
    }
}

/// The `reason` label of a delivery pause: the HTTP status that caused it (`http_404`), or
/// `configuration` when no answer did (an unreadable secret, a token endpoint fault).
pub fn pause_reason(status: Option<u16>) -> String {
    match status {
        Some(s) => format!("http_{s}"),
        None => "configuration".into(),
    }
}

fn histogram_family(make: fn() -> Histogram) -> HistogramFamily {
    Family::new_with_constructor(make)
}

/// Flush + fsync of one group commit: 0.25 ms .. 8 s.
fn fsync_histogram() -> Histogram {
    Histogram::new([
        0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 8.0,
    ])
}

/// Receive → PUBACK queued: 1 ms .. 30 s (a held budget or a full disk waits longer).
fn ack_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Receive → 2xx: 10 ms .. a day (an outage keeps alerts for hours, and that is the point).
fn delivery_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        14400.0, 86400.0,
    ])
}

/// One Genesys request, sent → answer taken up by the drain: 5 ms .. 60 s (the request timeout
/// may double).
fn request_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// The labelled counters and histograms, recorded by the events in `events/`, and the few
/// facts the scrape needs that are fixed at start (the store budgets, the Genesys client for
/// its token counts). Cheap to record: each is an atomic add behind a read lock.
#[derive(Debug)]
pub struct Metrics {
    delivered: Family<Label, Counter>,
    retried: Family<Label, Counter>,
    dead_lettered: Family<Label, Counter>,
    duplicates: Family<Label, Counter>,
    fsync: Histogram,
    ack_latency: Histogram,
    delivery_latency: HistogramFamily,
    request_latency: HistogramFamily,
    /// `store.max_bytes` (0 = not attached: a test's counters).
    store_max_bytes: AtomicU64,
    /// `store.dead_letters_max_bytes`.
    dead_max_bytes: AtomicU64,
    /// The agent's Genesys client: its token cache counts fetches and failures.
    tokens: OnceLock<GenesysClient>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            duplicates: Family::default(),
            fsync: fsync_histogram(),
            ack_latency: ack_histogram(),
            delivery_latency: histogram_family(delivery_histogram),
            request_latency: histogram_family(request_histogram),
            store_max_bytes: AtomicU64::new(0),
            dead_max_bytes: AtomicU64::new(0),
            tokens: OnceLock::new(),
        };
        // Every label value exists from the start at 0, so `rate()` and `increase()` see the
        // first event instead of a series appearing out of nothing.
        for lane in LANES {
            let _ = m.delivered.get_or_create(&[("lane", lane)]);
            let _ = m.delivery_latency.get_or_create(&[("lane", lane)]);
        }
        for r in RETRY_REASONS {
            let _ = m.retried.get_or_create(&[("reason", r)]);
        }
        for k in DEAD_KINDS {
            let _ = m.dead_lettered.get_or_create(&[("kind", kind_name(k))]);
        }
        for r in DUPLICATE_REASONS {
            let _ = m.duplicates.get_or_create(&[("reason", r)]);
        }
        for c in STATUS_CLASSES {
            let _ = m.request_latency.get_or_create(&[("status_class", c)]);
        }
        m
    }
}

impl Metrics {
    /// An alert accepted by Genesys, `latency` after ingest received it.
    pub(crate) fn delivered(&self, priority: Priority, latency: Duration) {
        let lane = [("lane", lane_name(priority))];
        self.delivered.get_or_create(&lane).inc();
        self.delivery_latency
            .get_or_create(&lane)
            .observe(latency.as_secs_f64());
    }

    /// A retryable failure.
    pub(crate) fn retried(&self, status: Option<u16>, timed_out: bool) {
        self.retried
            .get_or_create(&[("reason", retry_reason(status, timed_out))])
            .inc();
    }

    /// An alert or payload moved to dead letters.
    pub(crate) fn dead_lettered(&self, kind: DeadKind) {
        self.dead_lettered
            .get_or_create(&[("kind", kind_name(kind))])
            .inc();
    }

    /// A duplicate recognised (acked, not stored again).
    pub(crate) fn duplicate(&self, retained: bool) {
        let reason = if retained { "retained" } else { "redelivery" };
        self.duplicates.get_or_create(&[("reason", reason)]).inc();
    }

    /// One group commit's flush + fsync.
    pub(crate) fn group_commit(&self, took: Duration) {
        self.fsync.observe(took.as_secs_f64());
    }

    /// One PUBACK queued, `waited` after its publish was received.
    pub(crate) fn acked(&self, waited: Duration) {
        self.ack_latency.observe(waited.as_secs_f64());
    }

    /// One Genesys request answered (or failed without an answer) after `took`.
    pub(crate) fn request(&self, status: Option<u16>, took: Duration) {
        self.request_latency
            .get_or_create(&[("status_class", status_class(status))])
            .observe(took.as_secs_f64());
    }
}

/// Give the scrape what is fixed at start: the store budgets (for "store near budget") and the
/// Genesys client (its token cache counts fetches and failures). Called once by `run`.
pub fn attach(counters: &Counters, config: &crate::Config, client: &GenesysClient) {
    let m = &counters.metrics;
    m.store_max_bytes
        .store(config.store.max_bytes, Ordering::Relaxed);
    m.dead_max_bytes
        .store(config.store.wal.dead_max_bytes, Ordering::Relaxed);
    let _ = m.tokens.set(client.clone());
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, g),
        None => registry.register(name, help, g),
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `/metrics` text: `stats` read from the log just now (`None` if the read failed: the log
/// gauges are left out, the rest still served), `now_ms` the wall clock for the oldest age.
pub fn render(counters: &Counters, stats: Option<&WalStats>, now_ms: u64) -> String {
    let s = counters.snapshot();
    let m = &counters.metrics;
    let tokens = m
        .tokens
        .get()
        .map(GenesysClient::token_stats)
        .unwrap_or(TokenStats {
            fetches: 0,
            failures: 0,
            reauthentications: 0,
            last_expires_in: None,
        });
    let mut r = Registry::default();
    register_counters(&mut r, &s, m, &tokens);
    register_histograms(&mut r, m);
    register_state(&mut r, counters, &s);
    if let Some(st) = stats {
        register_log(&mut r, st, m, now_ms);
    }
    let mut out = String::new();
    // Writing into a String cannot fail; an error here would be a bug in the encoder.
    if prometheus_text::encode(&mut out, &r).is_err() {
        tracing::error!("encoding /metrics failed");
    }
    out
}

fn register_counters(r: &mut Registry, s: &Snapshot, m: &Metrics, tokens: &TokenStats) {
    counter(
        r,
        "alertbridge_alerts_received",
        "MQTT PUBLISH packets received from the broker (redeliveries included)",
        s.received,
    );
    counter(
        r,
        "alertbridge_alerts_persisted",
        "Alerts made durable in the pending log (group commit fsynced)",
        s.persisted,
    );
    counter(
        r,
        "alertbridge_alerts_acked",
        "PUBACKs queued to the broker, each after its publish was durable",
        s.acked,
    );
    counter(
        r,
        "alertbridge_acks_withheld",
        "Acks withheld for publishes of an earlier connection (the broker redelivers them)",
        s.stale_acks_skipped,
    );
    r.register(
        "alertbridge_duplicates_recognised",
        "Redeliveries recognised by the duplicate window: acked, not stored again, by reason",
        m.duplicates.clone(),
    );
    counter(
        r,
        "alertbridge_batches_committed",
        "Group commits (one write and one fsync each)",
        s.batches,
    );
    r.register(
        "alertbridge_alerts_delivered",
        "Alerts accepted by Genesys (2xx), by lane",
        m.delivered.clone(),
    );
    r.register(
        "alertbridge_deliveries_retried",
        "Retryable delivery failures (each schedules another attempt), by reason",
        m.retried.clone(),
    );
    r.register(
        "alertbridge_alerts_dead_lettered",
        "Alerts and payloads moved to dead letters, by kind",
        m.dead_lettered.clone(),
    );
    counter(
        r,
        "alertbridge_alerts_expired",
        "Alerts dead-lettered because their TTL passed before delivery",
        s.expired,
    );
    counter(
        r,
        "alertbridge_requests_throttled",
        "429 answers from the API or the token endpoint",
        s.throttled,
    );
    counter(
        r,
        "alertbridge_delivery_pauses",
        "Times delivery went into a pause (configuration fault or a run of identical rejections)",
        s.pauses,
    );
    counter(
        r,
        "alertbridge_tokens_fetched",
        "Token requests sent to the login endpoint",
        tokens.fetches,
    );
    counter(
        r,
        "alertbridge_token_fetches_failed",
        "Token fetches that produced no token (rejected, unreachable, unreadable secret)",
        tokens.failures,
    );
    counter(
        r,
        "alertbridge_subscriptions_refused",
        "Subscription grants refused or downgraded to QoS 0 by the broker, retries included",
        s.subscription_errors,
    );
    counter(
        r,
        "alertbridge_mqtt_sessions_lost",
        "CONNACKs without a session although a session of ours held a subscription on the broker before: alerts published while alertbridge was away may be gone at the broker",
        s.sessions_lost,
    );
    counter(
        r,
        "alertbridge_delivery_tasks_failed",
        "Delivery tasks that failed to join; their alerts were queued again (a bug if not 0)",
        s.tasks_failed,
    );
    counter(
        r,
        "alertbridge_drain_repairs",
        "Times the drain found pending alerts it had lost track of (a bug if not 0)",
        s.drain_repairs,
    );
    counter(
        r,
        "alertbridge_receipts_published",
        "Delivery receipts published to MQTT and acknowledged by the broker",
        s.receipts_published,
    );
    counter(
        r,
        "alertbridge_receipts_dropped",
        "Delivery receipts dropped unpublished: by the outbox bound (receipts.max_pending, receipts.max_age_secs) or refused by the broker (MQTT 5 PUBACK reason code)",
        s.receipts_dropped,
    );
    counter(
        r,
        "alertbridge_receipts_response_topic_refused",
        "MQTT 5 response topics refused for a delivery receipt (an ingest filter matches, or not a topic name)",
        s.receipts_reply_refused,
    );
}

fn register_histograms(r: &mut Registry, m: &Metrics) {
    r.register_with_unit(
        "alertbridge_fsync_duration",
        "Write + fsync of one group commit",
        Unit::Seconds,
        m.fsync.clone(),
    );
    r.register_with_unit(
        "alertbridge_ack_latency",
        "Publish received to its PUBACK queued",
        Unit::Seconds,
        m.ack_latency.clone(),
    );
    r.register_with_unit(
        "alertbridge_delivery_latency",
        "Publish received to its 2xx from Genesys, by lane",
        Unit::Seconds,
        m.delivery_latency.clone(),
    );
    r.register_with_unit(
        "alertbridge_genesys_request_duration",
        "One Genesys delivery request, sent to its answer taken up by the drain, by status class (transport: no answer)",
        Unit::Seconds,
        m.request_latency.clone(),
    );
}

fn register_state(r: &mut Registry, counters: &Counters, s: &Snapshot) {
    let breaker: Family<Label, Gauge> = Family::default();
    for (state, view) in [
        ("closed", BreakerView::Closed),
        ("open", BreakerView::Open),
        ("half_open", BreakerView::HalfOpen),
    ] {
        breaker
            .get_or_create(&[("state", state)])
            .set(flag(s.breaker == view));
    }
    r.register(
        "alertbridge_breaker_state",
        "Circuit breaker state: 1 for the current one",
        breaker,
    );
    let paused: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    let reason = if s.paused {
        counters
            .pause_label()
            .unwrap_or_else(|| "configuration".to_string())
    } else {
        "none".to_string()
    };
    paused
        .get_or_create(&vec![("reason", reason)])
        .set(flag(s.paused));
    r.register(
        "alertbridge_delivery_paused",
        "1 while delivery is paused by a configuration fault, with its reason (http_<status> or configuration)",
        paused,
    );
    let rate: Gauge<f64, AtomicU64> = Gauge::default();
    rate.set(s.rate_per_sec);
    r.register(
        "alertbridge_delivery_rate_per_second",
        "Delivery rate in force now (lowered after 429s, recovering to delivery.rate_per_sec)",
        rate,
    );
    gauge(
        r,
        "alertbridge_broker_connected",
        "1 while connected to the MQTT broker",
        None,
        flag(s.connected),
    );
    gauge(
        r,
        "alertbridge_receipts_connected",
        "1 while the receipts publisher is connected to the MQTT broker",
        None,
        flag(s.receipts_connected),
    );
    gauge(
        r,
        "alertbridge_subscriptions_held",
        "Topic filters held at QoS 1 on the broker's session",
        None,
        clamp(s.subscriptions_held),
    );
    gauge(
        r,
        "alertbridge_subscriptions_wanted",
        "Topic filters configured (mqtt.topics)",
        None,
        clamp(s.subscriptions_wanted),
    );
    gauge(
        r,
        "alertbridge_backpressure_active",
        "1 while ingest is held by the disk budget (no acks: the broker keeps new alerts)",
        None,
        flag(s.backpressure),
    );
    let info: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
        .set(1);
    r.register("alertbridge_build_info", "alertbridge version", info);
}

fn register_log(r: &mut Registry, st: &WalStats, m: &Metrics, now_ms: u64) {
    let pending: Family<Label, Gauge> = Family::default();
    pending
        .get_or_create(&[("lane", "critical")])
        .set(clamp(st.pending_critical));
    pending
        .get_or_create(&[("lane", "normal")])
        .set(clamp(st.pending.saturating_sub(st.pending_critical)));
    r.register(
        "alertbridge_alerts_pending",
        "Alerts waiting for delivery in the log, by lane",
        pending,
    );
    let age = st
        .oldest_pending_received_ms
        .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0)
        .unwrap_or(0.0);
    let oldest: Gauge<f64, AtomicU64> = Gauge::default();
    oldest.set(age);
    r.register_with_unit(
        "alertbridge_oldest_pending_age",
        "Age of the oldest pending alert (0 when none is pending)",
        Unit::Seconds,
        oldest,
    );
    gauge(
        r,
        "alertbridge_dead_letters",
        "Dead letters stored",
        None,
        clamp(st.dead_letters),
    );
    gauge(
        r,
        "alertbridge_receipts_pending",
        "Delivery receipts waiting in the log to be published",
        None,
        clamp(st.outbox_pending),
    );
    gauge(
        r,
        "alertbridge_dead_letters",
        "Bytes of the dead letters stored (bounded by store.dead_letters_max_bytes)",
        Some(Unit::Bytes),
        clamp(st.dead_bytes),
    );
    gauge(
        r,
        "alertbridge_dead_letters_max",
        "store.dead_letters_max_bytes",
        Some(Unit::Bytes),
        clamp(m.dead_max_bytes.load(Ordering::Relaxed)),
    );
    gauge(
        r,
        "alertbridge_store_data",
        "Bytes of the files holding undelivered data (segments, dead letters): what store.max_bytes bounds",
        Some(Unit::Bytes),
        clamp(st.data_bytes),
    );
    gauge(
        r,
        "alertbridge_store_file",
        "Bytes of every file of the store (data, receipts, checkpoint)",
        Some(Unit::Bytes),
        clamp(st.size_on_disk),
    );
    gauge(
        r,
        "alertbridge_store_max",
        "store.max_bytes: the disk budget (ingest holds back at it)",
        Some(Unit::Bytes),
        clamp(m.store_max_bytes.load(Ordering::Relaxed)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_take_only_fixed_values() {
        assert_eq!(retry_reason(Some(503), false), "5xx");
        assert_eq!(retry_reason(Some(429), false), "429");
        assert_eq!(retry_reason(Some(401), false), "401");
        assert_eq!(retry_reason(Some(408), false), "other");
        assert_eq!(retry_reason(None, true), "timeout");
        assert_eq!(retry_reason(None, false), "connect");
        assert_eq!(status_class(Some(202)), "2xx");
        assert_eq!(status_class(Some(404)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "transport");
        assert_eq!(lane_name(PRIORITY_CRITICAL), "critical");
        assert_eq!(lane_name(alertbridge_wal::PRIORITY_NORMAL), "normal");
        assert_eq!(pause_reason(Some(404)), "http_404");
        assert_eq!(pause_reason(None), "configuration");
        for k in DEAD_KINDS {
            assert!(!kind_name(k).is_empty());
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn render_shows_counters_histograms_and_log_gauges_in_prometheus_text() {
        let c = Counters::default();
        crate::events::BatchPersisted {
            persisted: 2,
            duplicates: 0,
            dead_lettered: 0,
            took: Duration::from_millis(3),
        }
        .emit(&c);
        c.metrics
            .delivered(alertbridge_wal::PRIORITY_NORMAL, Duration::from_millis(40));
        c.metrics.retried(Some(503), false);
        c.metrics.request(None, Duration::from_secs(3));
        crate::events::SessionLost {
            broker: "127.0.0.1:1883",
            client_id: "gw1",
            known_from: "test",
            disconnected_for: None,
            session_expiry_secs: None,
        }
        .emit(&c);
        let stats = WalStats {
            pending: 5,
            pending_critical: 2,
            dead_letters: 1,
            delivered_kept: 0,
            oldest_pending_received_ms: Some(10_000),
            data_bytes: 4096,
            size_on_disk: 8192,
            dead_bytes: 100,
            outbox_pending: 0,
        };
        let text = render(&c, Some(&stats), 70_000);
        for (series, want) in [
            ("alertbridge_alerts_persisted_total", 2.0),
            ("alertbridge_batches_committed_total", 1.0),
            ("alertbridge_alerts_delivered_total{lane=\"normal\"}", 1.0),
            ("alertbridge_alerts_delivered_total{lane=\"critical\"}", 0.0),
            ("alertbridge_deliveries_retried_total{reason=\"5xx\"}", 1.0),
            ("alertbridge_fsync_duration_seconds_count", 1.0),
            (
                "alertbridge_delivery_latency_seconds_count{lane=\"normal\"}",
                1.0,
            ),
            (
                "alertbridge_genesys_request_duration_seconds_count{status_class=\"transport\"}",
                1.0,
            ),
            ("alertbridge_alerts_pending{lane=\"critical\"}", 2.0),
            ("alertbridge_alerts_pending{lane=\"normal\"}", 3.0),
            ("alertbridge_oldest_pending_age_seconds", 60.0),
            ("alertbridge_dead_letters", 1.0),
            ("alertbridge_dead_letters_bytes", 100.0),
            ("alertbridge_store_data_bytes", 4096.0),
            ("alertbridge_breaker_state{state=\"closed\"}", 1.0),
            ("alertbridge_delivery_paused{reason=\"none\"}", 0.0),
            ("alertbridge_broker_connected", 0.0),
            ("alertbridge_mqtt_sessions_lost_total", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(
            text.contains("# TYPE alertbridge_ack_latency_seconds histogram"),
            "{text}"
        );
        let without_log = render(&c, None, 70_000);
        assert!(!without_log.contains("alertbridge_alerts_pending"));
        assert!(without_log.contains("alertbridge_alerts_persisted_total 2"));
    }
}
