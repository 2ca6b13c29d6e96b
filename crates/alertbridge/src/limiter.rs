//! Outbound pacing: a token bucket (`rate_per_sec`, `burst`) whose rate adapts (AIMD) to 429s,
//! and the client-wide "not before" set by `Retry-After` ([`NotBefore`], its one record). The
//! circuit breaker and configuration-fault pauses are in `breaker.rs`.
//!
//! The bucket is a pure state machine: every method takes `now` and answers how long to wait;
//! the drain owns the clock, the sleeping and the events.
//!
//! What must stay true:
//! - L1 Nothing is sent before a `Retry-After` the client was given has ended, whichever
//!   request it came with ([`Limiter::retry_after`]); after it the bucket starts empty, so
//!   sending resumes at the (lowered) rate, not as a burst. Delivery tasks already handed a
//!   request check the same [`NotBefore`] right before they send.
//! - L2 One 429 episode halves the rate once: a 429 for a request sent before the last decrease
//!   says nothing new ([`Limiter::on_throttled`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The client-wide "not before" a `Retry-After` sets (L1): the only record of it. The
/// [`Limiter`] owns it and answers [`Limiter::wait`] from it; delivery tasks hold clones
/// ([`Limiter::not_before`]) and [`NotBefore::wait`] right before they send, so a `Retry-After`
/// learned from one answer also holds requests already handed to a task but not yet sent.
#[derive(Debug, Clone, Default)]
pub struct NotBefore(Arc<Mutex<Option<Instant>>>);

impl NotBefore {
    /// Nothing may be sent before `until`. A shorter hold never shortens a longer one.
    pub fn extend(&self, until: Instant) {
        // Only a plain assignment happens under this lock: a poisoned lock holds valid data.
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    /// The end of the hold, if one was ever set (it may have passed).
    pub fn until(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps (on tokio's clock) until the hold has ended; at once when there is none.
    pub async fn wait(&self) {
        loop {
            match self.until() {
                Some(t) if t > crate::clock::now() => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
                }
                _ => return,
            }
        }
    }
}

/// Token bucket with additive-increase / multiplicative-decrease of its rate.
///
/// Why adaptive: Genesys' limits (300 requests/min per token, org-wide trigger limits) are not
/// fully known to us; a 429 proves we are above the real limit, so halve the rate, then creep
/// back to the configured rate by 5 % of it per `configured_rate` accepted requests (about 5 %
/// per second at full rate).
#[derive(Debug, Clone)]
pub struct Limiter {
    configured_rate: f64,
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// The `Retry-After` hold, shared with delivery tasks (L1).
    not_before: NotBefore,
    last_decrease: Option<Instant>,
}

/// Lowest rate the AIMD decrease goes to, as a fraction of the configured rate.
const MIN_RATE_FRACTION: f64 = 0.05;

/// Additive increase per accepted request, as a fraction of the configured rate, divided by the
/// configured rate (so a full second of accepted requests at the configured rate adds 5 %).
const INCREASE_FRACTION: f64 = 0.05;

impl Limiter {
    /// Full bucket at the configured rate.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Limiter {
        Limiter {
            configured_rate: rate_per_sec,
            rate: rate_per_sec,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            not_before: NotBefore::default(),
            last_decrease: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if now > self.last {
            self.last = now;
        }
    }

    /// How long until a request may go (`Retry-After` first, then a token); `None` = now.
    /// Takes nothing: call [`Limiter::take`] when the request really goes.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        if let Some(nb) = self.not_before.until().filter(|nb| now < *nb) {
            return Some(nb - now);
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            None
        } else {
            let missing = 1.0 - self.tokens;
            Some(Duration::from_secs_f64(missing / self.rate).max(Duration::from_millis(1)))
        }
    }

