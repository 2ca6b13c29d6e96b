//! The drain's per-alert events: delivered (with the per-second line budget), retried,
//! dead-lettered, and the drain's liveness tick and self-repairs.

use super::*;

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

pub(super) fn log_held_back(alerts: u64, over: Duration) {
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
        .store(crate::clock::now_ms(), Ordering::Relaxed);
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
pub(super) struct LineBudget {
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
pub(super) enum LineVerdict {
    /// Log it at info, after a summary of `held_back` (count, over how long) if some were.
    Log { held_back: Option<(u64, Duration)> },
    /// Over the budget: counted into the next summary (logged at debug only).
    HeldBack,
}

impl LineBudget {
    pub(super) fn take(&mut self, now: Instant) -> LineVerdict {
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
    pub(super) fn flush(&mut self, now: Instant) -> Option<(u64, Duration)> {
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
