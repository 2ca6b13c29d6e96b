//! Drain: pending alerts → Genesys, paced, retried, never lost.
//!
//! One task owns every decision (queue, limiter, breaker); deliveries run as child tasks and
//! report their [`Disposition`] back here, so the log is changed from one place only.
//!
//! Invariant **I3**: a record leaves `pending` only through `Wal::remove` after a 2xx, or through
//! the atomic move `Wal::dead_letter` with a reason. Retryable failures, pauses, shutdown and
//! crashes all leave it pending (its `next_attempt_ms` persisted), so the worst case is a second
//! delivery, never a missing one.
//!
//! # What each answer does
//! | answer | alert | pacing |
//! |---|---|---|
//! | 2xx | removed with a receipt | AIMD increase; closes the breaker if it was the probe |
//! | 429 | retried after `max(Retry-After, jittered backoff)`, persisted | rate halved once per episode; `Retry-After` holds the **whole client** (L1); the breaker is not counted (the API is up) |
//! | 503 with `Retry-After` | as 5xx, and the whole client waits (capped at 180 s) | counts toward the breaker |
//! | other retryable (5xx, timeout, connect, token endpoint down) | retried after the jittered backoff, persisted | counts toward the breaker; a failed probe re-opens it |
//! | 400/413/415/422 | dead letter `Rejected` with status and API message | the API is up |
//! | 403/404/410/501, second 401, bad credentials | kept pending, **not** an attempt | delivery paused: one probe per `breaker_cooldown` (or the server's wait) until it passes |
//!
//! Before a request goes, the record is checked: undecodable → dead letter `Corrupt`; older than
//! its lane's TTL → dead letter `Expired`; the mapping rejects it → dead letter `Malformed`. A
//! sweep once a second also expires the oldest queued alerts of each lane while nothing can be
//! sent (breaker open, paused), so an expiry is visible when it happens, not when the outage ends.
//!
//! Every dead letter carries the attempts made and the first/last attempt times (the record is
//! updated before the move).
//!
//! # Storm coalescing (`[mapping.coalesce]`, off by default)
//! When enabled, an alert about to be sent for the first time is offered to the storm state
//! (`coalesce.rs`); an absorbed alert is not sent and stays pending in the log, held in memory
//! as a member of its site's window. When the window ends, one summary request goes for all of
//! them (same breaker, limiter and in-flight cap). Settling it settles every member: 2xx →
//! each removed with a receipt carrying the summary's execution id (I3 holds per member);
//! permanent rejection → each a dead letter naming the summary; retryable or pause → the
//! summary is kept and retried, the members stay pending. A crash leaves the members pending
//! with no attempt made: the next run offers them again. With coalescing off nothing of this
//! runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alertbridge_genesys::{Disposition, GenesysClient, MAX_RATE_LIMIT_WAIT};
use alertbridge_payload::{Mapped, Mapper};
use alertbridge_wal::{
    CorruptPending, Cursor, DeadKind, DeadReason, Key, Priority, Receipt, Record, Wal, WalError,
    PRIORITY_CRITICAL,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::coalesce::{Batch, Storm};
use crate::config::DeliveryConfig;
use crate::events::{
    self, AlertDeadLettered, AlertDelivered, BreakerOpened, BreakerProbing, BreakerReopened,
    Counters, DeliveryPaused, DeliveryRetried, Throttled,
};
use crate::ingest::now_ms;
use crate::limiter::{Breaker, Hold, Limiter, Transition};
use crate::schedule::{self, Queue};

// The drain's storm state lives in its own file; it is the drain's alone (lib.rs stays as is).
#[path = "coalesce.rs"]
mod coalesce;

/// How often queued alerts are checked against their lane's TTL (only when a TTL is set).
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// At most this many records per lane are held in memory (queued, waiting for a retry, in
/// flight or in a storm window); the rest of the backlog stays in the log and is read in order
/// as these leave. Memory is O(window), not O(backlog): a 1 000 000-alert outage costs the same
/// RAM as a 1 000-alert one.
const WINDOW_RECORDS: usize = 1024;

/// And at most this many payload bytes held in all lanes together (large payloads).
const WINDOW_BYTES: usize = 8 << 20;

/// Expired alerts dead-lettered per sweep at most, so one sweep of a long outage's backlog does
/// not hold up everything else; the next sweep continues.
const SWEEP_MAX: usize = 1000;

/// How often removals are made durable while delivering: bounds what a power cut can undo (a
/// delivered alert delivered again, never a loss).
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Longest client-wide hold a `Retry-After` imposes. A 429 asking for more is turned into a
/// pause by the client already; a 503 asking for more still floors that alert's next attempt.
const MAX_CLIENT_WIDE_WAIT: Duration = MAX_RATE_LIMIT_WAIT;

/// Errors that stop the drain (the agent exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The log failed.
    #[error("write-ahead log failed: {0}")]
    Wal(#[from] WalError),
}

/// A record that passed its checks and what the mapper made of it.
type Prepared = (Record, Mapped);

/// What one request was for.
enum Job {
    /// One alert.
    Alert {
        /// Its pending key.
        key: Key,
        /// Its record, with this attempt counted.
        record: Record,
    },
    /// A storm summary and every alert it covers.
    Summary(Batch),
}

/// What a finished delivery task hands back.
struct Done {
    job: Job,
    disposition: Disposition,
    /// The breaker's probe number if this request was the probe.
    probe: Option<u64>,
    /// When the request left (after the client-wide gate), for the AIMD episode rule.
    sent_at: Instant,
}

/// The client-wide "not before" that delivery tasks check right before they send, so a
/// `Retry-After` learned from one answer also holds requests already handed to a task but not
/// yet sent (L1 in `limiter.rs`).
#[derive(Debug, Clone, Default)]
struct NotBefore(Arc<Mutex<Option<Instant>>>);

impl NotBefore {
    fn extend(&self, until: Instant) {
        // Only a plain assignment happens under this lock: a poisoned lock holds valid data.
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    async fn wait(&self) {
        loop {
            let until = *self.0.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
                }
                _ => return,
            }
        }
    }
}

