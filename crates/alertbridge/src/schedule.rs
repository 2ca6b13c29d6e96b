//! Pure scheduling decisions: when to try an alert again, which alert goes next, whether it
//! expired. No I/O and no clock: callers pass `now_ms` and a jitter sample, so every rule is a
//! table-driven test.
//!
//! # Two clocks
//! The drain schedules on a **monotonic** clock (its `sched` ms: an `Instant` expressed as ms,
//! starting at the wall time the drain started) and reads the **wall** clock only for what is
//! stored or shown. A gateway without a real-time clock boots with an old wall time and NTP
//! later jumps it hours ahead (or back); what must stay true through such a jump:
//! - C1 A jump never expires an alert: its age is the age it had when the drain first read it
//!   plus monotonic time since ([`Sighting`]). A jump *after* that changes nothing.
//! - C2 A jump never puts the backlog to sleep: retry times in memory are monotonic; a retry
//!   time read back from the log (wall ms, persisted) is due at most `backoff_max` from now
//!   ([`due_in`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use alertbridge_wal::{Key, PRIORITY_CRITICAL};

/// Exponential backoff parameters (`[delivery] backoff_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay ceiling of the first retry.
    pub initial: Duration,
    /// Largest delay ceiling.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Backoff {
    /// The ceiling for retry number `attempts` (1 = first retry): `initial · multiplier^(attempts-1)`,
    /// capped at `max`.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let ms = self.initial.as_millis() as f64 * self.multiplier.powi(exp);
        let capped = ms.min(self.max.as_millis() as f64);
        Duration::from_millis(capped as u64)
    }
}

/// How long to wait after a retryable failure: "full jitter" (a uniform sample in
/// `[0, ceiling]`, AWS architecture blog) so a thousand alerts that failed together do not retry
/// together, but never less than the server's `Retry-After`.
///
/// `jitter` is a sample in `[0, 1)`. The drain adds the delay to its monotonic clock for the
/// queue and to the wall clock for the persisted `next_attempt_ms`, so a restart does not turn
/// a backlog into a retry stampede.
pub fn retry_delay(
    backoff: &Backoff,
    attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let ceiling = backoff.ceiling(attempts).as_millis() as f64;
    let jittered = (ceiling * jitter.clamp(0.0, 1.0)) as u64;
    let floor = retry_after.map(|d| d.as_millis() as u64).unwrap_or(0);
    Duration::from_millis(jittered.max(floor))
}

/// [`retry_delay`] from `now_ms`, as an absolute time.
pub fn next_attempt_ms(
    backoff: &Backoff,
    attempts: u32,
    retry_after: Option<Duration>,
    now_ms: u64,
    jitter: f64,
) -> u64 {
    let delay = retry_delay(backoff, attempts, retry_after, jitter).as_millis() as u64;
    now_ms.saturating_add(delay)
}

/// How long from now a retry time read back from the log is due (C2). `next_attempt_ms` is
/// wall-clock ms as persisted (0 = now); one more than `max` ahead (the wall clock was set back
/// since, or it was wrong when the time was written) counts as due `max` from now, so no
/// clock jump can park an alert for longer than the longest backoff.
pub fn due_in(next_attempt_ms: u64, wall_now_ms: u64, max: Duration) -> Duration {
    Duration::from_millis(next_attempt_ms.saturating_sub(wall_now_ms)).min(max)
}

/// When the drain first read an alert: how old it was then (by the wall clock: now minus its
/// `received_at_ms`) and the drain's monotonic time then. Its age later is that age plus the
/// monotonic time since (C1), so a wall-clock jump after the first read neither ages nor
/// rejuvenates it. Kept in memory with the record the drain holds, across its re-keys.
///
/// What it cannot fix: an alert first read after a jump that happened between its receipt and
/// the read (e.g. received with the wrong boot time, read after a restart once NTP corrected
/// it) gets the wall clock's view of its age, like before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// Age when first read, ms.
    age_ms: u64,
    /// The drain's monotonic ms at that read.
    at_ms: u64,
}

impl Sighting {
    /// First read now: `wall_now_ms` by the wall clock, `mono_now_ms` by the monotonic one. A
    /// receive time in the future (the wall clock was set back since) counts as age 0.
    pub fn new(received_at_ms: u64, wall_now_ms: u64, mono_now_ms: u64) -> Sighting {
        Sighting {
            age_ms: wall_now_ms.saturating_sub(received_at_ms),
            at_ms: mono_now_ms,
        }
    }

