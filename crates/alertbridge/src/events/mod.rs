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
//!
//! The counters and the status snapshot live here; the events beside them, by stage: `ingest`
//! (group commits, duplicates, acks, broker connection, subscriptions, disk budget), `delivery`
//! (delivered, retried, dead-lettered, the drain's tick and self-repairs), `pacing` (pauses,
//! breaker, 429s and the rate, request latency), `receipts` (receipts published to MQTT, dropped
//! by the outbox bound, the publisher's connection).

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
    /// [`BreakerView`] as a number (see [`BreakerView::from_u8`]): the one record of the
    /// breaker's state ([`Snapshot::breaker_open`] is read from it).
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
    /// CONNACKs without a session although a session of ours held a subscription on the broker
    /// before (S2): alerts published while the agent was away may be gone at the broker.
    pub sessions_lost: AtomicU64,
    /// Unix ms of the latest of those (0: none since start).
    pub session_lost_at_ms: AtomicU64,
    /// Delivery receipts published to MQTT and acknowledged by the broker (`[receipts]`).
    pub receipts_published: AtomicU64,
    /// Delivery receipts dropped unpublished: by the outbox bound (count or age), or refused by
    /// the broker (MQTT 5 PUBACK reason code).
    pub receipts_dropped: AtomicU64,
    /// MQTT 5 response topics refused for a receipt (an ingest filter matches, or no topic).
    pub receipts_reply_refused: AtomicU64,
    /// The receipts publisher's own MQTT connection is up.
    pub receipts_connected: AtomicBool,
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
            breaker_open: BreakerView::from_u8(self.breaker_state.load(Ordering::Relaxed))
                != BreakerView::Closed,
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
            sessions_lost: g(&self.sessions_lost),
            session_lost_at_ms: Some(g(&self.session_lost_at_ms)).filter(|ms| *ms > 0),
            receipts_published: g(&self.receipts_published),
            receipts_dropped: g(&self.receipts_dropped),
            receipts_reply_refused: g(&self.receipts_reply_refused),
            receipts_connected: self.receipts_connected.load(Ordering::Relaxed),
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
    /// Broker sessions found lost since start (S2): alerts published while the agent was away
    /// may be gone at the broker (journal: `MQTT SESSION LOST`).
    pub sessions_lost: u64,
    /// Unix ms of the latest lost session, if any since start.
    pub session_lost_at_ms: Option<u64>,
    /// Delivery receipts published to MQTT since start (`[receipts]`).
    pub receipts_published: u64,
    /// Delivery receipts dropped unpublished (outbox bound, broker refusal) since start.
    pub receipts_dropped: u64,
    /// MQTT 5 response topics refused for a receipt since start.
    pub receipts_reply_refused: u64,
    /// The receipts publisher's MQTT connection is up.
    pub receipts_connected: bool,
}

impl Snapshot {
    /// Ingest holds every configured subscription at QoS ≥ 1: a condition of readiness (with
    /// `connected`); until then alerts published to a missing filter never reach the agent.
    pub fn subscribed(&self) -> bool {
        self.subscriptions_wanted > 0 && self.subscriptions_held >= self.subscriptions_wanted
    }
}

mod delivery;
mod ingest;
mod pacing;
mod receipts;

pub use delivery::*;
pub use ingest::*;
pub use pacing::*;
pub use receipts::*;

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

    #[test]
    fn a_lost_session_is_counted_with_its_time_for_status() {
        let c = Counters::default();
        assert_eq!(
            (c.snapshot().sessions_lost, c.snapshot().session_lost_at_ms),
            (0, None)
        );
        SessionLost {
            broker: "127.0.0.1:1883",
            client_id: "gw1",
            known_from: "a SUBACK of this process",
            disconnected_for: Some(Duration::from_secs(90)),
            session_expiry_secs: Some(60),
        }
        .emit(&c);
        let s = c.snapshot();
        assert_eq!(s.sessions_lost, 1);
        assert!(s.session_lost_at_ms.is_some_and(|ms| ms > 0));
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["sessions_lost"], 1, "status --json shows it: {json}");
    }
}
