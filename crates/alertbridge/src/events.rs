//! What each stage did: one typed event per happening. **O1**: `emit` writes the tracing line,
//! bumps the counter and records the Prometheus metric (`crate::metrics`) together, so logs,
//! `status`, the demo's progress and `/metrics` can never disagree. There is no "dropped" event: nothing
//! is dropped.
//!
//! One info line per delivered alert (alert id, execution id, latency) is what an operator
//! reads in the journal; under a burst they are rate-limited ([`DELIVERED_LINES_PER_SEC`]) and
//! the rest are summed into one summary line per second (flushed by [`drain_turned`] when the
//! burst ends), so a backlog draining at hundreds per second does not flood the journal.
//! Counters and metrics always count every alert.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Counters shared by every stage (cheap atomics; read by status, demo, metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// PUBLISH packets received from the broker (including redeliveries).
    pub received: AtomicU64,
    /// Alerts made durable in the pending log.
    pub persisted: AtomicU64,
    /// Redeliveries recognised by the duplicate window (acked, not stored again).
    pub duplicates: AtomicU64,
    /// PUBACKs queued to the broker.
    pub acked: AtomicU64,
    /// Acks withheld because the publish came from an earlier connection (the broker redelivers).
    pub stale_acks_skipped: AtomicU64,
    /// Group commits.
    pub batches: AtomicU64,
    /// Alerts accepted by Genesys.
    pub delivered: AtomicU64,
    /// Retryable failures (each schedules another attempt).
    pub retried: AtomicU64,
    /// Alerts moved to dead letters (any reason).
    pub dead_lettered: AtomicU64,
    /// Of those, expired by TTL.
    pub expired: AtomicU64,
    /// Of those, `Unconfirmed`: unanswered within the timeout `max_timeouts` times.
    pub unconfirmed: AtomicU64,
    /// Delivery paused by a configuration fault.
    pub paused: AtomicBool,
    /// Unix ms of the drain loop's latest turn (liveness, `/health`).
    pub drain_tick_ms: AtomicU64,
    /// Unix ms of the MQTT connection loop's latest turn (liveness, `/health`).
    pub mqtt_tick_ms: AtomicU64,
    /// Times delivery went into a pause (configuration fault or a run of identical rejections).
    pub pauses: AtomicU64,
    /// Breaker open or half-open (held by failures; a pause shows in `paused`).
    pub breaker_open: AtomicBool,
    /// [`BreakerView`] as a number (see [`BreakerView::from_u8`]).
    pub breaker_state: AtomicU8,
    /// 429 answers (API or token endpoint).
    pub throttled: AtomicU64,
    /// Current (AIMD) delivery rate in thousandths of a request per second.
    pub rate_millis: AtomicU64,
    /// Ingest held back by the disk budget.
    pub backpressure: AtomicBool,
    /// Broker connection up.
    pub connected: AtomicBool,
    /// Wall-clock jumps the drain saw (scheduling is monotonic: logged, harmless).
    pub clock_jumps: AtomicU64,
    /// Delivery tasks that failed to join (panic, abort); their alerts were queued again.
    pub tasks_failed: AtomicU64,
    /// Times the drain's reconcile found it had lost track of pending alerts and repaired it.
    pub drain_repairs: AtomicU64,
    /// Topic filters configured (`mqtt.topics`): ingest is ready only when it holds them all.
    pub subscriptions_wanted: AtomicU64,
    /// Of those, granted QoS ≥ 1 by a SUBACK seen in this process, on the broker's current
    /// session (kept while disconnected: the persistent session keeps them).
    pub subscriptions_held: AtomicU64,
    /// Grants refused (0x80) or downgraded (QoS 0) since start, retries included.
    pub subscription_errors: AtomicU64,
    /// The labelled counters and histograms of `/metrics` (recorded here, by the events).
    pub metrics: crate::metrics::Metrics,
    latencies_ms: Mutex<Vec<u32>>,
    /// Rate limit of the per-delivery info line.
    delivered_lines: Mutex<LineBudget>,
    /// What is wrong with the subscriptions now (refused / downgraded filters, a missing
    /// SUBACK); `None` when nothing is.
    subscription_error: Mutex<Option<String>>,
    last_pause_reason: Mutex<Option<String>>,
    /// The pause's `reason` label on `/metrics` (`http_<status>` or `configuration`).
    pause_label: Mutex<Option<String>>,
}

