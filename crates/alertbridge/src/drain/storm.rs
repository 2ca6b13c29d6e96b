//! Storm coalescing in the drain (`[mapping.coalesce]`, off by default): the drain's side of
//! the [`Coalescer`] (coalescer.rs), whose members are the drain's [`Member`]s.
//!
//! The drain offers each alert it is about to send for the first time (`attempts == 0`). An
//! alert the coalescer absorbs is not sent: it becomes a [`Member`] held here, **and stays
//! pending in the log** (nothing is written for it). When its site's window ends, the members
//! become one summary [`Job`]: the summary's `data` (from `Mapper::map_summary`) plus the alerts
//! it covers. The drain sends it like an alert (breaker, limiter, in-flight cap) and settles it
//! through the same `settle` as an alert, for every member at once:
//!
//! - accepted: each member is removed from pending with a receipt carrying the summary's
//!   execution id, and `correlation_id = "summary:<summary alert id>"` (plus the request's
//!   correlation id), so the receipts are the summary's audit record;
//! - permanently rejected (or unanswered `max_timeouts` times): each member becomes a dead
//!   letter naming the summary and the reason, with the summary's attempt history;
//! - retryable or paused: the job is kept here with its next attempt time; the members stay
//!   pending and untouched.
//!
//! This state is in memory only. After a crash (or a shutdown) the members are still pending
//! with `attempts == 0`: the restarted drain offers them again and they are re-coalesced into a
//! new window (or delivered singly if the storm is over). Nothing is lost; a crash after the
//! summary was accepted but before the removals reached disk sends a second summary, like a
//! single alert is sent twice in that window.

use alertbridge_payload::{CoalesceConfig, Identity, Mapped, Mapper};
use alertbridge_wal::{Key, Record};

use super::coalescer::{CoalesceDecision, Coalescer};
use super::job::{Coalesced, History, Job, Member};

/// The drain's coalescing state. Owned by the drain task only.
#[derive(Debug)]
pub(crate) struct Storm {
    /// The windows, with the absorbed alerts as members until their window's summary is built.
    /// They are in neither the drain's queue nor a task; dropping them (crash, shutdown) leaves
    /// them pending in the log.
    coalescer: Coalescer<Member>,
    /// Summaries built and not yet settled (due now, or waiting for a retry).
    batches: Vec<Job>,
}

impl Storm {
    /// The drain's storm state for an enabled `[mapping.coalesce]`.
    pub(crate) fn new(cfg: &CoalesceConfig) -> Storm {
        Storm {
            coalescer: Coalescer::new(cfg),
            batches: Vec::new(),
        }
    }

    /// Offer an alert about to be sent at `now_ms`. `true`: it was absorbed and is held here
    /// (the caller must not send it); `false`: send it as usual. Only alerts never tried before
    /// are offered: one already sent singly stays single.
    pub(crate) fn offer(
        &mut self,
        now_ms: u64,
        key: Key,
        record: &Record,
        mapped: &Mapped,
    ) -> bool {
        if record.attempts > 0 {
            return false;
        }
        let identity = Identity {
            alert_id: mapped.alert_id.clone(),
            priority: mapped.priority,
            level: mapped.level.clone(),
        };
        let member = Member::of(key, record);
        match self
            .coalescer
            .offer(now_ms, &identity, mapped, mapped.site.as_deref(), member)
        {
            CoalesceDecision::Deliver => false,
            CoalesceDecision::Absorbed { site, flush_at_ms } => {
                tracing::debug!(
                    alert_id = %mapped.alert_id,
                    seq = key.seq,
                    site = %site,
                    flush_at_ms,
                    "alert absorbed into a storm summary; it stays pending until the summary is accepted"
                );
                true
            }
        }
    }