    /// Spend one token for a request that goes now (after [`Limiter::wait`] said `None`).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// [`Limiter::wait`] and [`Limiter::take`] in one: `Ok` when a token was taken.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        match self.wait(now) {
            Some(d) => Err(d),
            None => {
                self.take(now);
                Ok(())
            }
        }
    }

    /// A `Retry-After` applies to the whole client, not only the one request (L1): nothing is
    /// sent before `now + after`, and the bucket is emptied so sending resumes at the (lowered)
    /// rate instead of as a burst. A shorter `Retry-After` never shortens a longer one.
    pub fn retry_after(&mut self, now: Instant, after: Duration) {
        self.not_before.extend(now + after);
        let until = self.not_before.until().unwrap_or(now + after);
        self.tokens = 0.0;
        if until > self.last {
            self.last = until;
        }
    }

    /// Multiplicative decrease after a 429 for a request sent at `sent_at` (L2): halves the rate
    /// unless the request left before the last decrease (the same episode). Returns whether the
    /// rate was lowered.
    pub fn on_throttled(&mut self, sent_at: Instant, now: Instant) -> bool {
        if self.last_decrease.is_some_and(|d| sent_at < d) {
            return false;
        }
        self.rate = (self.rate / 2.0).max(self.configured_rate * MIN_RATE_FRACTION);
        self.last_decrease = Some(now);
        true
    }

    /// Additive increase after an accepted request. Returns true when this brought the rate
    /// back to the configured one.
    pub fn on_success(&mut self) -> bool {
        if self.rate < self.configured_rate {
            let step = self.configured_rate * INCREASE_FRACTION / self.configured_rate.max(1.0);
            self.rate = (self.rate + step).min(self.configured_rate);
            return self.rate >= self.configured_rate;
        }
        false
    }

    /// Current (possibly lowered) rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The configured rate the AIMD increase returns to.
    pub fn configured_rate(&self) -> f64 {
        self.configured_rate
    }

    /// When `Retry-After` ends, if it is in force.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.not_before.until().filter(|nb| *nb > now)
    }

    /// A handle on the `Retry-After` hold for a delivery task to wait on right before it sends.
    pub fn not_before(&self) -> NotBefore {
        self.not_before.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_allows_burst_then_paces_at_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(l.try_acquire(t0).is_ok());
        }
        let wait = l.try_acquire(t0).unwrap_err();
        assert!(wait <= ms(100) && wait >= ms(99), "{wait:?}");
        assert!(l.try_acquire(t0 + ms(100)).is_ok());
        assert!(l.try_acquire(t0 + ms(100)).is_err());
    }

    #[test]
    fn wait_takes_nothing() {
        let t0 = Instant::now();
        let mut l = Limiter::new(10.0, 1, t0);
        assert_eq!(l.wait(t0), None);
        assert_eq!(l.wait(t0), None, "asking twice spends nothing");
        l.take(t0);
        assert!(l.wait(t0).is_some());
    }

    #[test]
    fn retry_after_blocks_the_whole_client() {
        let t0 = Instant::now();
        let mut l = Limiter::new(100.0, 100, t0);
        l.retry_after(t0, Duration::from_secs(2));
        let wait = l.try_acquire(t0 + ms(500)).unwrap_err();
        assert_eq!(wait, ms(1500));
        // after the pause the bucket starts empty: no burst
        assert!(l.try_acquire(t0 + Duration::from_secs(2)).is_err());
        assert!(l.try_acquire(t0 + ms(2010)).is_ok());
        assert_eq!(l.paused_until(t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn a_shorter_retry_after_never_shortens_a_longer_one() {
        let t0 = Instant::now();
        let mut l = Limiter::new(100.0, 100, t0);
        l.retry_after(t0, Duration::from_secs(5));
        l.retry_after(t0 + ms(100), Duration::from_secs(1));
        assert_eq!(l.paused_until(t0), Some(t0 + Duration::from_secs(5)));
        // and the bucket does not fill during the longer pause
        assert!(l.try_acquire(t0 + Duration::from_secs(5)).is_err());
    }

    #[test]
    fn aimd_halves_on_429_and_recovers_gradually() {
        let t0 = Instant::now();
        let mut l = Limiter::new(20.0, 1, t0);
        assert!(l.on_throttled(t0, t0));
        assert_eq!(l.rate(), 10.0);
        assert!(l.on_throttled(t0 + ms(10), t0 + ms(20)));
        assert_eq!(l.rate(), 5.0);
        for _ in 0..10 {
            assert!(!l.on_success());
        }
        assert!(l.rate() > 5.0 && l.rate() < 20.0, "{}", l.rate());
        let back = (0..10_000).filter(|_| l.on_success()).count();
        assert_eq!(back, 1, "reaching the configured rate is reported once");
        assert_eq!(l.rate(), 20.0);
        for i in 0..100 {
            let t = t0 + Duration::from_secs(1 + i);
            l.on_throttled(t, t);
        }
        assert_eq!(l.rate(), 1.0, "floor at 5 % of the configured rate");
    }

    #[test]
    fn one_429_episode_halves_the_rate_once() {
        let t0 = Instant::now();
        let mut l = Limiter::new(40.0, 8, t0);
        // eight requests sent together, all answered 429
        assert!(l.on_throttled(t0, t0 + ms(50)));
        for _ in 0..7 {
            assert!(!l.on_throttled(t0, t0 + ms(60)));
        }
        assert_eq!(l.rate(), 20.0);
        // a request sent after the decrease that is still throttled lowers it again
        assert!(l.on_throttled(t0 + ms(100), t0 + ms(150)));
        assert_eq!(l.rate(), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn not_before_holds_tasks_until_it_ends() {
        let gate = NotBefore::default();
        gate.wait().await; // nothing set: no wait
        let t0 = crate::clock::now();
        gate.extend(t0 + ms(80));
        gate.extend(t0 + ms(10)); // shorter: no effect
        gate.wait().await;
        assert!(crate::clock::now() >= t0 + ms(80));
    }

    #[test]
    fn a_retry_after_given_to_the_limiter_holds_its_delivery_tasks_too() {
        let t0 = Instant::now();
        let mut l = Limiter::new(100.0, 100, t0);
        let gate = l.not_before();
        l.retry_after(t0, ms(500));
        assert_eq!(gate.until(), Some(t0 + ms(500)));
    }
}