/// Most latency samples kept (the demo's report); older samples are not replaced.
const MAX_LATENCY_SAMPLES: usize = 1_000_000;

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Snapshot for status and the demo.
    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            received: g(&self.received),
            persisted: g(&self.persisted),
            duplicates: g(&self.duplicates),
            acked: g(&self.acked),
            stale_acks_skipped: g(&self.stale_acks_skipped),
            batches: g(&self.batches),
            delivered: g(&self.delivered),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            expired: g(&self.expired),
            unconfirmed: g(&self.unconfirmed),
            paused: self.paused.load(Ordering::Relaxed),
            pauses: g(&self.pauses),
            pause_reason: self.last_pause_reason.lock().ok().and_then(|g| g.clone()),
            breaker_open: self.breaker_open.load(Ordering::Relaxed),
            breaker: BreakerView::from_u8(self.breaker_state.load(Ordering::Relaxed)),
            throttled: g(&self.throttled),
            rate_per_sec: g(&self.rate_millis) as f64 / 1000.0,
            backpressure: self.backpressure.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            clock_jumps: g(&self.clock_jumps),
            tasks_failed: g(&self.tasks_failed),
            drain_repairs: g(&self.drain_repairs),
            subscriptions_wanted: g(&self.subscriptions_wanted),
            subscriptions_held: g(&self.subscriptions_held),
            subscription_errors: g(&self.subscription_errors),
            subscription_error: self.subscription_error.lock().ok().and_then(|g| g.clone()),
        }
    }

    /// The `reason` label of the current pause on `/metrics`; `None` when not paused.
    pub fn pause_label(&self) -> Option<String> {
        self.pause_label.lock().ok().and_then(|g| g.clone())
    }

    /// Latency percentiles (received → accepted) over the kept samples, in ms.
    pub fn latency_percentiles(&self, ps: &[f64]) -> Vec<u32> {
        let mut v = match self.latencies_ms.lock() {
            Ok(g) => g.clone(),
            Err(_) => return vec![0; ps.len()],
        };
        if v.is_empty() {
            return vec![0; ps.len()];
        }
        v.sort_unstable();
        ps.iter()
            .map(|p| {
                let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                v[idx.min(v.len() - 1)]
            })
            .collect()
    }
}

/// Circuit breaker state as `status` shows it (a configuration-fault pause shows as `paused`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerView {
    /// Delivering normally.
    #[default]
    Closed,
    /// Holding deliveries after consecutive failures until the cool-down ends.
    Open,
    /// One probe request is out; its answer closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerView {
    /// The stored number → state (unknown numbers read as closed).
    pub fn from_u8(n: u8) -> BreakerView {
        match n {
            1 => BreakerView::Open,
            2 => BreakerView::HalfOpen,
            _ => BreakerView::Closed,
        }
    }

    /// State → the stored number.
    pub fn to_u8(self) -> u8 {
        match self {
            BreakerView::Closed => 0,
            BreakerView::Open => 1,
            BreakerView::HalfOpen => 2,
        }
    }
}

/// Plain copy of the counters. Fields added later default when reading an older agent's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[allow(missing_docs)]
pub struct Snapshot {
    pub received: u64,
    pub persisted: u64,
    pub duplicates: u64,
    pub acked: u64,
    pub stale_acks_skipped: u64,
    pub batches: u64,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    /// Dead letters of kind `Unconfirmed` since start (a slow API, duplicates bounded).
    pub unconfirmed: u64,
    pub paused: bool,
    /// Times delivery went into a pause since start.
    pub pauses: u64,
    pub pause_reason: Option<String>,
    pub breaker_open: bool,
    /// Circuit breaker state.
    pub breaker: BreakerView,
    /// 429 answers since start.
    pub throttled: u64,
    /// Delivery rate in force now (lowered after 429s, recovering to the configured rate).
    pub rate_per_sec: f64,
    pub backpressure: bool,
    pub connected: bool,
    /// Wall-clock jumps over 2 s seen by the drain (NTP after a boot without RTC).
    pub clock_jumps: u64,
    /// Delivery tasks that failed to join; their alerts were queued again (a bug if not 0).
    pub tasks_failed: u64,
    /// Times the drain found pending alerts it had lost track of and repaired it (a bug if
    /// not 0; each logged at error).
    pub drain_repairs: u64,
    /// Topic filters configured.
    pub subscriptions_wanted: u64,
    /// Topic filters held at QoS ≥ 1 (see [`Snapshot::subscribed`]).
    pub subscriptions_held: u64,
    /// Refused or downgraded grants since start.
    pub subscription_errors: u64,
    /// What is wrong with the subscriptions now, with the likely cause.
    pub subscription_error: Option<String>,
}