    /// Build the summaries of every window that ended by `now_ms`; they are ready at once.
    /// The summary's first/last times are the members' receive times (the window itself runs on
    /// the drain's clock).
    pub(crate) fn flush_due(&mut self, now_ms: u64, mapper: &Mapper) {
        for (mut summary, members) in self.coalescer.flush_due(now_ms) {
            if members.is_empty() {
                continue;
            }
            summary.count = u64::try_from(members.len()).unwrap_or(u64::MAX);
            if let (Some(first), Some(last)) = (
                members.iter().map(|m| m.received_at_ms).min(),
                members.iter().map(|m| m.received_at_ms).max(),
            ) {
                summary.first_ms = first;
                summary.last_ms = last;
            }
            let mapped = mapper.map_summary(&summary);
            tracing::info!(
                summary_id = %mapped.alert_id,
                site = %summary.site,
                alert_count = summary.count,
                delivered_individually = summary.delivered_individually,
                device_count = summary.devices.len(),
                worst_level = summary.worst_level.as_deref().unwrap_or(""),
                "storm summary ready"
            );
            self.batches.push(Job {
                alert_id: mapped.alert_id,
                data: mapped.data,
                members,
                history: History::default(),
                coalesced: Some(Coalesced {
                    site: summary.site,
                    critical: summary.critical,
                    next_attempt_ms: 0,
                }),
            });
        }
    }

    /// Whether a summary may be sent at `now_ms`.
    pub(crate) fn has_ready(&self, now_ms: u64) -> bool {
        self.batches.iter().any(|b| next_attempt_ms(b) <= now_ms)
    }

    /// Take the next summary to send at `now_ms`: critical ones first, then the longest waiting.
    pub(crate) fn take_ready(&mut self, now_ms: u64) -> Option<Job> {
        let i = self
            .batches
            .iter()
            .enumerate()
            .filter(|(_, b)| next_attempt_ms(b) <= now_ms)
            .min_by_key(|(_, b)| {
                (
                    !b.coalesced.as_ref().is_some_and(|c| c.critical),
                    next_attempt_ms(b),
                )
            })
            .map(|(i, _)| i)?;
        Some(self.batches.remove(i))
    }

    /// Keep a summary that was not settled (retry, pause) until its `next_attempt_ms`.
    pub(crate) fn keep(&mut self, batch: Job) {
        self.batches.push(batch);
    }

    /// Make every kept summary ready now (the API is back, like `Queue::promote_all`).
    pub(crate) fn promote_all(&mut self) {
        for c in self.batches.iter_mut().filter_map(|b| b.coalesced.as_mut()) {
            c.next_attempt_ms = 0;
        }
    }

    /// The keys of every alert held here: absorbed into an open window, or a member of a
    /// summary waiting to be sent (the drain's reconcile accounts for them).
    pub(crate) fn member_keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.coalescer
            .members()
            .chain(self.batches.iter().flat_map(|b| b.members.iter()))
            .map(|m| m.key)
    }

    /// Nothing absorbed and no summary waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.coalescer.is_empty() && self.batches.is_empty()
    }

    /// The next time after `now_ms` something here needs the drain: a window ending or a
    /// summary's retry (summaries ready now but held by the breaker or the limiter are the
    /// drain's `held` wait, not a wake-up: that would spin).
    pub(crate) fn next_wakeup_ms(&self, now_ms: u64) -> Option<u64> {
        let retry = self
            .batches
            .iter()
            .map(next_attempt_ms)
            .filter(|t| *t > now_ms)
            .min();
        [self.coalescer.next_flush_ms(), retry]
            .into_iter()
            .flatten()
            .min()
    }
}

