//! Pure scheduling decisions: when to try an alert again, which alert goes next, whether it
//! expired. No I/O and no clock: callers pass `now_ms` and a jitter sample, so every rule is a
//! table-driven test.

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

/// When to try again after a retryable failure: "full jitter" (a uniform sample in
/// `[0, ceiling]`, AWS architecture blog) so a thousand alerts that failed together do not retry
/// together, but never earlier than the server's `Retry-After`.
///
/// `jitter` is a sample in `[0, 1)`; the result is absolute unix ms and is persisted in the record,
/// so a restart does not turn a backlog into a retry stampede.
pub fn next_attempt_ms(
    backoff: &Backoff,
    attempts: u32,
    retry_after: Option<Duration>,
    now_ms: u64,
    jitter: f64,
) -> u64 {
    let ceiling = backoff.ceiling(attempts).as_millis() as f64;
    let jittered = (ceiling * jitter.clamp(0.0, 1.0)) as u64;
    let floor = retry_after.map(|d| d.as_millis() as u64).unwrap_or(0);
    now_ms.saturating_add(jittered.max(floor))
}

/// Whether a record is past its lane's max age.
pub fn expired(received_at_ms: u64, now_ms: u64, ttl: Option<Duration>) -> bool {
    match ttl {
        Some(ttl) => now_ms.saturating_sub(received_at_ms) > ttl.as_millis() as u64,
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
        assert!(!expired(0, 10_000, None));
        assert!(!expired(0, 10_000, Some(Duration::from_secs(10))));
        assert!(expired(0, 10_001, Some(Duration::from_secs(10))));
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