impl Snapshot {
    /// Ingest holds every configured subscription at QoS ≥ 1: a condition of readiness (with
    /// `connected`); until then alerts published to a missing filter never reach the agent.
    pub fn subscribed(&self) -> bool {
        self.subscriptions_wanted > 0 && self.subscriptions_held >= self.subscriptions_wanted
    }
}

/// A group commit returned: `persisted` new alerts, `duplicates` recognised, `dead_lettered`
/// payloads stored straight into dead letters.
pub struct BatchPersisted {
    /// New pending alerts.
    pub persisted: u64,
    /// Redeliveries.
    pub duplicates: u64,
    /// Rejected payloads.
    pub dead_lettered: u64,
    /// Flush + fsync time.
    pub took: Duration,
}

impl BatchPersisted {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.persisted, self.persisted);
        Counters::add(&c.duplicates, self.duplicates);
        Counters::add(&c.dead_lettered, self.dead_lettered);
        Counters::add(&c.batches, 1);
        c.metrics.group_commit(self.took);
        tracing::debug!(
            persisted = self.persisted,
            duplicates = self.duplicates,
            dead_lettered = self.dead_lettered,
            took_us = self.took.as_micros() as u64,
            "batch durable"
        );
    }
}

/// A redelivered publish (MQTT DUP=1) whose alert was already persisted: acked, not stored again.
pub struct DuplicateDropped<'a> {
    /// Its alert id.
    pub alert_id: &'a str,
    /// The topic it came on (the identity is topic + alert id).
    pub topic: &'a str,
    /// A retained message the broker replayed because we subscribed (RETAIN = 1), rather
    /// than a redelivery (DUP = 1): the `reason` label on `/metrics`.
    pub retained: bool,
}

impl DuplicateDropped<'_> {
    /// Log it and count it by reason (the total is counted by [`BatchPersisted`]).
    pub fn emit(self, c: &Counters) {
        c.metrics.duplicate(self.retained);
        let reason = if self.retained {
            "retained message (RETAIN=1) replayed by the broker, already persisted within store.dedup_window_secs"
        } else {
            "redelivery (MQTT DUP=1) of an alert already persisted within store.dedup_window_secs"
        };
        tracing::info!(
            alert_id = self.alert_id,
            topic = self.topic,
            reason,
            "duplicate acked, not stored again"
        );
    }
}

/// A payload stored straight into dead letters at ingest (not an alert the mapping accepts:
/// malformed, oversize). Logged at warn with what an operator needs to find the sender.
pub struct PayloadDeadLettered<'a> {
    /// Its dead-letter id (`alertbridge dead-letters show <id>`).
    pub dead_letter_id: u64,
    /// The alert id, if the payload had one.
    pub alert_id: &'a str,
    /// The topic it came on.
    pub topic: &'a str,
    /// Its dead-letter kind.
    pub kind: alertbridge_wal::DeadKind,
    /// Why, readable.
    pub reason: &'a str,
}

impl PayloadDeadLettered<'_> {
    /// Log it and count it by kind (the total is counted by [`BatchPersisted`]).
    pub fn emit(self, c: &Counters) {
        c.metrics.dead_lettered(self.kind);
        tracing::warn!(
            dead_letter_id = self.dead_letter_id,
            alert_id = self.alert_id,
            topic = self.topic,
            kind = ?self.kind,
            reason = self.reason,
            "payload dead-lettered at ingest"
        );
    }
}

/// PUBACKs queued after a durable batch.
pub struct Acked<'a> {
    /// Acks queued.
    pub acked: u64,
    /// Withheld: publish from an older connection.
    pub stale: u64,
    /// When each acked publish was received (the ack latency histogram).
    pub received: &'a [Instant],
}

impl Acked<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.acked, self.acked);
        let now = Instant::now();
        for at in self.received {
            c.metrics.acked(now.saturating_duration_since(*at));
        }
        Counters::add(&c.stale_acks_skipped, self.stale);
        if self.stale > 0 {
            tracing::info!(
                stale = self.stale,
                "acks withheld for publishes of a previous connection; the broker redelivers them"
            );
        }
    }
}

/// Genesys accepted an alert.
pub struct AlertDelivered<'a> {
    /// Alert id.
    pub alert_id: &'a str,
    /// Log seq.
    pub seq: u64,
    /// HTTP status.
    pub status: u16,
    /// Execution / invocation id.
    pub execution_id: Option<&'a str>,
    /// Received → accepted.
    pub latency: Duration,
    /// Attempts it took.
    pub attempts: u32,
    /// Its lane (the `lane` label on `/metrics`).
    pub priority: alertbridge_wal::Priority,
}

