//! The drain's bounded window over the log: one cursor per lane reads pending records in seq
//! order into memory ([`Drain::refill`]), at most `WINDOW_RECORDS` per lane and `WINDOW_BYTES`
//! in all; a record is held until it is settled. The reconcile (D4) checks the window against
//! the log.

use std::collections::HashSet;

use alertbridge_wal::Key;

use super::storm::Storm;
use super::{wal_call, Drain, DrainError, Held, WINDOW_BYTES, WINDOW_RECORDS};
use crate::events;
use crate::schedule::{self, Sighting};

impl Drain {
    /// Takes a record under `key` into the window.
    pub(super) fn hold(&mut self, key: Key, held: Held) {
        self.held_bytes += held.record.payload.len();
        if let Some(old) = self.held.insert(key, held) {
            self.held_bytes -= old.record.payload.len();
        } else {
            *self.held_per_lane.entry(key.priority).or_default() += 1;
        }
    }

    /// Lets go of `key` (settled in the log, or re-keyed by an update).
    pub(super) fn release(&mut self, key: Key) -> Option<Held> {
        let held = self.held.remove(&key)?;
        self.held_bytes -= held.record.payload.len();
        if let Some(n) = self.held_per_lane.get_mut(&key.priority) {
            *n = n.saturating_sub(1);
        }
        Some(held)
    }

    /// Ingest appended: every lane's cursor may find more.
    pub(super) fn appended(&mut self) {
        self.caught_up.values_mut().for_each(|c| *c = false);
        self.lanes_stale = true;
    }

    /// Tops up each lane's window from the log, in seq order, each alert at its persisted next
    /// attempt time (so a restart does not turn a backlog in backoff into a retry stampede),
    /// but never more than `backoff_max` from now (C2: the wall clock may have been set back
    /// since it was written). Undecodable records become dead letters of kind `Corrupt` (I4):
    /// counted and visible, never a panic, never a stuck cursor. Returns how many records were
    /// taken in.
    pub(super) async fn refill(&mut self) -> Result<usize, DrainError> {
        let mut taken = 0;
        if self.lanes_stale {
            self.lanes = wal_call(&self.wal, "lanes", |w| w.lanes()).await?;
            self.lanes_stale = false;
        }
        for lane in self.lanes.clone() {
            if self.caught_up.get(&lane).copied().unwrap_or(false) {
                continue;
            }
            let held = self.held_per_lane.get(&lane).copied().unwrap_or(0);
            if held >= WINDOW_RECORDS / 2 || self.held_bytes >= WINDOW_BYTES {
                continue;
            }
            let want = WINDOW_RECORDS - held;
            let mut cursor = self
                .cursors
                .remove(&lane)
                .unwrap_or_else(|| self.wal.cursor(lane));
            let (cursor, page) = wal_call(&self.wal, "read", move |w| {
                let page = w.read(&mut cursor, want);
                (cursor, page)
            })
            .await?;
            self.cursors.insert(lane, cursor);
            let page = page?;
            self.caught_up.insert(lane, page.len() < want);
            for item in page {
                match item {
                    Ok((key, record)) => {
                        if self.held.contains_key(&key) {
                            continue;
                        }
                        // Both clocks read together, after the page came in: a due time
                        // computed from a later wall reading would otherwise fire early.
                        let (now, wall) = (self.clock.sched_ms(), self.clock.wall_ms());
                        let due =
                            schedule::due_in(record.next_attempt_ms, wall, self.cfg.backoff.max);
                        // Each clock is read to the ms (truncated): one ms more so the alert
                        // never goes before its persisted time.
                        let due = match due.as_millis() as u64 {
                            0 => 0,
                            ms => ms + 1,
                        };
                        self.queue.insert(key, now + due, now);
                        let seen = Sighting::new(record.received_at_ms, wall, now);
                        self.hold(
                            key,
                            Held {
                                record,
                                seen,
                                answers: Vec::new(),
                            },
                        );
                        taken += 1;
                    }
                    Err(corrupt) => self.dead_letter_corrupt(corrupt).await?,
                }
            }
        }
        Ok(taken)
    }

    /// Checks the drain against the log (D4 in the module doc); returns whether it repaired
    /// something.
    pub(super) async fn reconcile(&mut self) -> Result<bool, DrainError> {
        // 1. Every held record is queued, in flight, or a storm member.
        let mut accounted: HashSet<Key> = self
            .in_flight
            .values()
            .flat_map(|f| f.keys.iter().copied())
            .collect();
        if let Some(storm) = &self.storm {
            accounted.extend(storm.member_keys());
        }
        let stranded: Vec<Key> = self
            .held
            .keys()
            .filter(|k| !accounted.contains(k) && !self.queue.contains(**k))
            .copied()
            .collect();
        if !stranded.is_empty() {
            let now = self.clock.sched_ms();
            let ids: Vec<String> = stranded
                .iter()
                .filter_map(|k| self.held.get(k).map(|h| h.record.alert_id.clone()))
                .collect();
            for key in stranded {
                self.queue.insert(key, now, now);
            }
            events::drain_repaired(
                &self.counters,
                "alerts held in memory but neither queued, in flight nor in a storm window: queued again",
                ids.len() as u64,
                &ids,
            );
            return Ok(true);
        }
        // 2. Holding nothing with every cursor at the end means nothing is pending.
        let idle = self.held.is_empty()
            && self.tasks.is_empty()
            && self.storm.as_ref().is_none_or(Storm::is_empty)
            && !self.lanes_stale
            && self
                .lanes
                .iter()
                .all(|l| self.caught_up.get(l).copied().unwrap_or(false));
        if !idle {
            self.reconcile_suspect = false;
            return Ok(false);
        }
        let pending = wal_call(&self.wal, "stats", |w| w.stats()).await??.pending;
        if pending == 0 {
            self.reconcile_suspect = false;
            return Ok(false);
        }
        if !self.reconcile_suspect {
            // An append may have raced this check: look again shortly.
            self.reconcile_suspect = true;
            return Ok(false);
        }
        self.reconcile_suspect = false;
        events::drain_repaired(
            &self.counters,
            "alerts pending in the log that the drain had lost track of: reading the log again from the start",
            pending,
            &[],
        );
        self.cursors.clear();
        self.caught_up.clear();
        self.lanes_stale = true;
        Ok(true)
    }
}
