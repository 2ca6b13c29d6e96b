//! What each stage did: one typed event per happening. `emit` writes the tracing line and bumps
//! the counter together, so logs, `status`, the demo's progress and (later) Prometheus metrics
//! can never disagree. There is no "dropped" event: nothing is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

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
    /// Delivery paused by a configuration fault.
    pub paused: AtomicBool,
    /// Breaker open.
    pub breaker_open: AtomicBool,
    /// Ingest held back by the disk budget.
    pub backpressure: AtomicBool,
    /// Broker connection up.
    pub connected: AtomicBool,
    latencies_ms: Mutex<Vec<u32>>,
    last_pause_reason: Mutex<Option<String>>,
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
            paused: self.paused.load(Ordering::Relaxed),
            pause_reason: self.last_pause_reason.lock().ok().and_then(|g| g.clone()),
            breaker_open: self.breaker_open.load(Ordering::Relaxed),
            backpressure: self.backpressure.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
        }
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

/// Plain copy of the counters.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
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
    pub paused: bool,
    pub pause_reason: Option<String>,
    pub breaker_open: bool,
    pub backpressure: bool,
    pub connected: bool,
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
        tracing::debug!(
            persisted = self.persisted,
            duplicates = self.duplicates,
            dead_lettered = self.dead_lettered,
            took_us = self.took.as_micros() as u64,
            "batch durable"
        );
    }
}

/// PUBACKs queued after a durable batch.
pub struct Acked {
    /// Acks queued.
    pub acked: u64,
    /// Withheld: publish from an older connection.
    pub stale: u64,
}

impl Acked {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.acked, self.acked);
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
}

impl AlertDelivered<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.delivered, 1);
        if let Ok(mut v) = c.latencies_ms.lock() {
            if v.len() < MAX_LATENCY_SAMPLES {
                v.push(self.latency.as_millis().min(u32::MAX as u128) as u32);
            }
        }
        tracing::debug!(
            alert_id = self.alert_id,
            seq = self.seq,
            status = self.status,
            execution_id = self.execution_id.unwrap_or(""),
            latency_ms = self.latency.as_millis() as u64,
            attempts = self.attempts,
            "delivered"
        );
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
}

impl DeliveryRetried<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.retried, 1);
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
}

impl AlertDeadLettered<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.dead_lettered, 1);
        if self.kind == alertbridge_wal::DeadKind::Expired {
            Counters::add(&c.expired, 1);
        }
        tracing::warn!(
            alert_id = self.alert_id,
            kind = ?self.kind,
            reason = self.reason,
            status = self.status.unwrap_or(0),
            "alert moved to dead letters (see `alertbridge dead-letters`)"
        );
    }
}

/// Delivery paused by a configuration fault (403/404/bad credentials) or resumed.
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
        c.paused.store(true, Ordering::Relaxed);
        if let Ok(mut g) = c.last_pause_reason.lock() {
            *g = Some(self.reason.to_string());
        }
        tracing::error!(
            reason = self.reason,
            status = self.status.unwrap_or(0),
            probe_in_ms = self.retry_in.as_millis() as u64,
            "DELIVERY PAUSED: configuration fault; alerts stay in the log and are still ingested"
        );
    }
}

/// Delivery works again after a pause.
pub fn delivery_resumed(c: &Counters) {
    if c.paused.swap(false, Ordering::Relaxed) {
        if let Ok(mut g) = c.last_pause_reason.lock() {
            *g = None;
        }
        tracing::warn!("delivery resumed");
    }
}

/// Breaker transitions.
pub fn breaker_changed(c: &Counters, open: bool, failures: u32) {
    c.breaker_open.store(open, Ordering::Relaxed);
    if open {
        tracing::warn!(
            failures,
            "circuit breaker OPEN: holding deliveries, probing after cool-down"
        );
    } else {
        tracing::warn!("circuit breaker closed: delivering again");
    }
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
        Acked { acked: 4, stale: 1 }.emit(&c);
        AlertDelivered {
            alert_id: "a",
            seq: 1,
            status: 200,
            execution_id: None,
            latency: Duration::from_millis(7),
            attempts: 1,
        }
        .emit(&c);
        AlertDeadLettered {
            alert_id: "b",
            kind: alertbridge_wal::DeadKind::Expired,
            reason: "old",
            status: None,
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
}