impl AlertDelivered<'_> {
    /// Record it: info line (rate-limited, see the module doc), counter, latency histogram.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.delivered, 1);
        c.metrics.delivered(self.priority, self.latency);
        if let Ok(mut v) = c.latencies_ms.lock() {
            if v.len() < MAX_LATENCY_SAMPLES {
                v.push(self.latency.as_millis().min(u32::MAX as u128) as u32);
            }
        }
        let verdict = match c.delivered_lines.lock() {
            Ok(mut b) => b.take(Instant::now()),
            // a poisoned budget only costs the rate limit, never the line
            Err(_) => LineVerdict::Log { held_back: None },
        };
        if let LineVerdict::Log {
            held_back: Some((n, over)),
        } = verdict
        {
            log_held_back(n, over);
        }
        match verdict {
            LineVerdict::Log { .. } => tracing::info!(
                alert_id = self.alert_id,
                seq = self.seq,
                status = self.status,
                execution_id = self.execution_id.unwrap_or(""),
                latency_ms = self.latency.as_millis() as u64,
                attempts = self.attempts,
                "delivered"
            ),
            LineVerdict::HeldBack => tracing::debug!(
                alert_id = self.alert_id,
                seq = self.seq,
                status = self.status,
                execution_id = self.execution_id.unwrap_or(""),
                latency_ms = self.latency.as_millis() as u64,
                attempts = self.attempts,
                "delivered"
            ),
        }
    }
}

/// Most "delivered" info lines per second; past it, one summary line counts the rest (written
/// with the first line of a later second, or by the drain's next turn once the second is over).
pub const DELIVERED_LINES_PER_SEC: u32 = 20;

fn log_held_back(alerts: u64, over: Duration) {
    tracing::info!(
        alerts,
        over_ms = over.as_millis() as u64,
        "delivered alerts not logged one by one (more than {DELIVERED_LINES_PER_SEC} per second); counted in status and /metrics"
    );
}

/// The drain loop turned: the liveness tick `/health` reads. Also writes the summary of
/// "delivered" lines held back in a second that is over, so the count of a burst's last second
/// reaches the log within one drain turn (at most 5 s) even when nothing more is delivered.
pub fn drain_turned(c: &Counters) {
    c.drain_tick_ms
        .store(crate::ingest::now_ms(), Ordering::Relaxed);
    let held = c
        .delivered_lines
        .lock()
        .ok()
        .and_then(|mut b| b.flush(Instant::now()));
    if let Some((n, over)) = held {
        log_held_back(n, over);
    }
}

/// The per-second budget of "delivered" info lines: a fixed one-second window.
#[derive(Debug, Default)]
struct LineBudget {
    /// Start of the current window.
    window: Option<Instant>,
    /// Lines logged in it.
    logged: u32,
    /// Lines held back since the last summary, and when the first of them was.
    held_back: u64,
    held_since: Option<Instant>,
}

/// What to do with one "delivered" line.
#[derive(Debug, PartialEq, Eq)]
enum LineVerdict {
    /// Log it at info, after a summary of `held_back` (count, over how long) if some were.
    Log { held_back: Option<(u64, Duration)> },
    /// Over the budget: counted into the next summary (logged at debug only).
    HeldBack,
}

impl LineBudget {
    fn take(&mut self, now: Instant) -> LineVerdict {
        let fresh = self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1));
        if fresh {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged >= DELIVERED_LINES_PER_SEC {
            self.held_back += 1;
            self.held_since.get_or_insert(now);
            return LineVerdict::HeldBack;
        }
        self.logged += 1;
        let held_back = (self.held_back > 0).then(|| {
            let since = self.held_since.take().unwrap_or(now);
            (
                std::mem::take(&mut self.held_back),
                now.saturating_duration_since(since),
            )
        });
        LineVerdict::Log { held_back }
    }

    /// The lines held back in a window that is over (count, over how long), once.
    fn flush(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let over = self
            .window
            .is_some_and(|w| now.saturating_duration_since(w) >= Duration::from_secs(1));
        if !over || self.held_back == 0 {
            return None;
        }
        let since = self.held_since.take().unwrap_or(now);
        Some((
            std::mem::take(&mut self.held_back),
            now.saturating_duration_since(since),
        ))
    }
}

