//! Settle: one path applies a delivery's answer to any [`Job`] — a single alert or a storm
//! summary — and to the pacing state. The table in the module doc of `drain` says what each
//! answer does; here it is kept once for both kinds of job:
//!
//! - accepted: every member removed with a receipt (I3 per member); with `[receipts]`
//!   configured the removal also queues the receipt to publish, in the same log frame (RC1) —
//!   dead letters (rejected, expired, unconfirmed, exhausted) queue theirs inside the log's own
//!   move to dead letters, so no path here can forget one;
//! - retryable: the job waits `max(Retry-After, jittered backoff)` (a single alert's record is
//!   re-appended with its history; a summary is kept in the storm state), or, after
//!   `max_timeouts` unanswered requests, every member becomes an `Unconfirmed` dead letter (T1);
//! - permanently rejected: every member a `Rejected` dead letter with the job's attempt history,
//!   unless the run of identical rejections holds it (R1);
//! - configuration fault: kept, not an attempt, delivery paused.

use std::time::{Duration, Instant};

use alertbridge_genesys::Disposition;
use alertbridge_wal::{
    CorruptPending, DeadKind, DeadReason, Key, OutboxEntry, Receipt, ReceiptState, Record, WalError,
};

use super::job::{Done, Job};
use super::{
    still_pending, wal_call, Drain, DrainError, Held, MAX_ANSWERS_KEPT, MAX_CLIENT_WIDE_WAIT,
};
use crate::breaker::{Hold, Transition, Verdict};
use crate::clock;
use crate::events::{
    self, AlertDeadLettered, AlertDelivered, BreakerOpened, BreakerReopened, DeliveryPaused,
    DeliveryRetried, Throttled,
};
use crate::schedule::{self, Sighting};

impl Drain {
    /// Apply one delivery outcome to the log and to the pacing state.
    pub(super) async fn settle(&mut self, done: Done) -> Result<(), DrainError> {
        let Done {
            mut job,
            disposition,
            probe,
            sent_at,
        } = done;
        let now_i = clock::now();
        events::request_answered(
            &self.counters,
            disposition.status(),
            now_i.saturating_duration_since(sent_at),
        );
        match disposition {
            Disposition::Delivered(r) => {
                self.delivered(&job, &r).await?;
                self.rejections.on_accepted();
                self.accepted(probe);
            }
            Disposition::Retry {
                after,
                reason,
                status,
                timed_out,
            } => {
                self.pace_retry(after, status, &reason, sent_at, now_i);
                self.note_answer(&job, &reason);
                let timeouts = job.history.failed(&reason, timed_out);
                if timed_out && self.cfg.max_timeouts > 0 && timeouts >= self.cfg.max_timeouts {
                    // T1: it may have been launched each time; another request may launch it
                    // once more. Not sent again.
                    let message = self.unconfirmed_reason(&job, timeouts);
                    self.dead_letter_job(&job, DeadKind::Unconfirmed, &message, None, None)
                        .await?;
                } else {
                    let delay = self.retry_delay(job.history.attempts, after);
                    let (alert_id, attempts) = (job.alert_id.clone(), job.history.attempts);
                    if self.requeue(job, delay).await? {
                        DeliveryRetried {
                            alert_id: &alert_id,
                            reason: &reason,
                            status,
                            attempts,
                            after: delay,
                            timed_out,
                        }
                        .emit(&self.counters);
                    }
                }
                self.retry_breaker(status, probe, &reason, now_i);
            }
            Disposition::DeadLetter {
                status,
                reason,
                api_message,
                code,
            } => {
                let verdict = self.rejections.on_rejection(status, code.as_deref());
                if let Verdict::Hold { .. } = verdict {
                    // The same rejection as the run that paused delivery: the configuration,
                    // not this job. Keep it, not as an attempt, ready when the pause ends.
                    job.history.not_an_attempt(&reason);
                    self.requeue(job, Duration::ZERO).await?;
                } else {
                    let message =
                        job.member_reason(reason.clone(), &format!("Genesys rejected: {reason}"));
                    self.dead_letter_job(
                        &job,
                        DeadKind::Rejected,
                        &message,
                        Some(status),
                        api_message,
                    )
                    .await?;
                }
                match verdict {
                    Verdict::Hold { count } | Verdict::DeadLetterAndPause { count } => {
                        let why =
                            self.rejection_pause_reason(status, code.as_deref(), count, &reason);
                        self.pause(&why, Some(status), None, now_i);
                    }
                    // a permanent rejection is an answer: the API is up
                    Verdict::DeadLetter => self.api_answered(probe),
                }
            }
            Disposition::Pause {
                reason,
                status,
                after,
            } => {
                // Configuration fault: not this job's fault. Keep it, not as an attempt, ready
                // to go as soon as the pause ends.
                job.history.not_an_attempt(&reason);
                self.requeue(job, Duration::ZERO).await?;
                self.pause(&reason, status, after, now_i);
            }
        }
        Ok(())
    }

