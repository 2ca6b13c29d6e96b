//! `[delivery]`: rate, retries and backoff, breaker, pauses, TTLs, timeouts.

use super::*;

/// `[delivery]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Sustained request rate.
    pub rate_per_sec: Option<f64>,
    /// Token bucket size.
    pub burst: Option<u32>,
    /// Concurrent requests.
    pub max_in_flight: Option<usize>,
    /// First retry delay.
    pub backoff_initial_ms: Option<u64>,
    /// Largest retry delay.
    pub backoff_max_ms: Option<u64>,
    /// Growth factor of the retry delay.
    pub backoff_multiplier: Option<f64>,
    /// Consecutive retryable failures that open the circuit breaker.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe.
    pub breaker_cooldown_ms: Option<u64>,
    /// Identical permanent rejections in a row that pause delivery (0 = never).
    pub pause_after_rejections: Option<u32>,
    /// Longest request timeout after timed-out attempts (the timeout doubles per timeout).
    pub max_request_timeout_ms: Option<u64>,
    /// Timed-out attempts per alert before it is an `Unconfirmed` dead letter (0 = no limit).
    pub max_timeouts: Option<u32>,
    /// One normal alert is sent after this many critical ones when both wait.
    pub normal_every: Option<u32>,
    /// Max age of a critical alert before it is dead-lettered as expired (none by default).
    pub ttl_critical_secs: Option<u64>,
    /// Max age of other alerts before they are dead-lettered as expired (none by default).
    pub ttl_normal_secs: Option<u64>,
    /// Grace for in-flight requests at shutdown.
    pub shutdown_timeout_secs: Option<u64>,
}

/// Validated `[delivery]`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Sustained rate.
    pub rate_per_sec: f64,
    /// Bucket size.
    pub burst: u32,
    /// Concurrency cap.
    pub max_in_flight: usize,
    /// Backoff parameters.
    pub backoff: crate::schedule::Backoff,
    /// Breaker threshold.
    pub breaker_failures: u32,
    /// Breaker cool-down.
    pub breaker_cooldown: Duration,
    /// Permanent rejections in a row with the same status and API code that pause delivery
    /// instead of dead-lettering the backlog (0 = never).
    pub pause_after_rejections: u32,
    /// The request timeout doubles after each timed-out attempt of an alert, up to this.
    pub max_request_timeout: Duration,
    /// Timed-out attempts of one alert before it becomes an `Unconfirmed` dead letter (0 = no
    /// limit): bounds how often a slow API launches the same alert.
    pub max_timeouts: u32,
    /// Fairness between lanes.
    pub normal_every: u32,
    /// TTL of critical alerts.
    pub ttl_critical: Option<Duration>,
    /// TTL of other alerts.
    pub ttl_normal: Option<Duration>,
    /// Shutdown grace.
    pub shutdown_timeout: Duration,
}

pub(crate) fn delivery_from_raw(raw: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    let rate_per_sec = raw.rate_per_sec.unwrap_or(4.0);
    if !(rate_per_sec.is_finite() && rate_per_sec >= 0.001) {
        return Err(invalid(
            "delivery.rate_per_sec",
            format!("{rate_per_sec} is not a positive number"),
            "use e.g. 4.0 (Genesys allows 300 requests/min per token)",
        ));
    }
    let burst = raw.burst.unwrap_or(8);
    if burst == 0 {
        return Err(invalid("delivery.burst", "is 0", "use ≥ 1 (default 8)"));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(4);
    if max_in_flight == 0 || max_in_flight > 1024 {
        return Err(invalid(
            "delivery.max_in_flight",
            format!("{max_in_flight} is out of range"),
            "use 1..=1024 (default 4)",
        ));
    }
    let initial = Duration::from_millis(raw.backoff_initial_ms.unwrap_or(3_000));
    let max = Duration::from_millis(raw.backoff_max_ms.unwrap_or(300_000));
    let multiplier = raw.backoff_multiplier.unwrap_or(3.0);
    if initial.is_zero() || max < initial {
        return Err(invalid(
            "delivery.backoff_max_ms",
            "must be ≥ backoff_initial_ms > 0",
            "e.g. backoff_initial_ms = 3000, backoff_max_ms = 300000",
        ));
    }
    if !(multiplier.is_finite() && multiplier >= 1.0) {
        return Err(invalid(
            "delivery.backoff_multiplier",
            "must be ≥ 1.0",
            "e.g. 3.0",
        ));
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        return Err(invalid(
            "delivery.breaker_failures",
            "is 0",
            "use ≥ 1 (default 5)",
        ));
    }
    let max_request_timeout = Duration::from_millis(raw.max_request_timeout_ms.unwrap_or(60_000));
    if max_request_timeout.is_zero() {
        return Err(invalid(
            "delivery.max_request_timeout_ms",
            "is 0",
            "use e.g. 60000 (at least genesys.request_timeout_secs; a smaller value keeps that)",
        ));
    }
    let normal_every = raw.normal_every.unwrap_or(10);
    if normal_every == 0 {
        return Err(invalid(
            "delivery.normal_every",
            "is 0",
            "use ≥ 1: one normal alert after that many critical ones (default 10)",
        ));
    }
    Ok(DeliveryConfig {
        rate_per_sec,
        burst,
        max_in_flight,
        backoff: crate::schedule::Backoff {
            initial,
            max,
            multiplier,
        },
        breaker_failures,
        breaker_cooldown: Duration::from_millis(raw.breaker_cooldown_ms.unwrap_or(30_000)),
        pause_after_rejections: raw.pause_after_rejections.unwrap_or(5),
        max_request_timeout,
        max_timeouts: raw.max_timeouts.unwrap_or(3),
        normal_every,
        ttl_critical: raw.ttl_critical_secs.map(Duration::from_secs),
        ttl_normal: raw.ttl_normal_secs.map(Duration::from_secs),
        shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_secs.unwrap_or(10)),
    })
}
