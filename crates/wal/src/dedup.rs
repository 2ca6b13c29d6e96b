//! The dedup window: which alert identities were persisted recently, bounded by time and by count.
//!
//! An identity is the pair (topic, alert id): a device's alert id names an alert of that device
//! only, so two devices that both send `"alert_id": 1` are two alerts. Identities are kept as the
//! first 16 bytes of a SHA-256 ([`IdHash`]): memory per entry is fixed whatever the id's length,
//! and a collision (about 2^-64 for a window of 100 000) is far below any other failure rate of
//! the gateway. The window is saved in each checkpoint and rebuilt from
//! the `Put` frames written after it, so it survives a restart.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

/// First 16 bytes of the SHA-256 of an alert id.
pub(crate) type IdHash = u128;

/// Hashes an alert identity (topic, alert id) for the window.
pub(crate) fn id_hash(topic: &str, alert_id: &str) -> IdHash {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(alert_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

/// Recently persisted ids, oldest first, with the time each was persisted (the record's
/// `received_at_ms`).
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    /// id → time of its latest entry in `order`.
    latest: HashMap<IdHash, u64>,
    /// (id, time) in insertion order; an entry whose time differs from `latest` is stale.
    order: VecDeque<(IdHash, u64)>,
    max_count: usize,
    window_ms: u64,
}

impl Dedup {
    /// A window of at most `max_count` ids no older than `window_ms`; either 0 disables it.
    pub(crate) fn new(max_count: usize, window_ms: u64) -> Dedup {
        Dedup {
            max_count,
            window_ms,
            ..Dedup::default()
        }
    }

    /// Whether the window is on.
    pub(crate) fn enabled(&self) -> bool {
        self.max_count > 0 && self.window_ms > 0
    }

    /// Whether `id` was persisted within the window before `now_ms`.
    pub(crate) fn contains(&self, id: IdHash, now_ms: u64) -> bool {
        self.enabled()
            && self
                .latest
                .get(&id)
                .is_some_and(|&at| now_ms.saturating_sub(at) <= self.window_ms)
    }

    /// Remembers `id` as persisted at `at_ms`, then evicts beyond the bounds.
    pub(crate) fn insert(&mut self, id: IdHash, at_ms: u64) {
        if !self.enabled() {
            return;
        }
        self.latest.insert(id, at_ms);
        self.order.push_back((id, at_ms));
        self.evict(at_ms);
    }

    /// Takes back the `n` newest inserts (a batch that was not written after all). Entries they
    /// evicted stay evicted: the window then forgets a little early, which can only let a
    /// redelivery through as a duplicate delivery, never drop an alert.
    pub(crate) fn undo_last(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, at)) = self.order.pop_back() else {
                return;
            };
            if self.latest.get(&id) == Some(&at) {
                match self.order.iter().rev().find(|(i, _)| *i == id) {
                    Some(&(_, older)) => {
                        self.latest.insert(id, older);
                    }
                    None => {
                        self.latest.remove(&id);
                    }
                }
            }
        }
    }

    /// Drops entries older than the window (relative to `now_ms`) or beyond the count.
    pub(crate) fn evict(&mut self, now_ms: u64) {
        while let Some(&(id, at)) = self.order.front() {
            let too_many = self.latest.len() > self.max_count;
            let too_old = now_ms.saturating_sub(at) > self.window_ms;
            let stale = self.latest.get(&id) != Some(&at);
            if !(too_many || too_old || stale) {
                break;
            }
            self.order.pop_front();
            if !stale {
                self.latest.remove(&id);
            }
        }
    }

    /// Ids remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.latest.len()
    }

    /// The live entries, oldest first (what a checkpoint saves).
    pub(crate) fn entries(&self) -> Vec<(IdHash, u64)> {
        self.order
            .iter()
            .filter(|(id, at)| self.latest.get(id) == Some(at))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_only_inside_the_time_window() {
        let mut d = Dedup::new(100, 1_000);
        d.insert(id_hash("t", "a"), 10_000);
        assert!(d.contains(id_hash("t", "a"), 10_500));
        assert!(d.contains(id_hash("t", "a"), 11_000));
        assert!(!d.contains(id_hash("t", "a"), 11_001));
        assert!(!d.contains(id_hash("t", "b"), 10_500));
    }

    #[test]
    fn the_count_bound_evicts_the_oldest() {
        let mut d = Dedup::new(2, 60_000);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            d.insert(id_hash("t", id), 1_000 + i as u64);
        }
        assert_eq!(d.len(), 2);
        assert!(!d.contains(id_hash("t", "a"), 1_010));
        assert!(d.contains(id_hash("t", "c"), 1_010));
    }

    #[test]
    fn the_same_alert_id_on_another_topic_is_another_identity() {
        assert_ne!(id_hash("plant/pump-1", "1"), id_hash("plant/pump-2", "1"));
        assert_eq!(id_hash("plant/pump-1", "1"), id_hash("plant/pump-1", "1"));
        // The separator keeps ("a/b", "c") and ("a", "b/c")-like splits apart.
        assert_ne!(id_hash("ab", "c"), id_hash("a", "bc"));
    }

    #[test]
    fn undo_takes_back_the_newest_inserts_only() {
        let mut d = Dedup::new(10, 60_000);
        d.insert(id_hash("t", "a"), 1_000);
        d.insert(id_hash("t", "b"), 1_001);
        d.insert(id_hash("t", "c"), 1_002);
        d.undo_last(2);
        assert!(d.contains(id_hash("t", "a"), 1_003));
        assert!(!d.contains(id_hash("t", "b"), 1_003));
        assert!(!d.contains(id_hash("t", "c"), 1_003));
        assert_eq!(d.entries(), vec![(id_hash("t", "a"), 1_000)]);
    }

    #[test]
    fn a_zero_window_disables_dedup() {
        for mut d in [Dedup::new(0, 1_000), Dedup::new(10, 0)] {
            d.insert(id_hash("t", "a"), 5);
            assert!(!d.contains(id_hash("t", "a"), 5));
            assert_eq!(d.len(), 0);
        }
    }

    #[test]
    fn a_reinserted_id_keeps_its_newest_time() {
        let mut d = Dedup::new(10, 1_000);
        d.insert(id_hash("t", "a"), 1_000);
        d.insert(id_hash("t", "b"), 1_500);
        d.insert(id_hash("t", "a"), 1_900);
        d.evict(2_600);
        assert!(d.contains(id_hash("t", "a"), 2_600));
        assert!(!d.contains(id_hash("t", "b"), 2_600));
        assert_eq!(d.entries(), vec![(id_hash("t", "a"), 1_900)]);
    }
}