/// A retryable failure; the alert stays in the log.
pub struct DeliveryRetried<'a> {
    /// Alert id.
    pub alert_id: &'a str,
    /// Why.
    pub reason: &'a str,
    /// HTTP status if any.
    pub status: Option<u16>,
    /// Attempts so far.
    pub attempts: u32,
    /// Delay until the next attempt.
    pub after: Duration,
    /// The request timed out (no answer): the `timeout` reason on `/metrics`.
    pub timed_out: bool,
}

impl DeliveryRetried<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.retried, 1);
        c.metrics.retried(self.status, self.timed_out);
        tracing::info!(
            alert_id = self.alert_id,
            reason = self.reason,
            status = self.status.unwrap_or(0),
            attempts = self.attempts,
            retry_in_ms = self.after.as_millis() as u64,
            "delivery will be retried"
        );
    }
}

/// An alert moved to dead letters.
pub struct AlertDeadLettered<'a> {
    /// Alert id (empty for a corrupt record).
    pub alert_id: &'a str,
    /// Dead-letter kind.
    pub kind: alertbridge_wal::DeadKind,
    /// Why, readable.
    pub reason: &'a str,
    /// HTTP status if any.
    pub status: Option<u16>,
    /// Delivery attempts made.
    pub attempts: u32,
}

impl AlertDeadLettered<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.dead_lettered, 1);
        c.metrics.dead_lettered(self.kind);
        match self.kind {
            alertbridge_wal::DeadKind::Expired => Counters::add(&c.expired, 1),
            alertbridge_wal::DeadKind::Unconfirmed => Counters::add(&c.unconfirmed, 1),
            _ => {}
        }
        tracing::warn!(
            alert_id = self.alert_id,
            kind = ?self.kind,
            reason = self.reason,
            status = self.status.unwrap_or(0),
            attempts = self.attempts,
            "alert moved to dead letters (see `alertbridge dead-letters`)"
        );
    }
}

/// Delivery paused by a configuration fault (403/404/bad credentials), or a probe found it
/// still there. The first is logged at error level with the fix; each failed probe after it
/// once more (one line per probe interval), so a pause is never a silent loop.
pub struct DeliveryPaused<'a> {
    /// Why, with the fix.
    pub reason: &'a str,
    /// HTTP status if any.
    pub status: Option<u16>,
    /// Probe again after.
    pub retry_in: Duration,
}

impl DeliveryPaused<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        let already = c.paused.swap(true, Ordering::Relaxed);
        // the pause now holds deliveries, not the breaker
        set_breaker(c, BreakerView::Closed);
        if let Ok(mut g) = c.last_pause_reason.lock() {
            *g = Some(self.reason.to_string());
        }
        if let Ok(mut g) = c.pause_label.lock() {
            *g = Some(crate::metrics::pause_reason(self.status));
        }
        if already {
            tracing::warn!(
                reason = self.reason,
                status = self.status.unwrap_or(0),
                probe_in_ms = self.retry_in.as_millis() as u64,
                "delivery still paused: configuration fault; alerts stay in the log"
            );
        } else {
            Counters::add(&c.pauses, 1);
            tracing::error!(
                reason = self.reason,
                status = self.status.unwrap_or(0),
                probe_in_ms = self.retry_in.as_millis() as u64,
                "DELIVERY PAUSED: configuration fault; alerts stay in the log and are still ingested"
            );
        }
    }
}

/// Delivery works again after a pause.
pub fn delivery_resumed(c: &Counters) {
    if c.paused.swap(false, Ordering::Relaxed) {
        if let Ok(mut g) = c.last_pause_reason.lock() {
            *g = None;
        }
        if let Ok(mut g) = c.pause_label.lock() {
            *g = None;
        }
        tracing::warn!("delivery resumed: the configuration fault is gone");
    }
}

fn set_breaker(c: &Counters, view: BreakerView) {
    c.breaker_state.store(view.to_u8(), Ordering::Relaxed);
    c.breaker_open
        .store(view != BreakerView::Closed, Ordering::Relaxed);
}

/// The circuit breaker opened: `failures` consecutive retryable failures.
pub struct BreakerOpened<'a> {
    /// The count that reached the threshold.
    pub failures: u32,
    /// The last failure.
    pub reason: &'a str,
    /// Until the probe.
    pub cooldown: Duration,
}

impl BreakerOpened<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        set_breaker(c, BreakerView::Open);
        tracing::error!(
            failures = self.failures,
            reason = self.reason,
            probe_in_ms = self.cooldown.as_millis() as u64,
            "circuit breaker OPEN: holding deliveries (alerts are still ingested), one probe after the cool-down"
        );
    }
}

/// The cool-down is over: one probe request goes, everything else waits for its answer.
pub struct BreakerProbing {
    /// Probing after a configuration-fault pause (not an open breaker).
    pub paused: bool,
}