/// The drain's owned state.
pub(crate) struct Drain {
    cfg: DeliveryConfig,
    wal: Wal,
    client: GenesysClient,
    mapper: Arc<Mapper>,
    counters: Arc<Counters>,
    queue: Queue,
    /// The record of every key the drain holds: queued (ready or waiting for its retry time),
    /// in flight, or absorbed by a storm window. A key is held from the moment a cursor read
    /// it until it is settled in the log; a cursor that meets a held key again (a retry
    /// re-appended under its new key) skips it, so no alert is ever dispatched twice at once.
    held: HashMap<Key, Record>,
    /// Held keys per lane, and payload bytes held, for the window bounds.
    held_per_lane: BTreeMap<Priority, usize>,
    held_bytes: usize,
    /// One reader per lane over the log, in seq order.
    cursors: BTreeMap<Priority, Cursor>,
    /// Lanes whose cursor reached the end of the log; read again when ingest appends.
    caught_up: BTreeMap<Priority, bool>,
    /// Something was removed since the last flush.
    unflushed: bool,
    next_flush: Instant,
    limiter: Limiter,
    breaker: Breaker,
    /// Delivery tasks; at most `max_in_flight`. Aborted at the end of the shutdown grace: their
    /// alerts stay pending.
    tasks: JoinSet<Done>,
    not_before: NotBefore,
    /// Notified to probe at once during a pause or an open breaker (SIGHUP after a fix).
    reprobe: Arc<Notify>,
    next_sweep: Instant,
    /// Storm coalescing state; `None` when `[mapping.coalesce]` is off (the default). Holds the
    /// absorbed alerts' keys and built summaries only: dropping it leaves them pending in the log.
    storm: Option<Storm>,
}

