//! The agent's clocks: unix ms by the wall clock ([`now_ms`]), an instant on tokio's clock
//! ([`now`]: the pure state machines take `std` instants, and a test that pauses tokio's time
//! moves these too), and the drain's pair of scheduling and wall clocks ([`Clock`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time in ms by the system's wall clock (0 if it is set before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now on tokio's clock, as a `std` instant for the pure rules (limiter, breaker, session).
/// Under `tokio::time::pause()` it moves with tokio's time, which `Instant::now()` does not.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A wall-clock jump bigger than this (wall time moved that much more or less than monotonic
/// time since the last look) is logged and counted.
const CLOCK_JUMP_LOGGED: Duration = Duration::from_secs(2);

/// Where the wall clock is read: the system clock, or a test's faked one.
pub(crate) type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The drain's two clocks (see `schedule.rs`, "Two clocks"). Scheduling — the queue's retry
/// times, storm windows, TTL ages, wake-ups — runs on [`Clock::sched_ms`]: tokio's monotonic
/// clock as ms, starting at the wall time the drain started, so its values read like unix ms in
/// logs but never jump. The wall clock is read for what is stored or shown (attempt, receipt and
/// dead-letter times, the persisted `next_attempt_ms`) and for an alert's age when the drain
/// first reads it.
#[derive(Clone)]
pub(crate) struct Clock {
    origin: Instant,
    origin_ms: u64,
    wall: WallClock,
    /// `wall - sched` at the last look, for the jump warning.
    skew_ms: i64,
}

impl Clock {
    /// Clocks starting now, reading the wall clock from `wall`.
    pub(crate) fn new(wall: WallClock) -> Clock {
        let origin_ms = wall();
        Clock {
            origin: now(),
            origin_ms,
            wall,
            skew_ms: 0,
        }
    }

    /// Clocks on the system's wall clock.
    pub(crate) fn system() -> Clock {
        Clock::new(Arc::new(now_ms))
    }

    /// Monotonic ms (see the type's doc).
    pub(crate) fn sched_ms(&self) -> u64 {
        let elapsed = now().saturating_duration_since(self.origin);
        self.origin_ms.saturating_add(elapsed.as_millis() as u64)
    }

    /// Unix ms by the wall clock.
    pub(crate) fn wall_ms(&self) -> u64 {
        (self.wall)()
    }

    /// By how much the wall clock jumped since the last call, if more than
    /// [`CLOCK_JUMP_LOGGED`] (positive: ahead).
    pub(crate) fn jumped(&mut self) -> Option<i64> {
        let skew = self.wall_ms() as i64 - self.sched_ms() as i64;
        let jump = skew - self.skew_ms;
        self.skew_ms = skew;
        (jump.unsigned_abs() > CLOCK_JUMP_LOGGED.as_millis() as u64).then_some(jump)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn the_scheduling_clock_follows_paused_tokio_time_and_ignores_wall_jumps() {
        let offset = Arc::new(AtomicI64::new(0));
        let o = offset.clone();
        let mut clock = Clock::new(Arc::new(move || {
            (1_000_000 + o.load(Ordering::Relaxed)) as u64
        }));
        assert_eq!(clock.sched_ms(), 1_000_000);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(clock.sched_ms(), 1_003_000);
        // the wall clock stood still for 3 s of monotonic time: a jump back
        assert_eq!(clock.jumped(), Some(-3_000));
        offset.store(3_000, Ordering::Relaxed);
        assert_eq!(clock.jumped(), Some(3_000));
        assert_eq!(clock.jumped(), None);
    }
}
