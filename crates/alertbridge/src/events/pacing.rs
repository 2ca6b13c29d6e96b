//! Delivery pacing: pauses, the circuit breaker, 429s and the rate, request latency.

use super::*;

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

pub(super) fn set_breaker(c: &Counters, view: BreakerView) {
    c.breaker_state.store(view.to_u8(), Ordering::Relaxed);
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

pub(super) fn set_rate(c: &Counters, rate_per_sec: f64) {
    let millis = (rate_per_sec * 1000.0).round();
    let millis = if millis.is_finite() && millis > 0.0 {
        millis as u64
    } else {
        0
    };
    c.rate_millis.store(millis, Ordering::Relaxed);
}