/// When a kept summary may go (every job kept here is one).
fn next_attempt_ms(job: &Job) -> u64 {
    job.coalesced.as_ref().map_or(0, |c| c.next_attempt_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alertbridge_payload::MappingConfig;
    use alertbridge_wal::PRIORITY_CRITICAL;
    use serde_json::Value;

    fn mapper(min_count: u32) -> Mapper {
        let mut cfg = MappingConfig::default();
        cfg.coalesce.enabled = true;
        cfg.coalesce.window_ms = 1_000;
        cfg.coalesce.min_count = min_count;
        cfg.coalesce.site = "site".into();
        Mapper::new(&cfg).expect("test mapping is valid")
    }

    fn alert(m: &Mapper, seq: u64, level: &str, device: &str) -> (Key, Record, Mapped) {
        let payload = serde_json::json!({
            "alert_id": format!("a{seq}"),
            "site": "north",
            "device_id": device,
            "alert_level": level,
        })
        .to_string()
        .into_bytes();
        let mapped = m.map("plant/x", &payload).expect("test alert maps");
        let priority = if level == "critical" {
            PRIORITY_CRITICAL
        } else {
            PRIORITY_CRITICAL + 1
        };
        let record = Record::new(
            mapped.alert_id.clone(),
            "plant/x",
            payload,
            priority,
            10_000 + seq,
        );
        (Key { priority, seq }, record, mapped)
    }

    #[test]
    fn absorbed_alerts_come_back_as_the_members_of_their_summary() {
        let m = mapper(2);
        let mut s = Storm::new(m.coalesce().expect("enabled"));
        let levels = ["warning", "info", "major", "warning"];
        let mut absorbed = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let (k, r, mp) = alert(&m, i as u64, level, &format!("d{}", i % 2));
            if s.offer(100, k, &r, &mp) {
                absorbed.push(k);
            }
        }
        // the first alert of the window goes singly, the rest are held
        assert_eq!(absorbed.len(), 3);
        assert!(!s.has_ready(1_099));
        s.flush_due(1_099, &m);
        assert!(!s.has_ready(1_099));
        assert_eq!(s.next_wakeup_ms(1_099), Some(1_100));
        s.flush_due(1_100, &m);
        let b = s.take_ready(1_100).expect("summary ready");
        assert_eq!(
            b.members.iter().map(|m| m.key).collect::<Vec<_>>(),
            absorbed
        );
        assert_eq!(b.data["summary"], Value::Bool(true));
        assert_eq!(b.data["alertCount"], Value::from(3));
        assert_eq!(b.data["deliveredIndividually"], Value::from(1));
        assert_eq!(b.data["deviceCount"], Value::from(2));
        assert_eq!(b.data["alertLevel"], Value::from("major"));
        // first/last are the members' receive times
        assert_eq!(b.data["firstMs"], Value::from(10_001));
        assert_eq!(b.data["lastMs"], Value::from(10_003));
        assert_eq!(b.data["alertId"], Value::from(b.alert_id.clone()));
        assert!(s.coalescer.is_empty());
        assert!(s.take_ready(u64::MAX).is_none());
    }

    #[test]
    fn critical_and_already_tried_alerts_are_never_absorbed() {
        let m = mapper(1);
        let mut s = Storm::new(m.coalesce().expect("enabled"));
        let (k, r, mp) = alert(&m, 1, "critical", "d");
        assert!(!s.offer(0, k, &r, &mp));
        let (k, mut r, mp) = alert(&m, 2, "warning", "d");
        r.attempts = 1;
        assert!(!s.offer(0, k, &r, &mp));
        let (k, r, mp) = alert(&m, 3, "warning", "d");
        assert!(s.offer(0, k, &r, &mp));
    }

    #[test]
    fn a_kept_summary_waits_for_its_next_attempt_until_promoted() {
        let m = mapper(1);
        let mut s = Storm::new(m.coalesce().expect("enabled"));
        let (k, r, mp) = alert(&m, 1, "warning", "d");
        assert!(s.offer(0, k, &r, &mp));
        s.flush_due(1_000, &m);
        let mut b = s.take_ready(1_000).expect("ready");
        b.history.attempts = 1;
        if let Some(c) = b.coalesced.as_mut() {
            c.next_attempt_ms = 5_000;
        }
        s.keep(b);
        assert!(s.take_ready(4_999).is_none());
        assert_eq!(s.next_wakeup_ms(1_000), Some(5_000));
        s.promote_all();
        assert_eq!(s.take_ready(1_001).map(|b| b.history.attempts), Some(1));
    }
}