impl Drain {
    pub(crate) fn new(
        cfg: DeliveryConfig,
        wal: Wal,
        client: GenesysClient,
        mapper: Arc<Mapper>,
        counters: Arc<Counters>,
    ) -> Drain {
        let now = Instant::now();
        events::rate_changed(&counters, cfg.rate_per_sec, false);
        Drain {
            queue: Queue::new(cfg.normal_every),
            held: HashMap::new(),
            held_per_lane: BTreeMap::new(),
            held_bytes: 0,
            cursors: BTreeMap::new(),
            caught_up: BTreeMap::new(),
            unflushed: false,
            next_flush: now,
            limiter: Limiter::new(cfg.rate_per_sec, cfg.burst, now),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            tasks: JoinSet::new(),
            not_before: NotBefore::default(),
            reprobe: Arc::new(Notify::new()),
            next_sweep: now,
            storm: mapper.coalesce().map(Storm::new),
            cfg,
            wal,
            client,
            mapper,
            counters,
        }
    }

    /// A handle that makes a paused drain (or an open breaker) probe at once instead of at the
    /// end of its cool-down: notify it after the operator fixed something (e.g. on SIGHUP).
    pub(crate) fn reprobe_handle(&self) -> Arc<Notify> {
        self.reprobe.clone()
    }

    /// Takes `record` under `key` into the window.
    fn hold(&mut self, key: Key, record: Record) {
        self.held_bytes += record.payload.len();
        if let Some(old) = self.held.insert(key, record) {
            self.held_bytes -= old.payload.len();
        } else {
            *self.held_per_lane.entry(key.priority).or_default() += 1;
        }
    }

    /// Lets go of `key` (settled in the log, or re-keyed by an update).
    fn release(&mut self, key: Key) -> Option<Record> {
        let record = self.held.remove(&key)?;
        self.held_bytes -= record.payload.len();
        if let Some(n) = self.held_per_lane.get_mut(&key.priority) {
            *n = n.saturating_sub(1);
        }
        Some(record)
    }

    /// Ingest appended: every lane's cursor may find more.
    fn appended(&mut self) {
        self.caught_up.values_mut().for_each(|c| *c = false);
    }

    /// Tops up each lane's window from the log, in seq order, each alert at its persisted next
    /// attempt time (so a restart does not turn a backlog in backoff into a retry stampede).
    /// Undecodable records become dead letters of kind `Corrupt` (I4): counted and visible,
    /// never a panic, never a stuck cursor. Returns how many records were taken in.
    fn refill(&mut self) -> Result<usize, DrainError> {
        let now = now_ms();
        let mut taken = 0;
        for lane in self.wal.lanes() {
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
            let page = self.wal.read(&mut cursor, want);
            self.cursors.insert(lane, cursor);
            let page = page?;
            self.caught_up.insert(lane, page.len() < want);
            for item in page {
                match item {
                    Ok((key, record)) => {
                        if self.held.contains_key(&key) {
                            continue;
                        }
                        self.queue.insert(key, record.next_attempt_ms, now);
                        self.hold(key, record);
                        taken += 1;
                    }
                    Err(corrupt) => self.dead_letter_corrupt(&corrupt, now)?,
                }
            }
        }
        Ok(taken)
    }

    fn ttl(&self, key: Key) -> Option<Duration> {
        if key.priority == PRIORITY_CRITICAL {
            self.cfg.ttl_critical
        } else {
            self.cfg.ttl_normal
        }
    }

    /// Check a queued key's record before sending: `None` when it was settled here
    /// (dead-lettered as corrupt, expired or malformed) or is no longer pending.
    fn prepare(&mut self, key: Key, now: u64) -> Result<Option<Prepared>, DrainError> {
        let Some(record) = self.held.get(&key).cloned() else {
            return Ok(None);
        };
        if let Some(ttl) = self.ttl(key) {
            if schedule::expired(record.received_at_ms, now, Some(ttl)) {
                self.expire(key, &record, ttl, now)?;
                return Ok(None);
            }
        }
        match self.mapper.map(&record.topic, &record.payload) {
            Ok(m) => {
                if !m.notes.is_empty() {
                    // what the mapping changed on the way (stripped blob, truncated catch-all,
                    // coerced type...): the original payload stays in the log
                    tracing::info!(alert_id = %record.alert_id, seq = key.seq, notes = ?m.notes, "payload adjusted by the mapping");
                }
                Ok(Some((record, m)))
            }
            Err(rej) => {
                self.dead_letter(key, &record, DeadKind::Malformed, rej.reason, None, None)?;
                Ok(None)
            }
        }
    }