impl BreakerProbing {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        if self.paused {
            tracing::info!("delivery paused: sending one probe request");
        } else {
            set_breaker(c, BreakerView::HalfOpen);
            tracing::info!("circuit breaker half-open: sending one probe request");
        }
    }
}

/// The probe failed with a retryable failure: open for another cool-down.
pub struct BreakerReopened<'a> {
    /// The probe's failure.
    pub reason: &'a str,
    /// Until the next probe.
    pub cooldown: Duration,
}

impl BreakerReopened<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        set_breaker(c, BreakerView::Open);
        tracing::warn!(
            reason = self.reason,
            probe_in_ms = self.cooldown.as_millis() as u64,
            "circuit breaker stays OPEN: the probe failed"
        );
    }
}

/// The probe succeeded: the breaker is closed.
pub fn breaker_closed(c: &Counters) {
    set_breaker(c, BreakerView::Closed);
    tracing::warn!("circuit breaker closed: delivering again");
}

/// A 429: the rate was lowered (or not, same episode) and, with `Retry-After`, the whole client
/// waits.
pub struct Throttled<'a> {
    /// Why (status, API message, limit).
    pub reason: &'a str,
    /// The client-wide wait, if the server gave one.
    pub retry_after: Option<Duration>,
    /// Whether this answer lowered the rate (one decrease per episode).
    pub lowered: bool,
    /// Rate now.
    pub rate_per_sec: f64,
}

impl Throttled<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.throttled, 1);
        set_rate(c, self.rate_per_sec);
        if self.lowered {
            tracing::warn!(
                reason = self.reason,
                retry_after_ms = self.retry_after.map(|d| d.as_millis() as u64).unwrap_or(0),
                rate_per_sec = self.rate_per_sec,
                "rate limited by Genesys (429): rate lowered, the whole client waits for Retry-After"
            );
        } else {
            tracing::debug!(
                reason = self.reason,
                retry_after_ms = self.retry_after.map(|d| d.as_millis() as u64).unwrap_or(0),
                "rate limited (429) in the same episode"
            );
        }
    }
}

/// A Genesys delivery request ended after `took` with `status` (`None`: no answer), whatever
/// it meant for the alert: the request latency histogram by status class.
pub fn request_answered(c: &Counters, status: Option<u16>, took: Duration) {
    c.metrics.request(status, took);
}

/// The client-wide `Retry-After` of a 503 (the service said how long it is away).
pub fn unavailable_for(retry_after: Duration) {
    tracing::debug!(
        retry_after_ms = retry_after.as_millis() as u64,
        "Genesys unavailable (503 with Retry-After): the whole client waits"
    );
}

/// The delivery rate in force (AIMD); `restored` when it is back at the configured one.
pub fn rate_changed(c: &Counters, rate_per_sec: f64, restored: bool) {
    set_rate(c, rate_per_sec);
    if restored {
        tracing::info!(rate_per_sec, "delivery rate back at the configured rate");
    }
}

fn set_rate(c: &Counters, rate_per_sec: f64) {
    let millis = (rate_per_sec * 1000.0).round();
    let millis = if millis.is_finite() && millis > 0.0 {
        millis as u64
    } else {
        0
    };
    c.rate_millis.store(millis, Ordering::Relaxed);
}

/// Disk budget reached (with the reason) / freed.
pub fn backpressure_changed(c: &Counters, reason: Option<&str>, size: u64) {
    let on = reason.is_some();
    if c.backpressure.swap(on, Ordering::Relaxed) != on {
        match reason {
            Some(r) => tracing::error!(
                size_bytes = size,
                reason = r,
                "disk budget reached: no more acks, the broker keeps new alerts until space frees"
            ),
            None => tracing::warn!(size_bytes = size, "disk budget ok again: ingest resumed"),
        }
    }
}

/// The wall clock jumped by `jump_ms` (positive: ahead) relative to the monotonic clock — NTP
/// correcting a gateway that booted without RTC, or an operator. The drain schedules on the
/// monotonic clock, so no alert expires and no retry sleeps because of it; logged so the jump
/// is visible next to any time stamps it skews.
pub fn clock_jumped(c: &Counters, jump_ms: i64) {
    Counters::add(&c.clock_jumps, 1);
    tracing::warn!(
        jump_ms,
        "wall clock jumped; delivery schedules on the monotonic clock (TTL ages and retry times unaffected); times shown before and after differ by the jump"
    );
}

