//! Broker connection decisions made without I/O: how long to wait before the next connection
//! attempt, and when an unreachable broker is worth another warning. The connection task in
//! [`crate::ingest`] tells [`ConnectFailures`] what happened and does what it says; time and
//! jitter are passed in, so every rule is a unit test (rumqttc's `state.rs` beside its
//! `eventloop.rs`).

use std::time::{Duration, Instant};

/// At most one "broker unreachable" warning per this interval while connection attempts keep
/// failing (the first failure warns at once).
pub(crate) const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

/// How long to wait before the next attempt after `failures` consecutive failures: a uniform
/// sample between `min` and a ceiling that doubles with every failure, `min · 2^failures`,
/// capped at `max` ("full jitter" above a floor). `jitter` is a sample in `[0, 1)`.
///
/// Why jitter: after a site power cut every gateway boots and fails together; without it they
/// all retry in the same millisecond, again and again, and the broker (or the site uplink)
/// gets a stampede each time. The floor keeps a gateway from hammering a broker that refuses at
/// once (bad credentials answer in microseconds).
pub(crate) fn reconnect_delay(
    min: Duration,
    max: Duration,
    failures: u32,
    jitter: f64,
) -> Duration {
    let min_ms = min.as_millis() as f64;
    let max_ms = (max.as_millis() as f64).max(min_ms);
    let ceiling = (min_ms * 2f64.powi(failures.min(64) as i32)).min(max_ms);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    Duration::from_millis((min_ms + (ceiling - min_ms) * jitter) as u64)
}

/// A warning due because connection attempts keep failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreachable {
    /// Failed attempts since the last CONNACK (or since start).
    pub(crate) attempts: u64,
    /// Since the first of them.
    pub(crate) for_: Duration,
}

/// Failed connection attempts since the last CONNACK: the reconnect backoff's exponent and the
/// bounded-rate "broker unreachable" warning.
#[derive(Debug, Default)]
pub(crate) struct ConnectFailures {
    /// Errors in a row since the last CONNACK, a lost connection included.
    errors: u32,
    /// Connection attempts that failed since the last CONNACK.
    attempts: u64,
    first: Option<Instant>,
    last_warned: Option<Instant>,
}

impl ConnectFailures {
    /// An established connection was lost. Returns the errors in a row (the backoff exponent).
    pub(crate) fn on_lost(&mut self) -> u32 {
        self.errors = self.errors.saturating_add(1);
        self.errors
    }

    /// A connection attempt failed at `now`. Returns the errors in a row, and the warning due
    /// now: the first failure at once, then at most one per [`UNREACHABLE_WARN_EVERY`].
    pub(crate) fn on_attempt_failed(&mut self, now: Instant) -> (u32, Option<Unreachable>) {
        self.errors = self.errors.saturating_add(1);
        self.attempts += 1;
        let first = *self.first.get_or_insert(now);
        let due = match self.last_warned {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= UNREACHABLE_WARN_EVERY,
        };
        let warn = due.then(|| {
            self.last_warned = Some(now);
            Unreachable {
                attempts: self.attempts,
                for_: now.saturating_duration_since(first),
            }
        });
        (self.errors, warn)
    }

    /// A CONNACK: returns how many attempts failed before it, and starts over.
    pub(crate) fn on_connack(&mut self) -> u64 {
        let n = self.attempts;
        *self = ConnectFailures::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_is_jittered_between_min_and_a_doubling_ceiling() {
        let ms = Duration::from_millis;
        let (min, max) = (ms(500), ms(30_000));
        // (failures, jitter, expected)
        let table = [
            (0, 0.5, ms(500)),     // ceiling = min: nothing to jitter
            (1, 0.0, ms(500)),     // never below min
            (1, 0.5, ms(750)),     // [500, 1000]
            (1, 0.999, ms(999)),   // below the ceiling
            (2, 0.5, ms(1_250)),   // [500, 2000]
            (3, 1.0, ms(4_000)),   // the ceiling itself
            (6, 1.0, ms(30_000)),  // 32 000 capped at max
            (6, 0.5, ms(15_250)),  // [500, 30000]
            (40, 0.5, ms(15_250)), // far past the cap
            (u32::MAX, 1.0, ms(30_000)),
            (3, f64::NAN, ms(500)), // a broken sample falls back to the floor
            (3, -1.0, ms(500)),
            (3, 7.0, ms(4_000)),
        ];
        for (failures, jitter, want) in table {
            assert_eq!(
                reconnect_delay(min, max, failures, jitter),
                want,
                "failures {failures}, jitter {jitter}"
            );
        }
        // max below min (refused by config, but never a panic or a zero wait)
        assert_eq!(reconnect_delay(ms(500), ms(100), 3, 0.5), ms(500));
    }

    #[test]
    fn unreachable_broker_warns_at_once_then_at_a_bounded_rate_with_the_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = ConnectFailures::default();
        let (errors, warn) = f.on_attempt_failed(t0);
        assert_eq!(errors, 1);
        assert_eq!(
            warn,
            Some(Unreachable {
                attempts: 1,
                for_: Duration::ZERO
            })
        );
        for k in 1..10 {
            assert_eq!(f.on_attempt_failed(t0 + s(k * 3)).1, None, "at {} s", k * 3);
        }
        assert_eq!(
            f.on_attempt_failed(t0 + s(30)).1,
            Some(Unreachable {
                attempts: 11,
                for_: s(30)
            })
        );
        assert_eq!(f.on_attempt_failed(t0 + s(59)).1, None);
        assert_eq!(f.on_connack(), 12);
        // a lost connection grows the backoff but is not "unreachable"; the next failure warns
        assert_eq!(f.on_lost(), 1);
        let (errors, warn) = f.on_attempt_failed(t0 + s(61));
        assert_eq!(errors, 2);
        assert_eq!(warn.map(|w| w.attempts), Some(1));
    }
}