    /// Start as many deliveries as the breaker, the bucket and the concurrency cap allow.
    /// Returns how long to sleep before trying again, if something is held back.
    fn dispatch(&mut self) -> Result<Option<Duration>, DrainError> {
        loop {
            let now_i = Instant::now();
            let now = now_ms();
            self.queue.promote(now);
            let summary_ready = self.storm.as_ref().is_some_and(|s| s.has_ready(now));
            if self.tasks.len() >= self.cfg.max_in_flight
                || (self.queue.ready_len() == 0 && !summary_ready)
            {
                // woken by a finished task, a new key or the next retry time
                return Ok(None);
            }
            if let Some(d) = self.breaker.wait(now_i) {
                return Ok(Some(d));
            }
            if let Some(d) = self.limiter.wait(now_i) {
                return Ok(Some(d));
            }
            // A due storm summary goes first: it stands for many alerts that already waited a
            // whole window.
            let (job, alert_id, data) = match self.storm.as_mut().and_then(|s| s.take_ready(now)) {
                Some(mut batch) => {
                    batch.attempts += 1;
                    let (id, data) = (batch.summary_id.clone(), batch.data.clone());
                    (Job::Summary(batch), id, data)
                }
                None => {
                    let Some(key) = self.queue.pick() else {
                        return Ok(None);
                    };
                    let Some((mut record, mapped)) = self.prepare(key, now)? else {
                        continue;
                    };
                    if let Some(storm) = self.storm.as_mut() {
                        if storm.offer(now, key, &record, &mapped) {
                            // held for its window's summary; still pending in the log
                            continue;
                        }
                    }
                    record.attempts += 1;
                    record.first_attempt_ms.get_or_insert(now);
                    record.last_attempt_ms = Some(now);
                    let id = record.alert_id.clone();
                    (Job::Alert { key, record }, id, mapped.data)
                }
            };
            // Only now, with a request that really goes, may the breaker hand out its probe:
            // a probe that is never sent would leave it half-open for good.
            let probe = match self.breaker.begin(now_i) {
                Some((n, Transition::HalfOpen { was })) => {
                    BreakerProbing {
                        paused: was == Hold::Paused,
                    }
                    .emit(&self.counters);
                    Some(n)
                }
                _ => None,
            };
            self.limiter.take(now_i);
            let client = self.client.clone();
            let gate = self.not_before.clone();
            self.tasks.spawn(async move {
                gate.wait().await;
                let sent_at = Instant::now();
                // The request runs in a task of its own so that a panic in it (a bug in a
                // dependency, say) still comes back as a `Done`: otherwise the job would vanish
                // from memory (stuck until restart) and, if it was the breaker's probe, the
                // breaker would stay half-open for good (found in review).
                let disposition =
                    match tokio::spawn(async move { client.deliver(&alert_id, &data).await }).await
                    {
                        Ok(d) => d,
                        Err(e) => Disposition::Retry {
                            after: None,
                            reason: format!("delivery task failed: {e}"),
                            status: None,
                        },
                    };
                Done {
                    job,
                    disposition,
                    probe,
                    sent_at,
                }
            });
        }
    }