/// A delivery task failed to join (it panicked or was aborted): its alerts (`alert_ids`) are
/// still pending and were queued again. A bug if it happens: logged at error and counted.
pub fn delivery_task_failed(c: &Counters, error: &str, alert_ids: &[String]) {
    Counters::add(&c.tasks_failed, 1);
    tracing::error!(
        error,
        alert_ids = ?alert_ids,
        "delivery task failed; its alerts stay pending and are queued again"
    );
}

/// The drain's reconcile found it had lost track of `alerts` pending alerts (`alert_ids` when
/// known) and repaired it (`what` says how). A bug if it happens: logged at error and counted,
/// so a stall is never silent.
pub fn drain_repaired(c: &Counters, what: &str, alerts: u64, alert_ids: &[String]) {
    Counters::add(&c.drain_repairs, 1);
    tracing::error!(
        alerts,
        alert_ids = ?&alert_ids[..alert_ids.len().min(20)],
        repair = what,
        "DRAIN REPAIRED: it had lost track of pending alerts (please report this with the log)"
    );
}

/// The broker answered a SUBSCRIBE for one filter with a grant of QoS ≥ 1.
pub struct Subscribed<'a> {
    /// The topic filter.
    pub filter: &'a str,
    /// QoS granted (1; 2 only from a broker breaking MQTT 3.1.1 §3.9.3).
    pub qos: u8,
}

impl Subscribed<'_> {
    /// Record it (the line says `subscribed`: the e2e tests wait for it).
    pub fn emit(self) {
        tracing::info!(topic = self.filter, qos = self.qos, "subscribed");
    }
}

/// The broker refused a filter (SUBACK 0x80) or granted it only QoS 0. Logged at error level
/// the first time, at warn when a retry is refused again; every one counted.
pub struct SubscriptionRefused<'a> {
    /// The topic filter.
    pub filter: &'a str,
    /// `Some(0)` for a downgrade to QoS 0, `None` for a refusal.
    pub granted_qos: Option<u8>,
    /// A retry was refused again (already reported).
    pub again: bool,
    /// When it is asked for again.
    pub retry: &'a str,
    /// The refusal's SUBACK code as text (`SUBACK 0x87 NotAuthorized` in MQTT 5, `SUBACK 0x80`
    /// in 3.1.1); `None` for a downgrade.
    pub refusal: Option<&'a str>,
}

impl SubscriptionRefused<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.subscription_errors, 1);
        let cause = match self.granted_qos {
            None => format!(
                "{}: the broker's ACL does not let this client/user subscribe to the filter, or the broker rejects the filter",
                self.refusal.unwrap_or("SUBACK 0x80")
            ),
            Some(_) => "granted QoS 0 instead of 1: the broker caps QoS (a max_qos-style setting); it may lose alerts on this filter".to_string(),
        };
        if self.again {
            tracing::warn!(
                topic = self.filter,
                cause = %cause,
                retry = self.retry,
                "subscription still refused by the broker; alerts on this filter do not reach alertbridge"
            );
        } else {
            tracing::error!(
                topic = self.filter,
                cause = %cause,
                retry = self.retry,
                "SUBSCRIPTION REFUSED by the broker: alerts on this filter do not reach alertbridge"
            );
        }
    }
}

/// The subscriptions held / wanted and what is wrong, after any change (status shows them).
pub fn subscriptions_changed(c: &Counters, held: usize, wanted: usize, error: Option<String>) {
    c.subscriptions_wanted
        .store(wanted as u64, Ordering::Relaxed);
    let before = c.subscriptions_held.swap(held as u64, Ordering::Relaxed);
    if let Ok(mut g) = c.subscription_error.lock() {
        *g = error;
    }
    if held == wanted && before != held as u64 {
        tracing::info!(held, "every subscription held");
    }
}

/// Connection attempts to the broker keep failing: the first at once, then at a bounded rate.
pub struct BrokerUnreachable<'a> {
    /// `host:port`.
    pub broker: &'a str,
    /// Failed attempts so far.
    pub attempts: u64,
    /// Since the first failed attempt.
    pub failing_for: Duration,
    /// The last attempt's error.
    pub error: &'a str,
    /// Wait before the next attempt.
    pub retry_in: Duration,
}

impl BrokerUnreachable<'_> {
    /// Record it.
    pub fn emit(self) {
        tracing::warn!(
            broker = self.broker,
            attempts = self.attempts,
            failing_for_secs = self.failing_for.as_secs(),
            error = self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "cannot connect to the MQTT broker; retrying with backoff (alerts wait at the broker or the devices)"
        );
    }
}

