//! Expiry: an alert older than its lane's TTL (`ttl_critical`, `ttl_normal`) becomes a dead
//! letter `Expired`, checked before it is sent and swept once a second while nothing can be sent
//! (breaker open, paused, backlog), so an expiry is visible when it happens. Ages follow C1 in
//! `schedule.rs`: a wall-clock jump never expires an alert.

use std::time::Duration;

use alertbridge_wal::{DeadKind, Key, Record, PRIORITY_CRITICAL};

use super::{Drain, DrainError, SWEEP_MAX};
use crate::schedule;

impl Drain {
    pub(super) fn ttl(&self, key: Key) -> Option<Duration> {
        if key.priority == PRIORITY_CRITICAL {
            self.cfg.ttl_critical
        } else {
            self.cfg.ttl_normal
        }
    }

    /// Dead-letter an alert of age `age_ms` (C1) that passed its lane's `ttl`.
    pub(super) async fn expire(
        &mut self,
        key: Key,
        record: &Record,
        ttl: Duration,
        age_ms: u64,
    ) -> Result<(), DrainError> {
        let age = Duration::from_millis(age_ms);
        let lane = if key.priority == PRIORITY_CRITICAL {
            "critical"
        } else {
            "normal"
        };
        let mut message = format!(
            "expired: not delivered within the {lane} lane's TTL of {} s (age {} s, {} attempt(s))",
            ttl.as_secs(),
            age.as_secs(),
            record.attempts
        );
        if let Some(e) = &record.last_error {
            message.push_str("; last error: ");
            message.push_str(e);
        }
        let status = record.last_error.as_deref().and_then(status_in);
        self.dead_letter(key, record, DeadKind::Expired, message, status, None)
            .await
    }

    /// Dead-letter the queued alerts that passed their lane's TTL, oldest first, while they
    /// wait (breaker open, paused, backlog). Stops at the first one still young: `seq` grows
    /// with arrival, so the rest of the lane is younger.
    pub(super) async fn sweep_expired(&mut self) -> Result<(), DrainError> {
        let now = self.clock.sched_ms();
        for critical in [true, false] {
            let ttl = if critical {
                self.cfg.ttl_critical
            } else {
                self.cfg.ttl_normal
            };
            let Some(ttl) = ttl else { continue };
            let mut swept = 0;
            while swept < SWEEP_MAX {
                let Some(key) = self.queue.oldest(critical) else {
                    // The window of this lane is empty: the log may hold more behind it.
                    if self.refill().await? == 0 {
                        break;
                    }
                    continue;
                };
                match self.held.get(&key).cloned() {
                    Some(h) if schedule::expired(h.seen.age_ms(now), Some(ttl)) => {
                        self.expire(key, &h.record, ttl, h.seen.age_ms(now)).await?;
                        swept += 1;
                    }
                    Some(_) => break,
                    None => {
                        self.queue.remove(key);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The HTTP status a Genesys reason starts with (`"…: HTTP 503 …"`), for an expired alert's
/// dead letter.
pub(super) fn status_in(reason: &str) -> Option<u16> {
    let rest = &reason[reason.find("HTTP ")? + 5..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}