    /// Every alert of an accepted job leaves pending with a receipt (I3 per member).
    async fn delivered(
        &mut self,
        job: &Job,
        r: &alertbridge_genesys::Receipt,
    ) -> Result<(), DrainError> {
        let wall = self.clock.wall_ms();
        // A receipt has no field for "covered by summary X": a summary's members' correlation
        // id says so, followed by the request's own correlation id.
        let correlation = match (&job.coalesced, &r.correlation_id) {
            (None, c) => c.clone(),
            (Some(_), Some(c)) => Some(format!("summary:{} correlation:{c}", job.alert_id)),
            (Some(_), None) => Some(format!("summary:{}", job.alert_id)),
        };
        let mut removed = 0usize;
        for m in &job.members {
            let receipt = Receipt {
                alert_id: m.alert_id.clone(),
                seq: m.key.seq,
                delivered_at_ms: wall,
                status: r.status,
                execution_id: r.execution_id.clone(),
                correlation_id: correlation.clone(),
                attempts: job.history.attempts,
                received_at_ms: m.received_at_ms,
            };
            let key = m.key;
            // With receipts configured the removal and the receipt to publish are one frame
            // (RC1); without, `remove_and_queue` is a plain removal.
            let gone = if self.wal.outbox_enabled() {
                let entry = OutboxEntry {
                    alert_id: m.alert_id.clone(),
                    topic: m.topic.clone(),
                    state: ReceiptState::Delivered,
                    at_ms: wall,
                    received_at_ms: m.received_at_ms,
                    attempts: job.history.attempts,
                    status: Some(r.status),
                    execution_id: r.execution_id.clone(),
                    correlation_id: correlation.clone(),
                    dead: None,
                    reply: m.reply.clone(),
                };
                wal_call(&self.wal, "remove_and_queue", move |w| {
                    w.remove_and_queue(key, receipt, &entry)
                })
                .await?
            } else {
                wal_call(&self.wal, "remove", move |w| w.remove(key, receipt)).await?
            };
            self.release(key);
            self.unflushed = true;
            if still_pending(gone)? {
                removed += 1;
                AlertDelivered {
                    alert_id: &m.alert_id,
                    seq: m.key.seq,
                    status: r.status,
                    execution_id: r.execution_id.as_deref(),
                    latency: Duration::from_millis(wall.saturating_sub(m.received_at_ms)),
                    attempts: job.history.attempts,
                    priority: m.key.priority,
                }
                .emit(&self.counters);
            }
        }
        if let Some(c) = &job.coalesced {
            tracing::info!(
                summary_id = %job.alert_id,
                site = %c.site,
                alerts = removed,
                status = r.status,
                execution_id = r.execution_id.as_deref().unwrap_or(""),
                correlation_id = r.correlation_id.as_deref().unwrap_or(""),
                attempts = job.history.attempts,
                "storm summary delivered; its alerts are removed with its receipt"
            );
        }
        Ok(())
    }