/// Broker connection closed on purpose (shutdown).
pub fn disconnected_for_shutdown(c: &Counters) {
    if c.connected.swap(false, Ordering::Relaxed) {
        tracing::info!("disconnected from broker (shutdown)");
    }
}

/// Broker connection state.
pub fn connection_changed(c: &Counters, up: bool, detail: &str) {
    if c.connected.swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!(detail, "connected to broker");
        } else {
            tracing::warn!(detail, "broker connection lost; reconnecting with backoff");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_bump_the_counters_they_name() {
        let c = Counters::default();
        BatchPersisted {
            persisted: 3,
            duplicates: 1,
            dead_lettered: 1,
            took: Duration::ZERO,
        }
        .emit(&c);
        Acked {
            acked: 4,
            stale: 1,
            received: &[Instant::now(); 4],
        }
        .emit(&c);
        AlertDelivered {
            alert_id: "a",
            seq: 1,
            status: 200,
            execution_id: None,
            latency: Duration::from_millis(7),
            attempts: 1,
            priority: alertbridge_wal::PRIORITY_NORMAL,
        }
        .emit(&c);
        AlertDeadLettered {
            alert_id: "b",
            kind: alertbridge_wal::DeadKind::Expired,
            reason: "old",
            status: None,
            attempts: 0,
        }
        .emit(&c);
        let s = c.snapshot();
        assert_eq!(
            (s.persisted, s.duplicates, s.dead_lettered, s.batches),
            (3, 1, 2, 1)
        );
        assert_eq!(
            (s.acked, s.stale_acks_skipped, s.delivered, s.expired),
            (4, 1, 1, 1)
        );
        assert_eq!(c.latency_percentiles(&[50.0]), vec![7]);
    }

    #[test]
    fn delivered_lines_are_limited_per_second_and_the_rest_summarised() {
        let mut b = LineBudget::default();
        let t0 = Instant::now();
        for _ in 0..DELIVERED_LINES_PER_SEC {
            assert_eq!(b.take(t0), LineVerdict::Log { held_back: None });
        }
        for i in 0..30u64 {
            assert_eq!(
                b.take(t0 + Duration::from_millis(10 * i)),
                LineVerdict::HeldBack
            );
        }
        // The next second: the first line comes with the summary of those held back.
        assert_eq!(
            b.take(t0 + Duration::from_millis(1000)),
            LineVerdict::Log {
                held_back: Some((30, Duration::from_millis(1000)))
            }
        );
        assert_eq!(
            b.take(t0 + Duration::from_millis(1001)),
            LineVerdict::Log { held_back: None },
            "a summary is written once"
        );
    }

    #[test]
    fn the_held_back_count_of_a_finished_second_is_flushed_once_without_another_delivery() {
        let mut b = LineBudget::default();
        let t0 = Instant::now();
        for _ in 0..DELIVERED_LINES_PER_SEC + 5 {
            b.take(t0);
        }
        assert_eq!(
            b.flush(t0 + Duration::from_millis(500)),
            None,
            "the second is not over"
        );
        assert_eq!(
            b.flush(t0 + Duration::from_millis(1500)),
            Some((5, Duration::from_millis(1500)))
        );
        assert_eq!(b.flush(t0 + Duration::from_millis(2000)), None, "once");
        assert_eq!(
            b.take(t0 + Duration::from_millis(2000)),
            LineVerdict::Log { held_back: None }
        );
    }

    #[test]
    fn subscription_events_fill_the_status_fields_and_readiness() {
        let c = Counters::default();
        subscriptions_changed(&c, 0, 2, None);
        assert!(!c.snapshot().subscribed(), "nothing held yet");
        SubscriptionRefused {
            filter: "site/b/#",
            granted_qos: None,
            again: false,
            retry: "soon",
            refusal: Some("SUBACK 0x80"),
        }
        .emit(&c);
        subscriptions_changed(&c, 1, 2, Some("broker refused `site/b/#`".into()));
        let s = c.snapshot();
        assert_eq!((s.subscriptions_held, s.subscriptions_wanted), (1, 2));
        assert_eq!(s.subscription_errors, 1);
        assert!(s.subscription_error.is_some() && !s.subscribed());
        subscriptions_changed(&c, 2, 2, None);
        let s = c.snapshot();
        assert!(s.subscribed() && s.subscription_error.is_none());
        assert_eq!(s.subscription_errors, 1, "a count since start, not a state");
        assert!(
            !Snapshot::default().subscribed(),
            "an agent that reports no filters (an older one) is not taken as subscribed"
        );
    }
}
