//! Outbound pacing: a token bucket (`rate_per_sec`, `burst`) whose rate adapts (AIMD) to 429s,
//! plus a client-wide "not before" set by `Retry-After`, and the circuit breaker.
//!
//! Pure state machines: every method takes `now` and answers how long to wait; the drain owns
//! the clock and the sleeping.

use std::time::{Duration, Instant};

/// Token bucket with additive-increase / multiplicative-decrease of its rate.
///
/// Why adaptive: Genesys' limits (300 requests/min per token, org-wide trigger limits) are not
/// fully known to us; a 429 proves we are above the real limit, so halve the rate, then creep
/// back to the configured rate by 5 % of it per successful second-equivalent.
#[derive(Debug, Clone)]
pub struct Limiter {
    configured_rate: f64,
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    not_before: Option<Instant>,
}

/// Lowest rate the AIMD decrease goes to, as a fraction of the configured rate.
const MIN_RATE_FRACTION: f64 = 0.05;

impl Limiter {
    /// Full bucket at the configured rate.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Limiter {
        Limiter {
            configured_rate: rate_per_sec,
            rate: rate_per_sec,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            not_before: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take one token if available; otherwise how long until one is (or until `Retry-After`
    /// ends).
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(nb) = self.not_before {
            if now < nb {
                return Err(nb - now);
            }
            self.not_before = None;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(missing / self.rate).max(Duration::from_millis(1)))
        }
    }

    /// A 429 (or any `Retry-After`) applies to the whole client, not only the one request:
    /// nothing is sent before `now + after`, and the bucket is emptied so sending resumes at the
    /// (lowered) rate instead of as a burst.
    pub fn retry_after(&mut self, now: Instant, after: Duration) {
        let until = now + after;
        if self.not_before.is_none_or(|nb| nb < until) {
            self.not_before = Some(until);
        }
        self.tokens = 0.0;
        self.last = until;
    }

    /// Multiplicative decrease after a 429.
    pub fn on_throttled(&mut self) {
        self.rate = (self.rate / 2.0).max(self.configured_rate * MIN_RATE_FRACTION);
    }

    /// Additive increase after an accepted request.
    pub fn on_success(&mut self) {
        if self.rate < self.configured_rate {
            // 5 % of the configured rate per `configured_rate` successes ≈ per second at full rate.
            let step = self.configured_rate * 0.05 / self.configured_rate.max(1.0);
            self.rate = (self.rate + step).min(self.configured_rate);
        }
    }

    /// Current (possibly lowered) rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// When `Retry-After` ends, if it is in force.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.not_before.filter(|nb| *nb > now)
    }
}

/// Circuit breaker state, visible in status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sending normally.
    Closed,
    /// Sending stopped until the cool-down ends.
    Open {
        /// When one probe may go.
        until: Instant,
    },
    /// One probe is in flight; its answer closes or re-opens the breaker.
    HalfOpen,
}

/// Opens after `threshold` consecutive retryable failures; after `cooldown` lets exactly one
/// probe through (half-open); closes on its success, re-opens on its failure.
///
/// Why: during an outage, sending at full rate only burns attempts and the API's patience;
/// alerts keep being ingested and acked into the log while the breaker is open.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    state: BreakerState,
}

/// What the breaker allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send normally.
    Send,
    /// Send this one request as the probe; hold everything else.
    Probe,
    /// Send nothing for this long.
    Wait(Duration),
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed/half-open → open.
    Opened,
    /// Half-open → closed.
    Closed,
}

impl Breaker {
    /// Closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            consecutive_failures: 0,
            state: BreakerState::Closed,
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a request go now?
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Send,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Permit::Probe
            }
            BreakerState::Open { until } => Permit::Wait(until - now),
            // the probe is out; wait for its answer (the drain wakes on it)
            BreakerState::HalfOpen => Permit::Wait(self.cooldown),
        }
    }

    /// An accepted request (or a permanent rejection: the API is up).
    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        if self.state != BreakerState::Closed {
            self.state = BreakerState::Closed;
            return Some(Transition::Closed);
        }
        None
    }

    /// A retryable failure (5xx, timeout, connect error, 429).
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.consecutive_failures >= self.threshold,
            BreakerState::Open { .. } => false,
        };
        if open {
            self.state = BreakerState::Open {
                until: now + self.cooldown,
            };
            return Some(Transition::Opened);
        }
        None
    }

    /// Open for a given time regardless of the count (configuration fault / long Retry-After).
    pub fn hold(&mut self, now: Instant, d: Duration) {
        self.state = BreakerState::Open { until: now + d };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces_at_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(l.try_acquire(t0).is_ok());
        }
        let wait = l.try_acquire(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait >= Duration::from_millis(99),
            "{wait:?}"
        );
        assert!(l.try_acquire(t0 + Duration::from_millis(100)).is_ok());
        assert!(l.try_acquire(t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn retry_after_blocks_the_whole_client() {
        let t0 = Instant::now();
        let mut l = Limiter::new(100.0, 100, t0);
        l.retry_after(t0, Duration::from_secs(2));
        let wait = l.try_acquire(t0 + Duration::from_millis(500)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1500));
        // after the pause the bucket starts empty: no burst
        assert!(l.try_acquire(t0 + Duration::from_secs(2)).is_err());
        assert!(l.try_acquire(t0 + Duration::from_millis(2010)).is_ok());
        assert_eq!(l.paused_until(t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn aimd_halves_on_429_and_recovers_gradually() {
        let mut l = Limiter::new(20.0, 1, Instant::now());
        l.on_throttled();
        assert_eq!(l.rate(), 10.0);
        l.on_throttled();
        assert_eq!(l.rate(), 5.0);
        for _ in 0..10 {
            l.on_success();
        }
        assert!(l.rate() > 5.0 && l.rate() < 20.0, "{}", l.rate());
        for _ in 0..10_000 {
            l.on_success();
        }
        assert_eq!(l.rate(), 20.0);
        for _ in 0..100 {
            l.on_throttled();
        }
        assert_eq!(l.rate(), 1.0, "floor at 5 % of the configured rate");
    }

    #[test]
    fn breaker_opens_after_threshold_probes_once_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), Some(Transition::Opened));
        assert_eq!(
            b.permit(t0 + Duration::from_secs(4)),
            Permit::Wait(Duration::from_secs(6))
        );
        assert_eq!(b.permit(t0 + Duration::from_secs(10)), Permit::Probe);
        assert!(
            matches!(b.permit(t0 + Duration::from_secs(10)), Permit::Wait(_)),
            "only one probe"
        );
        assert_eq!(b.on_success(), Some(Transition::Closed));
        assert_eq!(b.permit(t0 + Duration::from_secs(11)), Permit::Send);
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.on_failure(t0);
        assert_eq!(b.permit(t0 + Duration::from_secs(5)), Permit::Probe);
        assert_eq!(
            b.on_failure(t0 + Duration::from_secs(6)),
            Some(Transition::Opened)
        );
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t0 + Duration::from_secs(11)
            }
        );
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1));
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