    /// Age at monotonic time `mono_now_ms`.
    pub fn age_ms(&self, mono_now_ms: u64) -> u64 {
        self.age_ms
            .saturating_add(mono_now_ms.saturating_sub(self.at_ms))
    }
}

/// The timeout of an attempt after `timeouts` timed-out ones: `base` doubled per timeout, at
/// most `cap` (never less than `base`). A slow API then gets a longer wait for its answer
/// instead of another launch of the same alert (T1).
pub fn request_timeout(base: Duration, timeouts: u32, cap: Duration) -> Duration {
    let factor = 1u32 << timeouts.min(16);
    base.saturating_mul(factor).min(cap.max(base))
}

/// How an alert's timed-out attempts are counted (T1): in the persisted record's `last_error`,
/// as a prefix `[timeouts N] ` before the reason. The record is the on-disk format and has no
/// field for it; `last_error` is free text the agent alone writes (every reason starts with the
/// agent's or the Genesys client's own words, never with this tag), so a record without the
/// tag — written by an older release, or never timed out — counts 0, and an older release
/// reading the tag shows it as part of the text. `docs/decisions.md` says why.
const TIMEOUTS_TAG: &str = "[timeouts ";

/// Timed-out attempts recorded in a `last_error` ([`with_timeouts`]).
pub fn timeouts_in(last_error: Option<&str>) -> u32 {
    last_error
        .and_then(|e| e.strip_prefix(TIMEOUTS_TAG))
        .and_then(|rest| rest.split_once("] "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// `reason` as the `last_error` of an alert with `timeouts` timed-out attempts so far: tagged
/// when there were any (the count outlives the reason of a later, different failure).
pub fn with_timeouts(reason: &str, timeouts: u32) -> String {
    // a reason that is itself tagged (it never is) would be counted twice: strip it
    let reason = match reason.strip_prefix(TIMEOUTS_TAG) {
        Some(rest) => rest.split_once("] ").map_or(reason, |(_, r)| r),
        None => reason,
    };
    if timeouts == 0 {
        reason.to_owned()
    } else {
        format!("{TIMEOUTS_TAG}{timeouts}] {reason}")
    }
}

/// Whether an alert of age `age_ms` is past its lane's max age.
pub fn expired(age_ms: u64, ttl: Option<Duration>) -> bool {
    match ttl {
        Some(ttl) => age_ms > ttl.as_millis() as u64,
        None => false,
    }
}

/// The drain's in-memory picture of pending keys: which are ready, which wait for their next
/// attempt time. The log is the truth; this is rebuilt from it at start. Keys being delivered
/// are not in it (the drain puts them back when the answer is settled).
///
/// Order: critical lane first, then arrival (`seq`). Fairness: after `normal_every` critical
/// picks in a row while a normal alert is ready, one normal alert goes — critical alerts come
/// first during a backlog, but the others are never starved forever.
#[derive(Debug)]
pub struct Queue {
    /// Every queued key with the time it may go (0 = ready). The waiting heap may hold stale
    /// entries (a key removed or re-timed since); an entry counts only if it matches this map.
    members: BTreeMap<Key, u64>,
    ready: BTreeSet<Key>,
    waiting: BinaryHeap<Reverse<(u64, Key)>>,
    normal_every: u32,
    critical_streak: u32,
}

/// The first key of the lanes after the critical one.
const FIRST_NORMAL: Key = Key {
    priority: PRIORITY_CRITICAL + 1,
    seq: 0,
};

impl Queue {
    /// Empty queue with the given fairness ratio.
    pub fn new(normal_every: u32) -> Queue {
        Queue {
            members: BTreeMap::new(),
            ready: BTreeSet::new(),
            waiting: BinaryHeap::new(),
            normal_every: normal_every.max(1),
            critical_streak: 0,
        }
    }

    /// Add a key that may be tried at `not_before_ms` (0 = now). A key already queued is
    /// re-timed.
    pub fn insert(&mut self, key: Key, not_before_ms: u64, now_ms: u64) {
        if not_before_ms <= now_ms {
            self.members.insert(key, 0);
            self.ready.insert(key);
        } else {
            self.ready.remove(&key);
            self.members.insert(key, not_before_ms);
            self.waiting.push(Reverse((not_before_ms, key)));
        }
    }

    /// Take a key out (it was dead-lettered while queued). Returns whether it was queued.
    pub fn remove(&mut self, key: Key) -> bool {
        self.ready.remove(&key);
        self.members.remove(&key).is_some()
    }

    /// Move every key whose time has come into the ready set.
    pub fn promote(&mut self, now_ms: u64) {
        while let Some(Reverse((at, _))) = self.waiting.peek() {
            if *at > now_ms {
                break;
            }
            if let Some(Reverse((at, key))) = self.waiting.pop() {
                if let Some(t) = self.members.get_mut(&key) {
                    if *t == at {
                        *t = 0;
                        self.ready.insert(key);
                    }
                }
            }
        }
    }

    /// Make every waiting key ready now (the breaker closed after an outage: the backoff the
    /// alerts collected while the API was down says nothing any more, and the limiter paces
    /// them). `Retry-After` stays in force through the limiter.
    pub fn promote_all(&mut self) {
        self.waiting.clear();
        for (key, at) in self.members.iter_mut() {
            *at = 0;
            self.ready.insert(*key);
        }
    }

    /// Earliest time a waiting key becomes ready.
    pub fn next_wakeup_ms(&mut self) -> Option<u64> {
        // drop stale entries so a removed key does not cause useless wake-ups
        while let Some(Reverse((at, key))) = self.waiting.peek() {
            if self.members.get(key) == Some(at) {
                return Some(*at);
            }
            self.waiting.pop();
        }
        None
    }

    /// The first queued key (ready or waiting) of the critical lane (`critical = true`) or of
    /// the other lanes: the oldest arrival, since `seq` grows with arrival (with more than one
    /// non-critical lane: the oldest of the highest of them).
    pub fn oldest(&self, critical: bool) -> Option<Key> {
        let mut lane = if critical {
            self.members.range(..FIRST_NORMAL)
        } else {
            self.members.range(FIRST_NORMAL..)
        };
        lane.next().map(|(k, _)| *k)
    }

    /// Take the next key to send, honouring lane order and fairness.
    pub fn pick(&mut self) -> Option<Key> {
        let first = *self.ready.iter().next()?;
        let key = if first.priority == PRIORITY_CRITICAL {
            let normal = self.ready.range(FIRST_NORMAL..).next().copied();
            match normal {
                Some(n) if self.critical_streak >= self.normal_every => {
                    self.critical_streak = 0;
                    n
                }
                Some(_) => {
                    self.critical_streak += 1;
                    first
                }
                None => {
                    self.critical_streak = 0;
                    first
                }
            }
        } else {
            self.critical_streak = 0;
            first
        };
        self.ready.remove(&key);
        self.members.remove(&key);
        Some(key)
    }

    /// Whether `key` is queued (ready or waiting).
    pub fn contains(&self, key: Key) -> bool {
        self.members.contains_key(&key)
    }

    /// Keys ready now.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Keys waiting for a retry time.
    pub fn waiting_len(&self) -> usize {
        self.members.len() - self.ready.len()
    }

    /// Keys queued (ready or waiting).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alertbridge_wal::PRIORITY_NORMAL;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(3),
        max: Duration::from_secs(300),
        multiplier: 3.0,
    };

    fn key(priority: u8, seq: u64) -> Key {
        Key { priority, seq }
    }

    #[test]
    fn backoff_ceiling_grows_and_caps() {
        let table = [
            (1, 3_000),
            (2, 9_000),
            (3, 27_000),
            (4, 81_000),
            (5, 243_000),
            (6, 300_000),
            (60, 300_000),
        ];
        for (attempts, ms) in table {
            assert_eq!(
                B.ceiling(attempts),
                Duration::from_millis(ms),
                "attempt {attempts}"
            );
        }
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        assert_eq!(next_attempt_ms(&B, 2, None, 1_000, 0.0), 1_000);
        assert_eq!(next_attempt_ms(&B, 2, None, 1_000, 0.5), 1_000 + 4_500);
        assert!(next_attempt_ms(&B, 2, None, 1_000, 0.999_999) <= 1_000 + 9_000);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let after = Some(Duration::from_secs(20));
        assert_eq!(next_attempt_ms(&B, 1, after, 0, 0.1), 20_000);
        // a larger jittered delay still wins over a small Retry-After
        assert_eq!(
            next_attempt_ms(&B, 3, Some(Duration::from_secs(1)), 0, 1.0),
            27_000
        );
    }

    #[test]
    fn ttl_expiry() {
        assert!(!expired(10_000, None));
        assert!(!expired(10_000, Some(Duration::from_secs(10))));
        assert!(expired(10_001, Some(Duration::from_secs(10))));
    }

    const HOUR: u64 = 3_600_000;

    /// Issue 9, item 5 (C1): the TTL age was `wall now - received_at`, so NTP jumping the wall
    /// clock of an RTC-less gateway hours ahead expired alerts received seconds before. A faked
    /// wall clock jumps 5 h ahead after the first read: the age follows the monotonic clock.
    #[test]
    fn a_forward_wall_clock_jump_of_hours_does_not_age_an_alert_received_seconds_ago() {
        let received = 100 * HOUR;
        let (wall, mono) = (received + 2_000, 50_000);
        let seen = Sighting::new(received, wall, mono);
        assert_eq!(seen.age_ms(mono), 2_000);
        // 3 s later by the monotonic clock; the wall clock now says 5 h later
        let wall_after_jump = wall + 5 * HOUR;
        let age = seen.age_ms(mono + 3_000);
        assert_eq!(age, 5_000);
        let ttl = Some(Duration::from_secs(60));
        assert!(!expired(age, ttl), "fresh alert expired by a clock jump");
        // the old rule would have expired it
        assert!(expired(wall_after_jump + 3_000 - received, ttl));
        // a jump back leaves the age alone too, and a receive time "in the future" is age 0
        assert_eq!(seen.age_ms(mono + 61_000), 63_000);
        assert!(expired(seen.age_ms(mono + 61_000), ttl));
        assert_eq!(Sighting::new(received, received - HOUR, 0).age_ms(10), 10);
    }

    /// Issue 9, item 5 (C2): a persisted retry time far ahead of the wall clock (set back by
    /// NTP, or written while the clock was ahead) used to park the alert until the wall clock
    /// caught up, hours later. Read back, it is due at most `backoff_max` from now.
    #[test]
    fn a_persisted_retry_time_is_due_at_most_the_longest_backoff_from_now() {
        let max = B.max;
        let now = 10 * HOUR;
        let table = [
            (0, 0),                    // never tried
            (now - 5_000, 0),          // past: due now (the clock jumped ahead)
            (now + 20_000, 20_000),    // an ordinary backoff
            (now + 300_000, 300_000),  // exactly the longest backoff
            (now + 5 * HOUR, 300_000), // the clock was set back 5 h: clamped
            (u64::MAX, 300_000),
        ];
        for (next, due) in table {
            assert_eq!(
                due_in(next, now, max),
                Duration::from_millis(due),
                "next_attempt_ms {next}"
            );
        }
    }

    #[test]
    fn the_timeout_doubles_per_timed_out_attempt_up_to_the_cap() {
        let s = Duration::from_secs;
        let table = [(0, 10), (1, 20), (2, 40), (3, 60), (30, 60)];
        for (timeouts, secs) in table {
            assert_eq!(
                request_timeout(s(10), timeouts, s(60)),
                s(secs),
                "{timeouts}"
            );
        }
        // a cap below the configured timeout never shortens it
        assert_eq!(request_timeout(s(10), 2, s(5)), s(10));
    }

    /// Issue 9, item 7: the record has no field for timed-out attempts; the count lives in
    /// `last_error` as a tag and survives a different failure in between.
    #[test]
    fn the_timeout_count_is_kept_in_last_error_and_survives_other_failures() {
        assert_eq!(timeouts_in(None), 0);
        assert_eq!(timeouts_in(Some("server error: HTTP 503")), 0);
        let first = with_timeouts("timed out waiting for the answer", 1);
        assert_eq!(first, "[timeouts 1] timed out waiting for the answer");
        assert_eq!(timeouts_in(Some(&first)), 1);
        // a 503 in between keeps the count
        let then = with_timeouts(
            "server error: HTTP 503 [correlation_id c-1]",
            timeouts_in(Some(&first)),
        );
        assert_eq!(timeouts_in(Some(&then)), 1);
        assert!(then.ends_with("HTTP 503 [correlation_id c-1]"));
        assert_eq!(with_timeouts("x", 0), "x");
        // never tagged twice
        assert_eq!(
            with_timeouts(&first, 2),
            "[timeouts 2] timed out waiting for the answer"
        );
        // odd texts count 0
        for odd in [
            "[timeouts x] y",
            "[timeouts 3]",
            "[timeouts ] y",
            " [timeouts 2] y",
        ] {
            assert_eq!(timeouts_in(Some(odd)), 0, "{odd}");
        }
    }

    #[test]
    fn retry_delay_is_the_next_attempt_minus_now() {
        for (attempts, after, jitter) in [(1, None, 0.3), (4, Some(Duration::from_secs(50)), 0.1)] {
            let d = retry_delay(&B, attempts, after, jitter);
            assert_eq!(
                next_attempt_ms(&B, attempts, after, 7_000, jitter),
                7_000 + d.as_millis() as u64
            );
        }
    }

    #[test]
    fn critical_first_then_arrival_order() {
        let mut q = Queue::new(100);
        q.insert(key(PRIORITY_NORMAL, 1), 0, 0);
        q.insert(key(PRIORITY_CRITICAL, 5), 0, 0);
        q.insert(key(PRIORITY_NORMAL, 2), 0, 0);
        q.insert(key(PRIORITY_CRITICAL, 3), 0, 0);
        let order: Vec<u64> = std::iter::from_fn(|| q.pick()).map(|k| k.seq).collect();
        assert_eq!(order, vec![3, 5, 1, 2]);
    }

    #[test]
    fn normal_lane_is_not_starved() {
        let mut q = Queue::new(3);
        for s in 0..10 {
            q.insert(key(PRIORITY_CRITICAL, s), 0, 0);
        }
        q.insert(key(PRIORITY_NORMAL, 100), 0, 0);
        let picks: Vec<Key> = (0..5).filter_map(|_| q.pick()).collect();
        assert_eq!(picks[3], key(PRIORITY_NORMAL, 100), "{picks:?}");
    }

    #[test]
    fn removed_and_re_timed_keys_leave_no_stale_entries() {
        let mut q = Queue::new(10);
        q.insert(key(PRIORITY_NORMAL, 1), 5_000, 1_000);
        q.insert(key(PRIORITY_NORMAL, 2), 6_000, 1_000);
        assert!(q.remove(key(PRIORITY_NORMAL, 1)));
        assert!(!q.remove(key(PRIORITY_NORMAL, 1)));
        assert_eq!(
            q.next_wakeup_ms(),
            Some(6_000),
            "the removed key wakes nobody"
        );
        // re-timed later: the earlier heap entry is stale
        q.insert(key(PRIORITY_NORMAL, 2), 9_000, 1_000);
        q.promote(6_000);
        assert_eq!(q.pick(), None);
        assert_eq!((q.len(), q.waiting_len()), (1, 1));
        q.promote(9_000);
        assert_eq!(q.pick(), Some(key(PRIORITY_NORMAL, 2)));
        assert!(q.is_empty());
    }

    #[test]
    fn promote_all_makes_every_waiting_key_ready_in_lane_order() {
        let mut q = Queue::new(10);
        q.insert(key(PRIORITY_NORMAL, 1), 0, 0);
        q.insert(key(PRIORITY_CRITICAL, 2), 300_000, 0);
        q.insert(key(PRIORITY_NORMAL, 3), 100_000, 0);
        q.promote_all();
        assert_eq!(q.next_wakeup_ms(), None);
        let order: Vec<u64> = std::iter::from_fn(|| q.pick()).map(|k| k.seq).collect();
        assert_eq!(order, vec![2, 1, 3]);
    }

    #[test]
    fn oldest_per_lane_sees_ready_and_waiting_keys() {
        let mut q = Queue::new(10);
        assert_eq!(q.oldest(true), None);
        q.insert(key(PRIORITY_NORMAL, 7), 50_000, 0);
        q.insert(key(PRIORITY_NORMAL, 9), 0, 0);
        q.insert(key(PRIORITY_CRITICAL, 8), 0, 0);
        assert_eq!(q.oldest(false), Some(key(PRIORITY_NORMAL, 7)));
        assert_eq!(q.oldest(true), Some(key(PRIORITY_CRITICAL, 8)));
        q.remove(key(PRIORITY_NORMAL, 7));
        assert_eq!(q.oldest(false), Some(key(PRIORITY_NORMAL, 9)));
    }

    #[test]
    fn fairness_pattern_is_exactly_normal_every_critical_then_one_normal() {
        let mut q = Queue::new(3);
        for s in 0..9 {
            q.insert(key(PRIORITY_CRITICAL, s), 0, 0);
        }
        for s in 100..105 {
            q.insert(key(PRIORITY_NORMAL, s), 0, 0);
        }
        let lanes: String = std::iter::from_fn(|| q.pick())
            .map(|k| {
                if k.priority == PRIORITY_CRITICAL {
                    'C'
                } else {
                    'N'
                }
            })
            .collect();
        assert_eq!(lanes, "CCCNCCCNCCCNNN");
    }

    #[test]
    fn waiting_keys_become_ready_at_their_time() {
        let mut q = Queue::new(10);
        q.insert(key(PRIORITY_NORMAL, 1), 5_000, 1_000);
        assert_eq!(q.pick(), None);
        assert_eq!(q.next_wakeup_ms(), Some(5_000));
        q.promote(4_999);
        assert_eq!(q.pick(), None);
        q.promote(5_000);
        assert_eq!(q.pick(), Some(key(PRIORITY_NORMAL, 1)));
    }
}