    /// Persist the record (attempt history), then move it to dead letters with the reason.
    fn dead_letter(
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
        let moved = self
            .wal
            .dead_letter_record(key, record, reason.clone(), now_ms())
            .map(|_| ());
        if let Err(WalError::NoSpace { .. }) = moved {
            // Not written: it stays pending (and held), tried again when space may be back.
            tracing::warn!(alert_id = %record.alert_id, "filesystem full: the dead letter waits; retrying in 5 s");
            self.hold(key, record.clone());
            self.queue.insert(key, now_ms() + 5_000, now_ms());
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

    fn dead_letter_corrupt(
        &mut self,
        corrupt: &CorruptPending,
        now: u64,
    ) -> Result<(), DrainError> {
        let reason = DeadReason {
            kind: DeadKind::Corrupt,
            message: format!("record could not be decoded: {}", corrupt.error),
            status: None,
            api_message: None,
        };
        let moved = self.wal.dead_letter_corrupt(corrupt, reason.clone(), now);
        if still_pending(moved.map(|_| ()))? {
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

    fn expire(
        &mut self,
        key: Key,
        record: &Record,
        ttl: Duration,
        now: u64,
    ) -> Result<(), DrainError> {
        let age = Duration::from_millis(now.saturating_sub(record.received_at_ms));
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
    }

    /// Dead-letter the queued alerts that passed their lane's TTL, oldest first, while they
    /// wait (breaker open, paused, backlog). Stops at the first one still young: `seq` grows
    /// with arrival, so the rest of the lane is younger.
    fn sweep_expired(&mut self) -> Result<(), DrainError> {
        let now = now_ms();
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
                    if self.refill()? == 0 {
                        break;
                    }
                    continue;
                };
                match self.held.get(&key).cloned() {
                    Some(rec) if schedule::expired(rec.received_at_ms, now, Some(ttl)) => {
                        self.expire(key, &rec, ttl, now)?;
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

    /// Apply one delivery outcome to the log and to the pacing state.
    fn settle(&mut self, done: Done) -> Result<(), DrainError> {
        let Done {
            job,
            disposition,
            probe,
            sent_at,
        } = done;
        let (key, mut record) = match job {
            Job::Alert { key, record } => (key, record),
            Job::Summary(batch) => return self.settle_summary(batch, disposition, probe, sent_at),
        };
        let now_i = Instant::now();
        let now = now_ms();
        match disposition {
            Disposition::Delivered(r) => {
                let receipt = Receipt {
                    alert_id: record.alert_id.clone(),
                    seq: key.seq,
                    delivered_at_ms: now,
                    status: r.status,
                    execution_id: r.execution_id.clone(),
                    correlation_id: r.correlation_id.clone(),
                    attempts: record.attempts,
                    received_at_ms: record.received_at_ms,
                };
                let removed = self.wal.remove(key, receipt);
                self.release(key);
                self.unflushed = true;
                if still_pending(removed)? {
                    AlertDelivered {
                        alert_id: &record.alert_id,
                        seq: key.seq,
                        status: r.status,
                        execution_id: r.execution_id.as_deref(),
                        latency: Duration::from_millis(now.saturating_sub(record.received_at_ms)),
                        attempts: record.attempts,
                    }
                    .emit(&self.counters);
                }
                self.accepted(probe);
            }
            Disposition::Retry {
                after,
                reason,
                status,
            } => {
                let throttled = self.pace_retry(after, status, &reason, sent_at, now_i);
                let next = self.next_retry_ms(record.attempts, after, now);
                record.next_attempt_ms = next;
                record.last_error = Some(reason.clone());
                if let Some(key) = self.rekey(key, record.clone())? {
                    self.queue.insert(key, next, now);
                    DeliveryRetried {
                        alert_id: &record.alert_id,
                        reason: &reason,
                        status,
                        attempts: record.attempts,
                        after: Duration::from_millis(next.saturating_sub(now)),
                    }
                    .emit(&self.counters);
                }
                self.retry_breaker(throttled, probe, &reason, now_i);
            }
            Disposition::DeadLetter {
                status,
                reason,
                api_message,
            } => {
                self.dead_letter(
                    key,
                    &record,
                    DeadKind::Rejected,
                    reason,
                    Some(status),
                    api_message,
                )?;
                // a permanent rejection is an answer: the API is up
                self.api_answered(probe);
            }
            Disposition::Pause {
                reason,
                status,
                after,
            } => {
                // Configuration fault: not this alert's fault. Keep it, not as an attempt, ready
                // to go as soon as the pause ends.
                record.attempts = record.attempts.saturating_sub(1);
                record.last_error = Some(reason.clone());
                record.next_attempt_ms = 0;
                if let Some(key) = self.rekey(key, record)? {
                    self.queue.insert(key, 0, now);
                }
                self.pause(&reason, status, after, now_i);
            }
        }
        Ok(())
    }

    /// Persists a record's new attempt fields: the log re-appends it under a new key, which
    /// replaces the old one here too. `None` if it was no longer pending.
    fn rekey(&mut self, key: Key, record: Record) -> Result<Option<Key>, DrainError> {
        let updated = self.wal.update(key, &record);
        self.release(key);
        match updated {
            Ok(new) => {
                self.hold(new, record);
                Ok(Some(new))
            }
            // Not persisted (a full disk): the attempt fields live in memory under the old key;
            // a crash forgets them, which only repeats an attempt.
            Err(WalError::NoSpace { .. }) => {
                self.hold(key, record);
                Ok(Some(key))
            }
            Err(e) => {
                still_pending(Err(e))?;
                Ok(None)
            }
        }
    }

    /// Pacing after a retryable answer: a `Retry-After` of a 429/503 holds the whole client, a
    /// 429 lowers the rate. Returns whether it was a 429.
    fn pace_retry(
        &mut self,
        after: Option<Duration>,
        status: Option<u16>,
        reason: &str,
        sent_at: Instant,
        now_i: Instant,
    ) -> bool {
        let throttled = status == Some(429);
        if let Some(a) = after.filter(|_| matches!(status, Some(429 | 503))) {
            let hold = a.min(MAX_CLIENT_WIDE_WAIT);
            self.limiter.retry_after(now_i, hold);
            self.not_before.extend(now_i + hold);
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
        throttled
    }

    /// The breaker after a retryable answer: a 429 is an answer (the API is up; the limiter
    /// deals with the rate), anything else counts as a failure.
    fn retry_breaker(&mut self, throttled: bool, probe: Option<u64>, reason: &str, now_i: Instant) {
        if throttled {
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

    /// Apply a storm summary's outcome to every alert it covers (I3 per member): accepted →
    /// each removed with a receipt of the summary's execution; permanently rejected → each a
    /// dead letter naming the summary; retryable or paused → the summary is kept for its next
    /// attempt and the members stay pending, untouched.
    fn settle_summary(
        &mut self,
        mut batch: Batch,
        disposition: Disposition,
        probe: Option<u64>,
        sent_at: Instant,
    ) -> Result<(), DrainError> {
        let now_i = Instant::now();
        let now = now_ms();
        match disposition {
            Disposition::Delivered(r) => {
                // The receipt has no field for "covered by summary X": its correlation id says
                // so, followed by the request's own correlation id.
                let correlation = match &r.correlation_id {
                    Some(c) => format!("summary:{} correlation:{c}", batch.summary_id),
                    None => format!("summary:{}", batch.summary_id),
                };
                let mut removed = 0usize;
                for m in &batch.members {
                    let receipt = Receipt {
                        alert_id: m.alert_id.clone(),
                        seq: m.key.seq,
                        delivered_at_ms: now,
                        status: r.status,
                        execution_id: r.execution_id.clone(),
                        correlation_id: Some(correlation.clone()),
                        attempts: batch.attempts,
                        received_at_ms: m.received_at_ms,
                    };
                    let gone = self.wal.remove(m.key, receipt);
                    self.release(m.key);
                    self.unflushed = true;
                    if still_pending(gone)? {
                        removed += 1;
                        AlertDelivered {
                            alert_id: &m.alert_id,
                            seq: m.key.seq,
                            status: r.status,
                            execution_id: r.execution_id.as_deref(),
                            latency: Duration::from_millis(now.saturating_sub(m.received_at_ms)),
                            attempts: batch.attempts,
                        }
                        .emit(&self.counters);
                    }
                }
                tracing::info!(
                    summary_id = %batch.summary_id,
                    site = %batch.site,
                    alerts = removed,
                    status = r.status,
                    execution_id = r.execution_id.as_deref().unwrap_or(""),
                    correlation_id = r.correlation_id.as_deref().unwrap_or(""),
                    attempts = batch.attempts,
                    "storm summary delivered; its alerts are removed with its receipt"
                );
                self.accepted(probe);
            }
            Disposition::Retry {
                after,
                reason,
                status,
            } => {
                let throttled = self.pace_retry(after, status, &reason, sent_at, now_i);
                let next = self.next_retry_ms(batch.attempts, after, now);
                batch.next_attempt_ms = next;
                DeliveryRetried {
                    alert_id: &batch.summary_id,
                    reason: &reason,
                    status,
                    attempts: batch.attempts,
                    after: Duration::from_millis(next.saturating_sub(now)),
                }
                .emit(&self.counters);
                self.keep_summary(batch);
                self.retry_breaker(throttled, probe, &reason, now_i);
            }
            Disposition::DeadLetter {
                status,
                reason,
                api_message,
            } => {
                let message = format!(
                    "coalesced into storm summary {} (site {}, {} alerts), which Genesys rejected: {reason}",
                    batch.summary_id,
                    batch.site,
                    batch.members.len()
                );
                for m in &batch.members {
                    let dead = DeadReason {
                        kind: DeadKind::Rejected,
                        message: message.clone(),
                        status: Some(status),
                        api_message: api_message.clone(),
                    };
                    let moved = match self.release(m.key) {
                        Some(record) => self.wal.dead_letter_record(m.key, &record, dead, now),
                        None => self.wal.dead_letter(m.key, dead, now),
                    };
                    if still_pending(moved.map(|_| ()))? {
                        AlertDeadLettered {
                            alert_id: &m.alert_id,
                            kind: DeadKind::Rejected,
                            reason: &message,
                            status: Some(status),
                            attempts: batch.attempts,
                        }
                        .emit(&self.counters);
                    }
                }
                self.api_answered(probe);
            }
            Disposition::Pause {
                reason,
                status,
                after,
            } => {
                // not the summary's fault: not an attempt, ready when the pause ends
                batch.attempts = batch.attempts.saturating_sub(1);
                batch.next_attempt_ms = 0;
                self.keep_summary(batch);
                self.pause(&reason, status, after, now_i);
            }
        }
        Ok(())
    }

    fn keep_summary(&mut self, batch: Batch) {
        match self.storm.as_mut() {
            Some(storm) => storm.keep(batch),
            // Cannot happen (summaries exist only with a storm state); the members are still
            // pending in the log and go out after a restart.
            None => {
                tracing::error!(summary_id = %batch.summary_id, "storm summary without storm state; its alerts stay pending")
            }
        }
    }

    /// The API answered something other than a retryable failure.
    /// An accepted request: the rate may creep back up, the API is up.
    fn accepted(&mut self, probe: Option<u64>) {
        let restored = self.limiter.on_success();
        events::rate_changed(&self.counters, self.limiter.rate(), restored);
        self.api_answered(probe);
    }

    /// When a job (alert or storm summary) that failed `attempts` times may go again.
    fn next_retry_ms(&self, attempts: u32, after: Option<Duration>, now: u64) -> u64 {
        schedule::next_attempt_ms(&self.cfg.backoff, attempts, after, now, fastrand::f64())
    }

    fn api_answered(&mut self, probe: Option<u64>) {
        let t = self.breaker.on_success(probe);
        self.breaker_moved(t, "");
    }

    /// Events for a breaker transition caused by an answer.
    fn breaker_moved(&mut self, t: Option<Transition>, reason: &str) {
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

    /// Run until `cancel`; then give in-flight deliveries `shutdown_timeout` and leave the rest
    /// pending.
    pub(crate) async fn run(
        mut self,
        mut feed: mpsc::UnboundedReceiver<Key>,
        cancel: CancellationToken,
    ) -> Result<(), DrainError> {
        let pending = self.wal.stats()?.pending;
        if pending > 0 {
            tracing::info!(
                pending,
                window = WINDOW_RECORDS,
                "resuming delivery of alerts already in the log"
            );
        }
        let sweeping = self.cfg.ttl_critical.is_some() || self.cfg.ttl_normal.is_some();
        let reprobe = self.reprobe.clone();
        let mut feed_open = true;
        loop {
            // The feed only says "ingest appended": the cursors read the records themselves.
            while feed.try_recv().is_ok() {
                self.appended();
            }
            self.refill()?;
            if self.unflushed && Instant::now() >= self.next_flush {
                self.wal.flush()?;
                self.unflushed = false;
                self.next_flush = Instant::now() + FLUSH_EVERY;
            }
            if sweeping && Instant::now() >= self.next_sweep {
                self.sweep_expired()?;
                self.next_sweep = Instant::now() + EXPIRY_SWEEP;
            }
            if let Some(storm) = self.storm.as_mut() {
                storm.flush_due(now_ms(), &self.mapper);
            }
            // One `now` for dispatch and the wake-up: a retry time falling between two reads of
            // the clock would be neither ready in dispatch nor counted as a wake-up (review F2).
            let now = now_ms();
            let held = self.dispatch()?;
            let sweep_in =
                sweeping.then(|| self.next_sweep.saturating_duration_since(Instant::now()));
            let wake = [
                held,
                self.queue
                    .next_wakeup_ms()
                    .map(|at| Duration::from_millis(at.saturating_sub(now))),
                sweep_in,
                self.unflushed
                    .then(|| self.next_flush.saturating_duration_since(Instant::now())),
                self.storm
                    .as_ref()
                    .and_then(|s| s.next_wakeup_ms(now))
                    .map(|at| Duration::from_millis(at.saturating_sub(now))),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(1));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok(done) => self.settle(done)?,
                        Err(e) => tracing::error!(error = %e, "delivery task failed; the alert stays pending"),
                    }
                }
                k = feed.recv(), if feed_open => match k {
                    Some(_) => self.appended(),
                    // ingest stopped; keep draining what is pending
                    None => feed_open = false,
                },
                _ = reprobe.notified() => {
                    self.breaker.probe_now(Instant::now());
                    tracing::info!("probing now (operator signal)");
                }
                _ = tokio::time::sleep(wake) => {}
            }
        }
        self.finish().await
    }

    async fn finish(mut self) -> Result<(), DrainError> {
        let deadline = tokio::time::sleep(self.cfg.shutdown_timeout);
        tokio::pin!(deadline);
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!(in_flight = self.tasks.len(), "shutdown timeout: in-flight deliveries abandoned, they stay pending");
                    self.tasks.abort_all();
                    break;
                }
                Some(done) = self.tasks.join_next() => {
                    if let Ok(done) = done { self.settle(done)?; }
                }
            }
        }
        self.wal.flush()?;
        Ok(())
    }
}

/// `Ok(false)` when the key was no longer pending (nothing to do: it was settled elsewhere);
/// every other log error stops the drain.
fn still_pending(r: Result<(), WalError>) -> Result<bool, DrainError> {
    match r {
        Ok(()) => Ok(true),
        Err(WalError::NotPending { key }) => {
            tracing::warn!(seq = key.seq, "alert no longer pending; nothing to settle");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The HTTP status a Genesys reason starts with (`"…: HTTP 503 …"`), for an expired alert's
/// dead letter.
fn status_in(reason: &str) -> Option<u16> {
    let rest = &reason[reason.find("HTTP ")? + 5..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_from_a_reason() {
        assert_eq!(
            status_in("server error: HTTP 503 service.unavailable"),
            Some(503)
        );
        assert_eq!(status_in("token request failed: connection refused"), None);
        assert_eq!(status_in("HTTP x"), None);
    }

    #[tokio::test]
    async fn not_before_holds_tasks_until_it_ends() {
        let gate = NotBefore::default();
        gate.wait().await; // nothing set: no wait
        let t0 = Instant::now();
        gate.extend(t0 + Duration::from_millis(80));
        gate.extend(t0 + Duration::from_millis(10)); // shorter: no effect
        gate.wait().await;
        assert!(t0.elapsed() >= Duration::from_millis(80));
    }
}