    /// Puts a job that was not settled back to wait `delay` (zero: ready now). A single alert's
    /// record is re-appended with the job's history and its next attempt time; a summary is
    /// kept in the storm state, its members untouched in the log. Returns whether it is still
    /// pending.
    async fn requeue(&mut self, mut job: Job, delay: Duration) -> Result<bool, DrainError> {
        let now = self.clock.sched_ms();
        let delay_ms = delay.as_millis() as u64;
        if let Some(c) = job.coalesced.as_mut() {
            c.next_attempt_ms = if delay.is_zero() { 0 } else { now + delay_ms };
            self.keep_summary(job);
            return Ok(true);
        }
        let Some(key) = job.members.first().map(|m| m.key) else {
            return Ok(false);
        };
        let Some(mut record) = self.held.get(&key).map(|h| h.record.clone()) else {
            tracing::warn!(alert_id = %job.alert_id, seq = key.seq, "alert no longer held; nothing to settle");
            return Ok(false);
        };
        job.history.apply(&mut record);
        record.next_attempt_ms = if delay.is_zero() {
            0
        } else {
            self.clock.wall_ms().saturating_add(delay_ms)
        };
        match self.rekey(key, record).await? {
            Some(key) => {
                self.queue.insert(key, now + delay_ms, now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every alert `job` settles becomes a dead letter with `message` and the job's attempt
    /// history.
    async fn dead_letter_job(
        &mut self,
        job: &Job,
        kind: DeadKind,
        message: &str,
        status: Option<u16>,
        api_message: Option<String>,
    ) -> Result<(), DrainError> {
        for m in &job.members {
            let Some(mut record) = self.held.get(&m.key).map(|h| h.record.clone()) else {
                tracing::warn!(alert_id = %m.alert_id, seq = m.key.seq, "alert no longer held; nothing to settle");
                continue;
            };
            job.history.apply(&mut record);
            self.dead_letter(
                m.key,
                &record,
                kind,
                message.to_owned(),
                status,
                api_message.clone(),
            )
            .await?;
        }
        Ok(())
    }

    /// Keeps the correlation id of a retryable answer with each alert of the job, for an
    /// `Unconfirmed` dead letter's reason.
    fn note_answer(&mut self, job: &Job, reason: &str) {
        let Some(id) = correlation_in(reason) else {
            return;
        };
        for m in &job.members {
            if let Some(h) = self.held.get_mut(&m.key) {
                if h.answers.len() < MAX_ANSWERS_KEPT {
                    h.answers.push(id.to_owned());
                }
            }
        }
    }

    /// The reason of an `Unconfirmed` dead letter (T1) for the alerts of `job`.
    fn unconfirmed_reason(&self, job: &Job, timeouts: u32) -> String {
        let answers = job
            .members
            .first()
            .and_then(|m| self.held.get(&m.key))
            .map(|h| h.answers.clone())
            .unwrap_or_default();
        let text = self.unconfirmed_reason_text(&job.alert_id, timeouts, &answers);
        job.member_reason(format!("alert {}: {text}", job.alert_id), &text)
    }

    /// Persist the record (attempt history), then move it to dead letters with the reason.
    pub(super) async fn dead_letter(
        &mut self,
        key: Key,
        record: &Record,
        kind: DeadKind,
        message: String,
        status: Option<u16>,
        api_message: Option<String>,
    ) -> Result<(), DrainError> {
        let reason = DeadReason {
            kind,
            message,
            status,
            api_message,
        };
        // The record carries the attempt history, so the dead letter shows it.
        let (owned, dead, wall) = (record.clone(), reason.clone(), self.clock.wall_ms());
        let moved = wal_call(&self.wal, "dead_letter_record", move |w| {
            w.dead_letter_record(key, &owned, dead, wall).map(|_| ())
        })
        .await?;
        if let Err(WalError::NoSpace { .. }) = moved {
            // Not written: it stays pending (and held, with the attempt history it has now),
            // tried again when space may be back.
            tracing::warn!(alert_id = %record.alert_id, "filesystem full: the dead letter waits; retrying in 5 s");
            let (now, wall) = (self.clock.sched_ms(), self.clock.wall_ms());
            match self.held.get_mut(&key) {
                Some(h) => h.record = record.clone(),
                None => {
                    let seen = Sighting::new(record.received_at_ms, wall, now);
                    self.hold(
                        key,
                        Held {
                            record: record.clone(),
                            seen,
                            answers: Vec::new(),
                        },
                    );
                }
            }
            self.queue.insert(key, now + 5_000, now);
            return Ok(());
        }
        self.release(key);
        self.queue.remove(key);
        if !still_pending(moved)? {
            return Ok(());
        }
        AlertDeadLettered {
            alert_id: &record.alert_id,
            kind,
            reason: &reason.message,
            status,
            attempts: record.attempts,
        }
        .emit(&self.counters);
        Ok(())
    }

    pub(super) async fn dead_letter_corrupt(
        &mut self,
        corrupt: CorruptPending,
    ) -> Result<(), DrainError> {
        let now = self.clock.wall_ms();
        let reason = DeadReason {
            kind: DeadKind::Corrupt,
            message: format!("record could not be decoded: {}", corrupt.error),
            status: None,
            api_message: None,
        };
        let dead = reason.clone();
        let moved = wal_call(&self.wal, "dead_letter_corrupt", move |w| {
            w.dead_letter_corrupt(&corrupt, dead, now).map(|_| ())
        })
        .await?;
        if still_pending(moved)? {
            AlertDeadLettered {
                alert_id: "",
                kind: DeadKind::Corrupt,
                reason: &reason.message,
                status: None,
                attempts: 0,
            }
            .emit(&self.counters);
        }
        Ok(())
    }

    /// Persists a record's new attempt fields: the log re-appends it under a new key, which
    /// replaces the old one here too. `None` if it was no longer pending.
    pub(super) async fn rekey(
        &mut self,
        key: Key,
        record: Record,
    ) -> Result<Option<Key>, DrainError> {
        let owned = record.clone();
        let updated = wal_call(&self.wal, "update", move |w| w.update(key, &owned)).await?;
        let (seen, answers) = match self.release(key) {
            Some(h) => (h.seen, h.answers),
            None => (
                Sighting::new(
                    record.received_at_ms,
                    self.clock.wall_ms(),
                    self.clock.sched_ms(),
                ),
                Vec::new(),
            ),
        };
        match updated {
            Ok(new) => {
                self.hold(
                    new,
                    Held {
                        record,
                        seen,
                        answers,
                    },
                );
                Ok(Some(new))
            }
            // Not persisted (a full disk): the attempt fields live in memory under the old key;
            // a crash forgets them, which only repeats an attempt.
            Err(WalError::NoSpace { .. }) => {
                self.hold(
                    key,
                    Held {
                        record,
                        seen,
                        answers,
                    },
                );
                Ok(Some(key))
            }
            Err(e) => {
                still_pending(Err(e))?;
                Ok(None)
            }
        }
    }

    /// Pacing after a retryable answer: a `Retry-After` of a 429/503 holds the whole client, a
    /// 429 lowers the rate.
    fn pace_retry(
        &mut self,
        after: Option<Duration>,
        status: Option<u16>,
        reason: &str,
        sent_at: Instant,
        now_i: Instant,
    ) {
        let throttled = status == Some(429);
        if let Some(a) = after.filter(|_| matches!(status, Some(429 | 503))) {
            let hold = a.min(MAX_CLIENT_WIDE_WAIT);
            self.limiter.retry_after(now_i, hold);
            if !throttled {
                events::unavailable_for(hold);
            }
        }
        if throttled {
            let lowered = self.limiter.on_throttled(sent_at, now_i);
            Throttled {
                reason,
                retry_after: after,
                lowered,
                rate_per_sec: self.limiter.rate(),
            }
            .emit(&self.counters);
        }
    }

    /// The breaker after a retryable answer: a 429 (the limiter deals with the rate) and a
    /// 408/409/423/425 (a busy or locked resource: transient by definition) are answers — the
    /// API is up, and counting them would open the breaker and hold every other alert for an
    /// API that works. Anything else (5xx, timeout, connect error) counts as a failure.
    fn retry_breaker(
        &mut self,
        status: Option<u16>,
        probe: Option<u64>,
        reason: &str,
        now_i: Instant,
    ) {
        if matches!(status, Some(408 | 409 | 423 | 425 | 429)) {
            self.api_answered(probe);
        } else {
            let t = self.breaker.on_failure(now_i, probe);
            self.breaker_moved(t, reason);
        }
    }

    /// Hold delivery after a configuration fault.
    fn pause(
        &mut self,
        reason: &str,
        status: Option<u16>,
        after: Option<Duration>,
        now_i: Instant,
    ) {
        let wait = after.unwrap_or(self.cfg.breaker_cooldown);
        self.breaker.pause(now_i, wait);
        DeliveryPaused {
            reason,
            status,
            retry_in: wait,
        }
        .emit(&self.counters);
    }

    /// The pause reason of a run of identical rejections (R1), shown in status.
    fn rejection_pause_reason(
        &self,
        status: u16,
        code: Option<&str>,
        count: u32,
        last: &str,
    ) -> String {
        let code = code.map(|c| format!(" {c}")).unwrap_or_default();
        format!(
            "{count} requests in a row rejected alike (HTTP {status}{code}): the configuration, not the alerts, is the likely cause (e.g. the flow's input schema or the mapping changed); the first {} are dead letters (replay them after the fix), the rest stay pending; last answer: {last}",
            self.cfg.pause_after_rejections
        )
    }

    /// "went unanswered N times …": what an operator needs before replaying it.
    fn unconfirmed_reason_text(&self, alert_id: &str, timeouts: u32, answers: &[String]) -> String {
        let base = self.client.request_timeout();
        let waits: Vec<String> = (0..timeouts)
            .map(|k| {
                let t = schedule::request_timeout(base, k, self.cfg.max_request_timeout);
                format!("{} s", t.as_secs_f64())
            })
            .collect();
        let seen = if answers.is_empty() {
            "no execution or correlation id was seen (no answer came back)".to_owned()
        } else {
            format!(
                "correlation ids of its other answers: {}",
                answers.join(", ")
            )
        };
        format!(
            "went unanswered within the request timeout {timeouts} times (waited {}; delivery.max_timeouts = {}): Genesys may have launched it up to {timeouts} times, so it is not sent again; check the flow's executions for alertId {alert_id} before replaying it; {seen}",
            waits.join(", "),
            self.cfg.max_timeouts
        )
    }

    /// Keeps a summary that was not settled until its next attempt.
    fn keep_summary(&mut self, batch: Job) {
        match self.storm.as_mut() {
            Some(storm) => storm.keep(batch),
            // Cannot happen (summaries exist only with a storm state); the members are still
            // pending in the log and go out after a restart.
            None => {
                tracing::error!(summary_id = %batch.alert_id, "storm summary without storm state; its alerts stay pending")
            }
        }
    }

    /// An accepted request: the rate may creep back up, the API is up.
    fn accepted(&mut self, probe: Option<u64>) {
        let restored = self.limiter.on_success();
        events::rate_changed(&self.counters, self.limiter.rate(), restored);
        self.api_answered(probe);
    }

    /// How long a job (alert or storm summary) that failed `attempts` times waits.
    fn retry_delay(&self, attempts: u32, after: Option<Duration>) -> Duration {
        schedule::retry_delay(&self.cfg.backoff, attempts, after, fastrand::f64())
    }

    /// The API answered something other than a retryable failure: the breaker counts it.
    fn api_answered(&mut self, probe: Option<u64>) {
        let t = self.breaker.on_success(probe);
        self.breaker_moved(t, "");
    }

    /// Events for a breaker transition caused by an answer.
    pub(super) fn breaker_moved(&mut self, t: Option<Transition>, reason: &str) {
        match t {
            Some(Transition::Opened { failures }) => BreakerOpened {
                failures,
                reason,
                cooldown: self.breaker.cooldown(),
            }
            .emit(&self.counters),
            Some(Transition::Reopened { was }) => {
                if was == Hold::Paused {
                    // the configuration fault is gone; the API is failing now
                    events::delivery_resumed(&self.counters);
                }
                BreakerReopened {
                    reason,
                    cooldown: self.breaker.cooldown(),
                }
                .emit(&self.counters);
            }
            Some(Transition::Closed { was }) => {
                match was {
                    Hold::Failures => events::breaker_closed(&self.counters),
                    Hold::Paused => events::delivery_resumed(&self.counters),
                }
                // The API works again: the backoff the alerts collected while it did not says
                // nothing any more; the limiter paces the backlog (critical first).
                self.queue.promote_all();
                if let Some(storm) = self.storm.as_mut() {
                    storm.promote_all();
                }
            }
            Some(Transition::HalfOpen { .. }) | None => {}
        }
    }
}

/// The correlation id a Genesys reason ends with (`"… [correlation_id abc]"`), if any.
pub(super) fn correlation_in(reason: &str) -> Option<&str> {
    let rest = &reason[reason.rfind("[correlation_id ")? + "[correlation_id ".len()..];
    rest.split_once(']')
        .map(|(id, _)| id)
        .filter(|id| !id.is_empty())
}
