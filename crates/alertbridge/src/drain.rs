//! Drain: pending alerts → Genesys, paced, retried, never lost.
//!
//! One task owns every decision (queue, limiter, breaker); deliveries run as child tasks and
//! report their [`Disposition`] back here, so the log is changed from one place only.
//!
//! The log's calls (reads of a segment, removals, re-appends, dead letters with their fsync, the
//! periodic flush) run on tokio's blocking pool ([`wal_call`]), and the drain task awaits each
//! one before it decides the next thing: a slow fsync on an SD card holds up the drain only,
//! never a runtime worker (MQTT keep-alives, the status endpoint).
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
//! | no answer within the request timeout (the request went out) | retried with a doubled timeout (up to `max_request_timeout_ms`); the `max_timeouts`-th timeout makes it a dead letter `Unconfirmed` (T1 in `schedule.rs`: Genesys may have launched it each time) | counts toward the breaker |
//! | 408/409/423/425 | retried after `max(Retry-After, jittered backoff)`, persisted | the breaker is not counted (the API answered: a busy or locked resource) |
//! | 400/413/415/422 | dead letter `Rejected` with status and API message | the API is up; the `pause_after_rejections`-th identical one (same status and API code) in a row pauses delivery, and later ones with the same answer stay pending until a request passes (R1 in `limiter.rs`) |
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
//! # Nothing stalls
//! - The mapping runs under `catch_unwind`: a record that makes the mapper panic becomes a
//!   `Malformed` dead letter with the reason, not a crash loop (D3).
//! - A delivery task that fails to join (a panic, an abort) hands its alerts back to the queue
//!   and, if it was the breaker's probe, counts as a failed probe, so the breaker never stays
//!   half-open for good (D4).
//! - Every [`RECONCILE_EVERY`] the drain checks itself against the log (D4): every record it
//!   holds must be queued, in flight or in a storm window (a stranded one is put back in the
//!   queue); and when it holds nothing and its cursors have caught up, the log must have nothing
//!   pending. If it has (twice, [`RECONCILE_CONFIRM`] apart, so an append racing the check is
//!   not mistaken for a loss), the drain lost track of something: logged at error, counted
//!   (`drain_repairs`), and the cursors start again from the start of the log.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alertbridge_genesys::{Disposition, GenesysClient, MAX_RATE_LIMIT_WAIT};
use alertbridge_payload::{Mapped, Mapper, Rejection};
use alertbridge_wal::{
    CorruptPending, Cursor, DeadKind, DeadReason, Key, Priority, Receipt, Record, Wal, WalError,
    PRIORITY_CRITICAL,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use self::coalesce::{Batch, Storm};
use crate::config::DeliveryConfig;
use crate::events::{
    self, AlertDeadLettered, AlertDelivered, BreakerOpened, BreakerProbing, BreakerReopened,
    Counters, DeliveryPaused, DeliveryRetried, Throttled,
};
use crate::ingest::now_ms;
use crate::limiter::{Breaker, Hold, Limiter, Rejections, Transition, Verdict};
use crate::schedule::{self, Queue, Sighting};

// The drain's storm state lives in its own file; it is the drain's alone (lib.rs stays as is).
#[path = "coalesce.rs"]
mod coalesce;

/// Longest sleep of the drain loop with nothing to do: it turns at least this often, which is
/// what `/health` checks (a wedged loop stops turning).
pub(crate) const IDLE_WAKE: Duration = Duration::from_secs(5);

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

/// How often the drain checks itself against the log (D4 in the module doc).
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// A suspicious check is confirmed this much later before the drain repairs anything: by then
/// an alert appended while the first check ran has been read (or delivered).
const RECONCILE_CONFIRM: Duration = Duration::from_secs(1);

/// Longest client-wide hold a `Retry-After` imposes. A 429 asking for more is turned into a
/// pause by the client already; a 503 asking for more still floors that alert's next attempt.
const MAX_CLIENT_WIDE_WAIT: Duration = MAX_RATE_LIMIT_WAIT;

/// Errors that stop the drain (the agent exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The log failed.
    #[error("write-ahead log failed: {0}")]
    Wal(#[from] WalError),
    /// A log call on the blocking pool panicked (or the runtime is shutting down): what it did
    /// to the log is unknown, so the drain stops and the agent exits non-zero; the restart
    /// reads the log as it is.
    #[error("log call `{op}` on the blocking pool failed: {reason}")]
    Blocking {
        /// The log call, e.g. `remove`.
        op: &'static str,
        /// The join error.
        reason: String,
    },
}

/// Runs one log call on tokio's blocking pool and waits for it (see the module doc: an fsync
/// must not hold a runtime worker). The caller awaits it before anything else, so the drain
/// stays the log's single writer, in order.
async fn wal_call<T, F>(wal: &Wal, op: &'static str, f: F) -> Result<T, DrainError>
where
    F: FnOnce(&Wal) -> T + Send + 'static,
    T: Send + 'static,
{
    let wal = wal.clone();
    tokio::task::spawn_blocking(move || f(&wal))
        .await
        .map_err(|e| DrainError::Blocking {
            op,
            reason: e.to_string(),
        })
}

/// A record that passed its checks and what the mapper made of it.
type Prepared = (Record, Mapped);

/// How the drain maps a stored payload: [`Mapper::map`], or a test's stand-in (a mapper that
/// panics).
type MapFn = fn(&Mapper, &str, &[u8], &[(String, String)]) -> Result<Mapped, Rejection>;

/// Why a payload did not map.
#[derive(Debug)]
enum MapFailure {
    /// The mapping rejected it (the reason says why).
    Rejected(Rejection),
    /// The mapper panicked: a bug, caught (D3). The panic's message.
    Panicked(String),
}

/// Runs `map` under `catch_unwind` (D3). The mapper is pure, total and fuzzed, but a panic in it
/// on one stored record would otherwise kill the drain, and the restarted agent would meet the
/// same record first again: a crash loop with every alert behind it stuck. The mapper holds no
/// state a panic could leave half-changed (it maps `&self`), so unwinding past it is sound.
fn map_guarded(
    map: MapFn,
    mapper: &Mapper,
    topic: &str,
    payload: &[u8],
    props: &[(String, String)],
) -> Result<Mapped, MapFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        map(mapper, topic, payload, props)
    })) {
        Ok(Ok(mapped)) => Ok(mapped),
        Ok(Err(rejection)) => Err(MapFailure::Rejected(rejection)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(MapFailure::Panicked(message))
        }
    }
}

/// What a delivery task carries, kept by task id so a task that fails to join gives its alerts
/// back (D4).
#[derive(Debug, Clone)]
struct InFlight {
    /// The alert's key, or a storm summary's members.
    keys: Vec<Key>,
    /// The breaker's probe number if the request was the probe.
    probe: Option<u64>,
}

/// A wall-clock jump bigger than this (wall time moved that much more or less than monotonic
/// time since the last look) is logged and counted.
const CLOCK_JUMP_LOGGED: Duration = Duration::from_secs(2);

/// Where the wall clock is read: the system clock, or a test's faked one.
type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The drain's two clocks (see `schedule.rs`, "Two clocks"). Scheduling — the queue's retry
/// times, storm windows, TTL ages, wake-ups — runs on [`Clock::sched_ms`]: `Instant` (monotonic)
/// as ms, starting at the wall time the drain started, so its values read like unix ms in logs
/// but never jump. The wall clock is read for what is stored or shown (attempt, receipt and
/// dead-letter times, the persisted `next_attempt_ms`) and for an alert's age when the drain
/// first reads it.
#[derive(Clone)]
struct Clock {
    origin: Instant,
    origin_ms: u64,
    wall: WallClock,
    /// `wall - sched` at the last look, for the jump warning.
    skew_ms: i64,
}

impl Clock {
    fn new(wall: WallClock) -> Clock {
        let origin_ms = wall();
        Clock {
            origin: Instant::now(),
            origin_ms,
            wall,
            skew_ms: 0,
        }
    }

    fn system() -> Clock {
        Clock::new(Arc::new(now_ms))
    }

    /// Monotonic ms (see the type's doc).
    fn sched_ms(&self) -> u64 {
        self.origin_ms
            .saturating_add(self.origin.elapsed().as_millis() as u64)
    }

    /// Unix ms by the wall clock.
    fn wall_ms(&self) -> u64 {
        (self.wall)()
    }

    /// By how much the wall clock jumped since the last call, if more than
    /// [`CLOCK_JUMP_LOGGED`] (positive: ahead).
    fn jumped(&mut self) -> Option<i64> {
        let skew = self.wall_ms() as i64 - self.sched_ms() as i64;
        let jump = skew - self.skew_ms;
        self.skew_ms = skew;
        (jump.unsigned_abs() > CLOCK_JUMP_LOGGED.as_millis() as u64).then_some(jump)
    }
}

/// A record the drain holds, with when it first read it (its TTL age runs on the monotonic
/// clock from there, C1 in `schedule.rs`) and the correlation ids of the answers it got (for
/// an `Unconfirmed` dead letter's reason; in memory only, so those of this run).
#[derive(Debug, Clone)]
struct Held {
    record: Record,
    seen: Sighting,
    answers: Vec<String>,
}

/// At most this many correlation ids are kept per held alert.
const MAX_ANSWERS_KEPT: usize = 8;

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
    held: HashMap<Key, Held>,
    /// Held keys per lane, and payload bytes held, for the window bounds.
    held_per_lane: BTreeMap<Priority, usize>,
    held_bytes: usize,
    /// One reader per lane over the log, in seq order.
    cursors: BTreeMap<Priority, Cursor>,
    /// Lanes whose cursor reached the end of the log; read again when ingest appends.
    caught_up: BTreeMap<Priority, bool>,
    /// The lanes with pending records as the log last said; asked again (`lanes_stale`) when
    /// ingest appended, so an idle drain makes no log call at all.
    lanes: Vec<Priority>,
    lanes_stale: bool,
    /// Something was removed since the last flush.
    unflushed: bool,
    next_flush: Instant,
    limiter: Limiter,
    breaker: Breaker,
    /// The run of identical permanent rejections (R1): pauses delivery instead of
    /// dead-lettering the backlog when the configuration, not the alerts, is wrong.
    rejections: Rejections,
    /// Delivery tasks; at most `max_in_flight`. Aborted at the end of the shutdown grace: their
    /// alerts stay pending.
    tasks: JoinSet<Done>,
    /// What each delivery task carries, by task id (removed when it joins).
    in_flight: HashMap<tokio::task::Id, InFlight>,
    /// How payloads are mapped ([`map_guarded`]).
    map: MapFn,
    /// When the drain next checks itself against the log, and whether the last check found it
    /// idle with alerts pending in the log (to be confirmed, D4).
    next_reconcile: Instant,
    reconcile_suspect: bool,
    not_before: NotBefore,
    /// Notified to probe at once during a pause or an open breaker (SIGHUP after a fix).
    reprobe: Arc<Notify>,
    next_sweep: Instant,
    /// Storm coalescing state; `None` when `[mapping.coalesce]` is off (the default). Holds the
    /// absorbed alerts' keys and built summaries only: dropping it leaves them pending in the log.
    storm: Option<Storm>,
    /// Scheduling (monotonic) and wall clocks.
    clock: Clock,
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
            lanes: Vec::new(),
            lanes_stale: true,
            unflushed: false,
            next_flush: now,
            limiter: Limiter::new(cfg.rate_per_sec, cfg.burst, now),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            rejections: Rejections::new(cfg.pause_after_rejections),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            map: Mapper::map_with_props,
            next_reconcile: now + RECONCILE_EVERY,
            reconcile_suspect: false,
            not_before: NotBefore::default(),
            reprobe: Arc::new(Notify::new()),
            next_sweep: now,
            storm: mapper.coalesce().map(Storm::new),
            clock: Clock::system(),
            cfg,
            wal,
            client,
            mapper,
            counters,
        }
    }

    /// Reads the wall clock from `wall` instead of the system clock (tests jump it).
    #[cfg(test)]
    fn set_wall_clock(&mut self, wall: WallClock) {
        self.clock = Clock::new(wall);
    }

    /// A handle that makes a paused drain (or an open breaker) probe at once instead of at the
    /// end of its cool-down: notify it after the operator fixed something (e.g. on SIGHUP).
    pub(crate) fn reprobe_handle(&self) -> Arc<Notify> {
        self.reprobe.clone()
    }

    /// Takes a record under `key` into the window.
    fn hold(&mut self, key: Key, held: Held) {
        self.held_bytes += held.record.payload.len();
        if let Some(old) = self.held.insert(key, held) {
            self.held_bytes -= old.record.payload.len();
        } else {
            *self.held_per_lane.entry(key.priority).or_default() += 1;
        }
    }

    /// Lets go of `key` (settled in the log, or re-keyed by an update).
    fn release(&mut self, key: Key) -> Option<Held> {
        let held = self.held.remove(&key)?;
        self.held_bytes -= held.record.payload.len();
        if let Some(n) = self.held_per_lane.get_mut(&key.priority) {
            *n = n.saturating_sub(1);
        }
        Some(held)
    }

    /// Ingest appended: every lane's cursor may find more.
    fn appended(&mut self) {
        self.caught_up.values_mut().for_each(|c| *c = false);
        self.lanes_stale = true;
    }

    /// Tops up each lane's window from the log, in seq order, each alert at its persisted next
    /// attempt time (so a restart does not turn a backlog in backoff into a retry stampede),
    /// but never more than `backoff_max` from now (C2: the wall clock may have been set back
    /// since it was written). Undecodable records become dead letters of kind `Corrupt` (I4):
    /// counted and visible, never a panic, never a stuck cursor. Returns how many records were
    /// taken in.
    async fn refill(&mut self) -> Result<usize, DrainError> {
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

    fn ttl(&self, key: Key) -> Option<Duration> {
        if key.priority == PRIORITY_CRITICAL {
            self.cfg.ttl_critical
        } else {
            self.cfg.ttl_normal
        }
    }

    /// Check a queued key's record before sending: `None` when it was settled here
    /// (dead-lettered as corrupt, expired or malformed) or is no longer pending.
    async fn prepare(&mut self, key: Key, now: u64) -> Result<Option<Prepared>, DrainError> {
        let Some(Held { record, seen, .. }) = self.held.get(&key).cloned() else {
            return Ok(None);
        };
        // MQTT 5: the publisher's message expiry is this alert's own TTL (kept with the record).
        if let Some(ttl) = crate::ingest::publisher_ttl(&record) {
            let age = seen.age_ms(now);
            if schedule::expired(age, Some(ttl)) {
                let message = crate::ingest::publisher_expiry_reason(&record, ttl, age);
                let status = record.last_error.as_deref().and_then(status_in);
                self.dead_letter(key, &record, DeadKind::Expired, message, status, None)
                    .await?;
                return Ok(None);
            }
        }
        if let Some(ttl) = self.ttl(key) {
            let age = seen.age_ms(now);
            if schedule::expired(age, Some(ttl)) {
                self.expire(key, &record, ttl, age).await?;
                return Ok(None);
            }
        }
        // MQTT 5 user properties kept with the record feed `$props.<name>` sources.
        let props = record.mqtt.as_ref().map_or(&[][..], |p| &p.user[..]);
        match map_guarded(
            self.map,
            &self.mapper,
            &record.topic,
            &record.payload,
            props,
        ) {
            Ok(m) => {
                if !m.notes.is_empty() {
                    // what the mapping changed on the way (stripped blob, truncated catch-all,
                    // coerced type...): the original payload stays in the log
                    tracing::info!(alert_id = %record.alert_id, seq = key.seq, notes = ?m.notes, "payload adjusted by the mapping");
                }
                Ok(Some((record, m)))
            }
            Err(MapFailure::Rejected(rej)) => {
                self.dead_letter(key, &record, DeadKind::Malformed, rej.reason, None, None)
                    .await?;
                Ok(None)
            }
            Err(MapFailure::Panicked(panic)) => {
                tracing::error!(
                    alert_id = %record.alert_id,
                    seq = key.seq,
                    panic = %panic,
                    "payload mapper panicked on a stored alert; it is dead-lettered, delivery goes on"
                );
                let reason = format!(
                    "the payload mapper failed on this payload (a bug: please report it with this dead letter): {panic}"
                );
                self.dead_letter(key, &record, DeadKind::Malformed, reason, None, None)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Start as many deliveries as the breaker, the bucket and the concurrency cap allow.
    /// Returns how long to sleep before trying again, if something is held back.
    async fn dispatch(&mut self) -> Result<Option<Duration>, DrainError> {
        loop {
            let now_i = Instant::now();
            let now = self.clock.sched_ms();
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
            let base = self.client.request_timeout();
            let cap = self.cfg.max_request_timeout;
            let (job, alert_id, data, timeout) =
                match self.storm.as_mut().and_then(|s| s.take_ready(now)) {
                    Some(mut batch) => {
                        batch.attempts += 1;
                        let (id, data) = (batch.summary_id.clone(), batch.data.clone());
                        let timeout = schedule::request_timeout(base, batch.timeouts, cap);
                        (Job::Summary(batch), id, data, timeout)
                    }
                    None => {
                        let Some(key) = self.queue.pick() else {
                            return Ok(None);
                        };
                        let Some((mut record, mapped)) = self.prepare(key, now).await? else {
                            continue;
                        };
                        if let Some(storm) = self.storm.as_mut() {
                            if storm.offer(now, key, &record, &mapped) {
                                // held for its window's summary; still pending in the log
                                continue;
                            }
                        }
                        let wall = self.clock.wall_ms();
                        record.attempts += 1;
                        record.first_attempt_ms.get_or_insert(wall);
                        record.last_attempt_ms = Some(wall);
                        let id = record.alert_id.clone();
                        let timeouts = schedule::timeouts_in(record.last_error.as_deref());
                        let timeout = schedule::request_timeout(base, timeouts, cap);
                        (Job::Alert { key, record }, id, mapped.data, timeout)
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
            let keys = match &job {
                Job::Alert { key, .. } => vec![*key],
                Job::Summary(batch) => batch.members.iter().map(|m| m.key).collect(),
            };
            let task = self.tasks.spawn(async move {
                gate.wait().await;
                let sent_at = Instant::now();
                // The request runs in a task of its own so that a panic in it (a bug in a
                // dependency, say) still comes back as a `Done`: otherwise the job would vanish
                // from memory (stuck until restart) and, if it was the breaker's probe, the
                // breaker would stay half-open for good (found in review).
                let disposition = match tokio::spawn(async move {
                    client.deliver_within(&alert_id, &data, timeout).await
                })
                .await
                {
                    Ok(d) => d,
                    Err(e) => Disposition::Retry {
                        after: None,
                        reason: format!("delivery task failed: {e}"),
                        status: None,
                        timed_out: false,
                    },
                };
                Done {
                    job,
                    disposition,
                    probe,
                    sent_at,
                }
            });
            self.in_flight.insert(task.id(), InFlight { keys, probe });
        }
    }

    /// A delivery task ended: settle its answer, or, if it failed to join (panicked, aborted),
    /// give its alerts back to the queue (they are still pending and held) and, if it was the
    /// probe, count a failed probe so the breaker re-opens instead of waiting for good (D4).
    async fn joined(
        &mut self,
        joined: Result<(tokio::task::Id, Done), JoinError>,
    ) -> Result<(), DrainError> {
        match joined {
            Ok((id, done)) => {
                self.in_flight.remove(&id);
                self.settle(done).await
            }
            Err(e) => {
                let Some(lost) = self.in_flight.remove(&e.id()) else {
                    tracing::error!(error = %e, "delivery task failed; the reconcile puts its alerts back");
                    return Ok(());
                };
                let now = self.clock.sched_ms();
                let mut ids = Vec::new();
                for key in &lost.keys {
                    if let Some(h) = self.held.get(key) {
                        ids.push(h.record.alert_id.clone());
                        self.queue.insert(*key, now, now);
                    }
                }
                events::delivery_task_failed(&self.counters, &e.to_string(), &ids);
                if let Some(probe) = lost.probe {
                    let t = self.breaker.on_failure(Instant::now(), Some(probe));
                    self.breaker_moved(t, "the probe's delivery task failed");
                }
                Ok(())
            }
        }
    }

    /// Checks the drain against the log (D4 in the module doc); returns whether it repaired
    /// something.
    async fn reconcile(&mut self) -> Result<bool, DrainError> {
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

    /// Persist the record (attempt history), then move it to dead letters with the reason.
    async fn dead_letter(
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

    async fn dead_letter_corrupt(&mut self, corrupt: CorruptPending) -> Result<(), DrainError> {
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

    /// Dead-letter an alert of age `age_ms` (C1) that passed its lane's `ttl`.
    async fn expire(
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
    async fn sweep_expired(&mut self) -> Result<(), DrainError> {
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

    /// Apply one delivery outcome to the log and to the pacing state.
    async fn settle(&mut self, done: Done) -> Result<(), DrainError> {
        let Done {
            job,
            disposition,
            probe,
            sent_at,
        } = done;
        events::request_answered(&self.counters, disposition.status(), sent_at.elapsed());
        let (key, mut record) = match job {
            Job::Alert { key, record } => (key, record),
            Job::Summary(batch) => {
                return self
                    .settle_summary(batch, disposition, probe, sent_at)
                    .await
            }
        };
        let now_i = Instant::now();
        let now = self.clock.sched_ms();
        let wall = self.clock.wall_ms();
        match disposition {
            Disposition::Delivered(r) => {
                let receipt = Receipt {
                    alert_id: record.alert_id.clone(),
                    seq: key.seq,
                    delivered_at_ms: wall,
                    status: r.status,
                    execution_id: r.execution_id.clone(),
                    correlation_id: r.correlation_id.clone(),
                    attempts: record.attempts,
                    received_at_ms: record.received_at_ms,
                };
                let removed =
                    wal_call(&self.wal, "remove", move |w| w.remove(key, receipt)).await?;
                self.release(key);
                self.unflushed = true;
                if still_pending(removed)? {
                    AlertDelivered {
                        alert_id: &record.alert_id,
                        seq: key.seq,
                        status: r.status,
                        execution_id: r.execution_id.as_deref(),
                        latency: Duration::from_millis(wall.saturating_sub(record.received_at_ms)),
                        attempts: record.attempts,
                        priority: key.priority,
                    }
                    .emit(&self.counters);
                }
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
                if let (Some(h), Some(id)) = (self.held.get_mut(&key), correlation_in(&reason)) {
                    if h.answers.len() < MAX_ANSWERS_KEPT {
                        h.answers.push(id.to_owned());
                    }
                }
                let timeouts =
                    schedule::timeouts_in(record.last_error.as_deref()) + u32::from(timed_out);
                record.last_error = Some(schedule::with_timeouts(&reason, timeouts));
                if timed_out && self.cfg.max_timeouts > 0 && timeouts >= self.cfg.max_timeouts {
                    // T1: it may have been launched each time; another request may launch it
                    // once more. Not sent again.
                    let message = self.unconfirmed_reason(key, &record.alert_id, timeouts);
                    self.dead_letter(key, &record, DeadKind::Unconfirmed, message, None, None)
                        .await?;
                    self.retry_breaker(status, probe, &reason, now_i);
                    return Ok(());
                }
                let delay = self.retry_delay(record.attempts, after);
                record.next_attempt_ms = wall.saturating_add(delay.as_millis() as u64);
                if let Some(key) = self.rekey(key, record.clone()).await? {
                    self.queue.insert(key, now + delay.as_millis() as u64, now);
                    DeliveryRetried {
                        alert_id: &record.alert_id,
                        reason: &reason,
                        status,
                        attempts: record.attempts,
                        after: delay,
                        timed_out,
                    }
                    .emit(&self.counters);
                }
                self.retry_breaker(status, probe, &reason, now_i);
            }
            Disposition::DeadLetter {
                status,
                reason,
                api_message,
                code,
            } => match self.rejections.on_rejection(status, code.as_deref()) {
                Verdict::Hold { count } => {
                    // The same rejection as the run that paused delivery: the configuration,
                    // not this alert. Keep it, not as an attempt, ready when the pause ends.
                    record.attempts = record.attempts.saturating_sub(1);
                    let timeouts = schedule::timeouts_in(record.last_error.as_deref());
                    record.last_error = Some(schedule::with_timeouts(&reason, timeouts));
                    record.next_attempt_ms = 0;
                    if let Some(key) = self.rekey(key, record).await? {
                        self.queue.insert(key, now, now);
                    }
                    let why = self.rejection_pause_reason(status, code.as_deref(), count, &reason);
                    self.pause(&why, Some(status), None, now_i);
                }
                verdict => {
                    let last = reason.clone();
                    self.dead_letter(
                        key,
                        &record,
                        DeadKind::Rejected,
                        reason,
                        Some(status),
                        api_message,
                    )
                    .await?;
                    match verdict {
                        Verdict::DeadLetterAndPause { count } => {
                            let why =
                                self.rejection_pause_reason(status, code.as_deref(), count, &last);
                            self.pause(&why, Some(status), None, now_i);
                        }
                        // a permanent rejection is an answer: the API is up
                        _ => self.api_answered(probe),
                    }
                }
            },
            Disposition::Pause {
                reason,
                status,
                after,
            } => {
                // Configuration fault: not this alert's fault. Keep it, not as an attempt, ready
                // to go as soon as the pause ends.
                record.attempts = record.attempts.saturating_sub(1);
                let timeouts = schedule::timeouts_in(record.last_error.as_deref());
                record.last_error = Some(schedule::with_timeouts(&reason, timeouts));
                record.next_attempt_ms = 0;
                if let Some(key) = self.rekey(key, record).await? {
                    self.queue.insert(key, 0, now);
                }
                self.pause(&reason, status, after, now_i);
            }
        }
        Ok(())
    }

    /// Persists a record's new attempt fields: the log re-appends it under a new key, which
    /// replaces the old one here too. `None` if it was no longer pending.
    async fn rekey(&mut self, key: Key, record: Record) -> Result<Option<Key>, DrainError> {
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

    /// Apply a storm summary's outcome to every alert it covers (I3 per member): accepted →
    /// each removed with a receipt of the summary's execution; permanently rejected → each a
    /// dead letter naming the summary; retryable or paused → the summary is kept for its next
    /// attempt and the members stay pending, untouched.
    async fn settle_summary(
        &mut self,
        mut batch: Batch,
        disposition: Disposition,
        probe: Option<u64>,
        sent_at: Instant,
    ) -> Result<(), DrainError> {
        let now_i = Instant::now();
        let now = self.clock.sched_ms();
        let wall = self.clock.wall_ms();
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
                        delivered_at_ms: wall,
                        status: r.status,
                        execution_id: r.execution_id.clone(),
                        correlation_id: Some(correlation.clone()),
                        attempts: batch.attempts,
                        received_at_ms: m.received_at_ms,
                    };
                    let key = m.key;
                    let gone =
                        wal_call(&self.wal, "remove", move |w| w.remove(key, receipt)).await?;
                    self.release(m.key);
                    self.unflushed = true;
                    if still_pending(gone)? {
                        removed += 1;
                        AlertDelivered {
                            alert_id: &m.alert_id,
                            seq: m.key.seq,
                            status: r.status,
                            execution_id: r.execution_id.as_deref(),
                            latency: Duration::from_millis(wall.saturating_sub(m.received_at_ms)),
                            attempts: batch.attempts,
                            priority: m.key.priority,
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
                batch.timeouts += u32::from(timed_out);
                if timed_out && self.cfg.max_timeouts > 0 && batch.timeouts >= self.cfg.max_timeouts
                {
                    let message = format!(
                        "coalesced into storm summary {} (site {}, {} alerts), which {}",
                        batch.summary_id,
                        batch.site,
                        batch.members.len(),
                        self.unconfirmed_reason_text(&batch.summary_id, batch.timeouts, &[])
                    );
                    self.dead_letter_members(&batch, DeadKind::Unconfirmed, &message, None, None)
                        .await?;
                    self.retry_breaker(status, probe, &reason, now_i);
                    return Ok(());
                }
                let delay = self.retry_delay(batch.attempts, after);
                batch.next_attempt_ms = now + delay.as_millis() as u64;
                DeliveryRetried {
                    alert_id: &batch.summary_id,
                    reason: &reason,
                    status,
                    attempts: batch.attempts,
                    after: delay,
                    timed_out,
                }
                .emit(&self.counters);
                self.keep_summary(batch);
                self.retry_breaker(status, probe, &reason, now_i);
            }
            Disposition::DeadLetter {
                status,
                reason,
                api_message,
                code,
            } => {
                let verdict = self.rejections.on_rejection(status, code.as_deref());
                if let Verdict::Hold { count } = verdict {
                    // as for a single alert: kept, not an attempt, ready when the pause ends
                    batch.attempts = batch.attempts.saturating_sub(1);
                    batch.next_attempt_ms = 0;
                    self.keep_summary(batch);
                    let why = self.rejection_pause_reason(status, code.as_deref(), count, &reason);
                    self.pause(&why, Some(status), None, now_i);
                    return Ok(());
                }
                let message = format!(
                    "coalesced into storm summary {} (site {}, {} alerts), which Genesys rejected: {reason}",
                    batch.summary_id,
                    batch.site,
                    batch.members.len()
                );
                self.dead_letter_members(
                    &batch,
                    DeadKind::Rejected,
                    &message,
                    Some(status),
                    api_message,
                )
                .await?;
                match verdict {
                    Verdict::DeadLetterAndPause { count } => {
                        let why =
                            self.rejection_pause_reason(status, code.as_deref(), count, &reason);
                        self.pause(&why, Some(status), None, now_i);
                    }
                    _ => self.api_answered(probe),
                }
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

    /// Every member of a storm summary to dead letters with the same reason.
    async fn dead_letter_members(
        &mut self,
        batch: &Batch,
        kind: DeadKind,
        message: &str,
        status: Option<u16>,
        api_message: Option<String>,
    ) -> Result<(), DrainError> {
        let wall = self.clock.wall_ms();
        for m in &batch.members {
            let dead = DeadReason {
                kind,
                message: message.to_owned(),
                status,
                api_message: api_message.clone(),
            };
            let key = m.key;
            let record = self.release(key).map(|h| h.record);
            let moved = wal_call(&self.wal, "dead_letter_record", move |w| {
                match record {
                    Some(record) => w.dead_letter_record(key, &record, dead, wall),
                    None => w.dead_letter(key, dead, wall),
                }
                .map(|_| ())
            })
            .await?;
            if still_pending(moved)? {
                AlertDeadLettered {
                    alert_id: &m.alert_id,
                    kind,
                    reason: message,
                    status,
                    attempts: batch.attempts,
                }
                .emit(&self.counters);
            }
        }
        Ok(())
    }

    /// The reason of an `Unconfirmed` dead letter (T1) for a held alert.
    fn unconfirmed_reason(&self, key: Key, alert_id: &str, timeouts: u32) -> String {
        let answers = self
            .held
            .get(&key)
            .map(|h| h.answers.clone())
            .unwrap_or_default();
        format!(
            "alert {alert_id}: {}",
            self.unconfirmed_reason_text(alert_id, timeouts, &answers)
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

    /// How long a job (alert or storm summary) that failed `attempts` times waits.
    fn retry_delay(&self, attempts: u32, after: Option<Duration>) -> Duration {
        schedule::retry_delay(&self.cfg.backoff, attempts, after, fastrand::f64())
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
        let pending = wal_call(&self.wal, "stats", |w| w.stats()).await??.pending;
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
            // Liveness: `/health` checks this loop turned recently (it wakes at least every
            // `IDLE_WAKE`).
            events::drain_turned(&self.counters);
            if fault_wedge_drain() {
                cancel.cancelled().await;
                break;
            }
            // The feed only says "ingest appended": the cursors read the records themselves.
            while feed.try_recv().is_ok() {
                self.appended();
            }
            self.refill().await?;
            if self.unflushed && Instant::now() >= self.next_flush {
                wal_call(&self.wal, "flush", |w| w.flush()).await??;
                self.unflushed = false;
                self.next_flush = Instant::now() + FLUSH_EVERY;
            }
            if sweeping && Instant::now() >= self.next_sweep {
                self.sweep_expired().await?;
                self.next_sweep = Instant::now() + EXPIRY_SWEEP;
            }
            if Instant::now() >= self.next_reconcile {
                if self.reconcile().await? {
                    self.refill().await?;
                }
                let every = if self.reconcile_suspect {
                    RECONCILE_CONFIRM
                } else {
                    RECONCILE_EVERY
                };
                self.next_reconcile = Instant::now() + every;
            }
            if let Some(jump) = self.clock.jumped() {
                events::clock_jumped(&self.counters, jump);
            }
            if let Some(storm) = self.storm.as_mut() {
                storm.flush_due(self.clock.sched_ms(), &self.mapper);
            }
            // One `now` for dispatch and the wake-up: a retry time falling between two reads of
            // the clock would be neither ready in dispatch nor counted as a wake-up (review F2).
            let now = self.clock.sched_ms();
            let held = self.dispatch().await?;
            let sweep_in =
                sweeping.then(|| self.next_sweep.saturating_duration_since(Instant::now()));
            let wake = [
                held,
                self.queue
                    .next_wakeup_ms()
                    .map(|at| Duration::from_millis(at.saturating_sub(now))),
                sweep_in,
                Some(
                    self.next_reconcile
                        .saturating_duration_since(Instant::now()),
                ),
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
            .unwrap_or(IDLE_WAKE)
            .min(IDLE_WAKE)
            .max(Duration::from_millis(1));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.joined(joined).await?;
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
                Some(joined) = self.tasks.join_next_with_id() => {
                    if let Ok((_, done)) = joined { self.settle(done).await?; }
                }
            }
        }
        wal_call(&self.wal, "flush", |w| w.flush()).await??;
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

/// The correlation id a Genesys reason ends with (`"… [correlation_id abc]"`), if any.
fn correlation_in(reason: &str) -> Option<&str> {
    let rest = &reason[reason.rfind("[correlation_id ")? + "[correlation_id ".len()..];
    rest.split_once(']')
        .map(|(id, _)| id)
        .filter(|id| !id.is_empty())
}

/// The HTTP status a Genesys reason starts with (`"…: HTTP 503 …"`), for an expired alert's
/// dead letter.
fn status_in(reason: &str) -> Option<u16> {
    let rest = &reason[reason.find("HTTP ")? + 5..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Fault injection for the end-to-end tests, never set in production: with
/// `ALERTBRIDGE_FAULT_WEDGE_DRAIN=1` in its environment the drain loop turns once and then
/// stops turning (it still obeys shutdown), which is what a drain stuck in a call that never
/// returns looks like from outside: `/health` fails and the systemd watchdog is no longer fed.
fn fault_wedge_drain() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var_os("ALERTBRIDGE_FAULT_WEDGE_DRAIN").is_some_and(|v| v == "1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use alertbridge_genesys::{ClientConfig, SecretSource, Target};
    use alertbridge_payload::MappingConfig;
    use alertbridge_wal::{Entry, SyncTarget, WalConfig, PRIORITY_NORMAL};
    use genesys_sim::{Sim, SimConfig};

    /// An fsync that takes `delay` while `slow` is set (an SD card under write load).
    struct SlowSync {
        slow: Arc<AtomicBool>,
        delay: Duration,
    }

    impl SyncTarget for SlowSync {
        fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
            if self.slow.load(Ordering::Relaxed) {
                std::thread::sleep(self.delay);
            }
            file.sync_data()
        }
    }

    /// A drain over a log of its own and an in-process simulator.
    struct Rig {
        _dir: tempfile::TempDir,
        wal: Wal,
        sim: Sim,
        counters: Arc<Counters>,
        drain: Option<Drain>,
    }

    fn delivery(change: impl FnOnce(&mut crate::config::RawDelivery)) -> DeliveryConfig {
        let mut raw = crate::config::RawDelivery {
            rate_per_sec: Some(1000.0),
            burst: Some(100),
            backoff_initial_ms: Some(50),
            backoff_max_ms: Some(200),
            breaker_cooldown_ms: Some(200),
            ..Default::default()
        };
        change(&mut raw);
        crate::config::delivery_from_raw(raw).expect("test delivery config is valid")
    }

    async fn rig_with(cfg: DeliveryConfig, sync: Option<Box<dyn SyncTarget>>) -> Rig {
        rig_timed(cfg, sync, ClientConfig::DEFAULT_REQUEST_TIMEOUT).await
    }

    async fn rig_timed(
        cfg: DeliveryConfig,
        sync: Option<Box<dyn SyncTarget>>,
        request_timeout: Duration,
    ) -> Rig {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let wal_cfg = WalConfig::new(dir.path().join("wal"));
        let wal = match sync {
            Some(sync) => Wal::open_with_sync(wal_cfg, sync),
            None => Wal::open(wal_cfg),
        }
        .expect("log opens");
        let sim = Sim::start(SimConfig::default()).await.expect("sim starts");
        let mut client_cfg = ClientConfig::new(
            sim.base_url(),
            sim.base_url(),
            "sim-client",
            SecretSource::Static("sim-secret".into()),
            Target::Workflow {
                flow_id: "flow-1".into(),
                flow_version: None,
            },
        );
        client_cfg.request_timeout = request_timeout;
        let client = GenesysClient::new(client_cfg).expect("client builds");
        let mapper = Arc::new(Mapper::new(&MappingConfig::default()).expect("default mapping"));
        let counters = Arc::new(Counters::default());
        let drain = Drain::new(cfg, wal.clone(), client, mapper, counters.clone());
        Rig {
            _dir: dir,
            wal,
            sim,
            counters,
            drain: Some(drain),
        }
    }

    async fn rig() -> Rig {
        rig_with(delivery(|_| {}), None).await
    }

    fn record(id: &str, payload: &[u8], received_at_ms: u64) -> Record {
        Record {
            alert_id: id.into(),
            topic: "plant/north/alerts/d1".into(),
            payload: payload.to_vec(),
            priority: PRIORITY_NORMAL,
            received_at_ms,
            attempts: 0,
            first_attempt_ms: None,
            last_attempt_ms: None,
            next_attempt_ms: 0,
            last_error: None,
            mqtt: None,
        }
    }

    fn alert(n: usize) -> Record {
        let id = format!("a-{n}");
        let payload =
            serde_json::json!({"alert_id": id, "device_id": "d1", "alert_level": "major"});
        record(&id, payload.to_string().as_bytes(), now_ms())
    }

    impl Rig {
        fn append(&self, records: Vec<Record>) {
            let entries = records.into_iter().map(Entry::Pending).collect();
            let _ = self.wal.append_batch(entries).expect("append");
        }

        /// Run the drain until `until` holds (checked every 10 ms, 10 s at most), then stop it.
        async fn run_until(&mut self, what: &str, until: impl Fn(&Rig) -> bool) {
            let drain = self.drain.take().expect("the drain runs once");
            let (_feed, feed_rx) = mpsc::unbounded_channel();
            let cancel = CancellationToken::new();
            let task = tokio::spawn(drain.run(feed_rx, cancel.clone()));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !until(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cancel.cancel();
            task.await.expect("drain task").expect("drain ends cleanly");
        }
    }

    #[test]
    fn correlation_id_is_read_from_a_reason() {
        assert_eq!(
            correlation_in("server error: HTTP 503 service.unavailable [correlation_id c-9]"),
            Some("c-9")
        );
        assert_eq!(correlation_in("timed out waiting for the answer"), None);
        assert_eq!(correlation_in("[correlation_id ]"), None);
    }

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_in_the_log_are_delivered_once_each_and_removed() {
        let mut rig = rig().await;
        rig.append((0..50).map(alert).collect());
        rig.run_until("50 deliveries", |r| r.sim.accepted().len() >= 50)
            .await;
        let mut ids: Vec<String> = rig
            .sim
            .accepted()
            .into_iter()
            .filter_map(|a| a.alert_id)
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 50);
        assert_eq!(rig.wal.stats().expect("stats").pending, 0);
    }

    /// A wall clock that is the system's shifted by `offset` ms (a test moves it).
    fn faked_wall(offset: &Arc<std::sync::atomic::AtomicI64>) -> WallClock {
        let offset = offset.clone();
        Arc::new(move || (now_ms() as i64 + offset.load(Ordering::Relaxed)) as u64)
    }

    const HOUR_MS: i64 = 3_600_000;

    /// Issue 9, item 5: the TTL age was `wall now - received_at_ms`, so when NTP moved the wall
    /// clock of a gateway without RTC hours ahead, every alert received seconds before was
    /// dead-lettered as expired. The drain reads 5 alerts, the faked wall clock jumps 5 h ahead,
    /// the TTL is 60 s: the sweep expires nothing and all 5 are delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wall_clock_jump_of_hours_ahead_expires_no_fresh_alert() {
        let mut rig = rig_with(delivery(|d| d.ttl_normal_secs = Some(60)), None).await;
        let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let drain = rig.drain.as_mut().expect("drain");
        drain.set_wall_clock(faked_wall(&offset));
        rig.append((0..5).map(alert).collect());
        let drain = rig.drain.as_mut().expect("drain");
        assert_eq!(drain.refill().await.expect("refill"), 5);
        offset.store(5 * HOUR_MS, Ordering::Relaxed);
        drain.sweep_expired().await.expect("sweep");
        assert_eq!(rig.counters.expired.load(Ordering::Relaxed), 0);
        rig.run_until("5 deliveries", |r| r.sim.accepted().len() >= 5)
            .await;
        assert_eq!(rig.counters.expired.load(Ordering::Relaxed), 0);
        assert_eq!(rig.counters.clock_jumps.load(Ordering::Relaxed), 1);
        assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
    }

    /// Issue 9, item 5: retry times lived on the wall clock, so NTP setting it back 5 h put
    /// every alert in backoff to sleep for 5 h. The API fails (503) until 3 retries are
    /// scheduled; then the faked wall clock goes back 5 h and the API recovers: everything is
    /// delivered within the (200 ms) backoff, nothing waits for the wall clock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wall_clock_set_back_hours_does_not_put_retries_to_sleep() {
        let mut rig = rig_with(delivery(|d| d.breaker_failures = Some(1000)), None).await;
        let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
        rig.drain
            .as_mut()
            .expect("drain")
            .set_wall_clock(faked_wall(&offset));
        rig.sim.update_faults(|f| f.error_rate_503 = 1.0);
        rig.append((0..3).map(alert).collect());
        let started = Instant::now();
        rig.run_until("3 deliveries after the clock went back", |r| {
            if r.counters.retried.load(Ordering::Relaxed) >= 3
                && offset.load(Ordering::Relaxed) == 0
            {
                offset.store(-5 * HOUR_MS, Ordering::Relaxed);
                r.sim.set_faults(genesys_sim::Faults::default());
            }
            r.sim.accepted().len() >= 3
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(offset.load(Ordering::Relaxed), -5 * HOUR_MS);
    }

    /// Issue 9, item 5: a retry time persisted while the wall clock ran 5 h ahead (then NTP set
    /// it back) parked the alert for 5 h. Read back it is due within `backoff_max` (200 ms).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_time_persisted_hours_ahead_is_due_within_the_longest_backoff() {
        let mut rig = rig().await;
        let ahead = now_ms() + 5 * HOUR_MS as u64;
        let records = (0..3)
            .map(|n| {
                let mut r = alert(n);
                r.attempts = 1;
                r.next_attempt_ms = ahead;
                r
            })
            .collect();
        rig.append(records);
        let started = Instant::now();
        rig.run_until("3 deliveries", |r| r.sim.accepted().len() >= 3)
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A mapper with a bug: it panics on any payload containing `PANIC`.
    fn buggy_map(
        mapper: &Mapper,
        topic: &str,
        payload: &[u8],
        props: &[(String, String)],
    ) -> Result<Mapped, Rejection> {
        if payload.windows(5).any(|w| w == b"PANIC") {
            panic!("index out of bounds (test)");
        }
        mapper.map_with_props(topic, payload, props)
    }

    #[test]
    fn a_panicking_mapper_is_caught_with_its_message() {
        let mapper = Mapper::new(&MappingConfig::default()).expect("default mapping");
        let ok = map_guarded(buggy_map, &mapper, "t", br#"{"a": 1}"#, &[]);
        assert!(ok.is_ok(), "{ok:?}");
        match map_guarded(buggy_map, &mapper, "t", br#"{"a": "PANIC"}"#, &[]) {
            Err(MapFailure::Panicked(m)) => assert!(m.contains("index out of bounds"), "{m}"),
            other => panic!("not caught: {other:?}"),
        }
        assert!(matches!(
            map_guarded(buggy_map, &mapper, "t", b"not json", &[]),
            Err(MapFailure::Rejected(_))
        ));
    }

    /// Issue 9, item 5: ingest guards its mapping, the drain did not. A stored record that made
    /// the mapper panic killed the drain (the agent exits, restarts, meets the same record
    /// first: a crash loop, every alert behind it stuck), e.g. after `replay --all` by a build
    /// with a mapper bug. Now it is a `Malformed` dead letter with the reason and the alerts
    /// around it are delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_panics_the_mapper_is_dead_lettered_and_delivery_goes_on() {
        let mut rig = rig().await;
        rig.drain.as_mut().expect("drain").map = buggy_map;
        let mut records: Vec<Record> = (0..3).map(alert).collect();
        let bad = br#"{"alert_id": "bad", "device_id": "PANIC"}"#;
        records.insert(1, record("bad", bad, now_ms()));
        rig.append(records);
        rig.run_until("3 deliveries and 1 dead letter", |r| {
            r.sim.accepted().len() >= 3 && r.counters.dead_lettered.load(Ordering::Relaxed) == 1
        })
        .await;
        let dead: Vec<_> = rig
            .wal
            .dead_letters()
            .map(|d| d.expect("dead letter"))
            .collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason.kind, DeadKind::Malformed);
        assert!(
            dead[0].reason.message.contains("mapper failed")
                && dead[0].reason.message.contains("index out of bounds"),
            "{:?}",
            dead[0].reason
        );
        assert_eq!(
            dead[0].record.as_ref().map(|r| r.alert_id.as_str()),
            Some("bad")
        );
        assert_eq!(rig.wal.stats().expect("stats").pending, 0);
    }

    /// Throws away everything the drain knows about the alerts it read, keeping its cursors at
    /// the end of the log: the state a lost scan result or a forgotten key leaves behind.
    fn lose_track(drain: &mut Drain) {
        drain.held.clear();
        drain.held_per_lane.clear();
        drain.held_bytes = 0;
        drain.queue = Queue::new(drain.cfg.normal_every);
    }

    /// Issue 9, item 5: an alert the drain had forgotten (read by a cursor, then lost from
    /// memory) stayed in the log until the next restart, with nothing saying so. The periodic
    /// reconcile finds the drain idle with alerts pending in the log, confirms it on a second
    /// look, logs at error, counts it and reads the log again from the start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_alerts_the_drain_lost_track_of_are_found_by_the_reconcile_and_delivered() {
        let mut rig = rig().await;
        rig.append((0..5).map(alert).collect());
        let drain = rig.drain.as_mut().expect("drain");
        assert_eq!(drain.refill().await.expect("refill"), 5);
        assert_eq!(drain.refill().await.expect("refill"), 0, "caught up");
        lose_track(drain);
        assert_eq!(
            drain.refill().await.expect("refill"),
            0,
            "the cursors do not see them"
        );
        assert!(
            !drain.reconcile().await.expect("reconcile"),
            "first look: only suspect"
        );
        assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 0);
        assert!(
            drain.reconcile().await.expect("reconcile"),
            "confirmed: repaired"
        );
        assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 1);
        rig.run_until("5 deliveries", |r| r.sim.accepted().len() >= 5)
            .await;
        assert_eq!(rig.wal.stats().expect("stats").pending, 0);
    }

    /// A record held in memory but in no queue, task or storm window (the state a delivery task
    /// that vanished leaves) is queued again by the reconcile at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_alert_that_is_in_no_queue_is_queued_again_by_the_reconcile() {
        let mut rig = rig().await;
        rig.append((0..3).map(alert).collect());
        let drain = rig.drain.as_mut().expect("drain");
        drain.refill().await.expect("refill");
        drain.queue = Queue::new(drain.cfg.normal_every);
        assert!(drain.reconcile().await.expect("reconcile"));
        assert_eq!(drain.queue.len(), 3);
        assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 1);
        rig.run_until("3 deliveries", |r| r.sim.accepted().len() >= 3)
            .await;
    }

    /// The reconcile repairs nothing while alerts legitimately wait (a retry time ahead) or the
    /// drain is simply not caught up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reconcile_leaves_a_waiting_backlog_alone() {
        let mut rig = rig_with(delivery(|d| d.backoff_max_ms = Some(60_000)), None).await;
        let later = now_ms() + 30_000;
        rig.append(
            (0..3)
                .map(|n| {
                    let mut r = alert(n);
                    r.next_attempt_ms = later;
                    r
                })
                .collect(),
        );
        let drain = rig.drain.as_mut().expect("drain");
        assert!(
            !drain.reconcile().await.expect("reconcile"),
            "not read yet: not idle"
        );
        drain.refill().await.expect("refill");
        for _ in 0..3 {
            assert!(!drain.reconcile().await.expect("reconcile"));
        }
        assert_eq!(drain.queue.waiting_len(), 3);
        assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 0);
    }

    /// Issue 9, item 5: a delivery task that failed to join (panic, abort) left its alert held
    /// and in no queue until restart, and if it was the breaker's probe the breaker stayed
    /// half-open for good. Now its alert is queued again and counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alert_whose_delivery_task_failed_is_queued_again() {
        let mut rig = rig().await;
        rig.sim.update_faults(|f| f.latency_ms = 2_000);
        rig.append(vec![alert(0)]);
        let drain = rig.drain.as_mut().expect("drain");
        drain.refill().await.expect("refill");
        drain.dispatch().await.expect("dispatch");
        assert_eq!(drain.tasks.len(), 1);
        drain.tasks.abort_all();
        let joined = drain.tasks.join_next_with_id().await.expect("a task");
        assert!(joined.is_err(), "aborted");
        drain.joined(joined).await.expect("joined");
        assert_eq!(drain.queue.ready_len(), 1);
        assert!(drain.in_flight.is_empty());
        assert_eq!(rig.counters.tasks_failed.load(Ordering::Relaxed), 1);
        rig.sim.set_faults(genesys_sim::Faults::default());
        rig.run_until("the delivery", |r| !r.sim.accepted().is_empty())
            .await;
    }

    /// Issue 9, item 4: an API that answers 400 to everything (a flow's inputs changed in
    /// Architect) dead-lettered the whole backlog at full rate. Now the 5th identical rejection
    /// pauses delivery: 5 dead letters, the other 195 stay pending (also the requests that were
    /// in flight when it paused), the pause is named in status; once the API accepts again the
    /// probe passes and everything else is delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_400_to_every_request_pauses_after_five_dead_letters_and_the_rest_wait_for_the_fix() {
        let mut rig = rig_with(delivery(|d| d.max_in_flight = Some(16)), None).await;
        rig.sim.update_faults(|f| f.force_status = Some(400));
        rig.append((0..200).map(alert).collect());
        let probes_while_paused = Arc::new(AtomicU64::new(0));
        let seen = probes_while_paused.clone();
        rig.run_until("the pause, probes, then the fix and 195 deliveries", |r| {
            if r.counters.paused.load(Ordering::Relaxed) {
                let answered_400 =
                    r.sim.requests().iter().filter(|q| q.status == 400).count() as u64;
                seen.store(answered_400, Ordering::Relaxed);
                // the in-flight answers and three probes met the 400: fix it
                if answered_400 >= 16 + 3 {
                    r.sim.set_faults(genesys_sim::Faults::default());
                }
            }
            r.sim.accepted().len() >= 195
        })
        .await;
        assert!(probes_while_paused.load(Ordering::Relaxed) >= 19);
        let dead: Vec<_> = rig
            .wal
            .dead_letters()
            .map(|d| d.expect("dead letter"))
            .collect();
        assert_eq!(dead.len(), 5, "{dead:#?}");
        assert!(dead.iter().all(|d| d.reason.status == Some(400)));
        assert_eq!(rig.wal.stats().expect("stats").pending, 0);
        let snap = rig.counters.snapshot();
        assert!(!snap.paused, "resumed by itself");
        assert_eq!(snap.dead_lettered, 5);
    }

    /// Issue 9, item 4: 408/409/423/425 are retried now, but the drain counted them toward the
    /// breaker like a 5xx, so an API that answered "conflict" opened it and held every other
    /// alert. With a threshold of 3, twenty 409s leave it closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_4xx_answers_do_not_open_the_breaker() {
        let mut rig = rig_with(delivery(|d| d.breaker_failures = Some(3)), None).await;
        rig.sim.update_faults(|f| f.force_status = Some(409));
        rig.append((0..5).map(alert).collect());
        let opened = Arc::new(AtomicBool::new(false));
        let seen = opened.clone();
        rig.run_until("20 retries, then the deliveries", |r| {
            if r.counters.breaker_open.load(Ordering::Relaxed) {
                seen.store(true, Ordering::Relaxed);
            }
            if r.counters.retried.load(Ordering::Relaxed) >= 20 {
                r.sim.set_faults(genesys_sim::Faults::default());
            }
            r.sim.accepted().len() >= 5
        })
        .await;
        assert!(
            !opened.load(Ordering::Relaxed),
            "the breaker opened on 409s"
        );
        assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
    }

    fn timeouts_cfg() -> DeliveryConfig {
        delivery(|d| {
            d.max_request_timeout_ms = Some(800);
            d.max_timeouts = Some(3);
            d.breaker_failures = Some(1000);
        })
    }

    /// Arrival times (ms since the first) of the launches of `alert_id` the simulator saw, and
    /// how many it accepted.
    fn launches_of(sim: &Sim, alert_id: &str) -> (Vec<u64>, usize) {
        let accepted: Vec<_> = sim
            .accepted()
            .into_iter()
            .filter(|a| a.alert_id.as_deref() == Some(alert_id))
            .collect();
        let at: Vec<u64> = accepted
            .iter()
            .map(|a| {
                a.at.duration_since(accepted[0].at)
                    .unwrap_or_default()
                    .as_millis() as u64
            })
            .collect();
        (at, accepted.len())
    }

    /// Issue 9, item 7: with an API slower than the request timeout, every retry (and every
    /// probe) launched the alert again, without end. Now each timed-out attempt waits twice as
    /// long (200, 400, 800 ms: the cap), and the 3rd timeout makes it an `Unconfirmed` dead
    /// letter: Genesys launched it 3 times (the simulator accepts, then answers after 2 s), never
    /// more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alert_the_api_never_answers_in_time_is_launched_at_most_max_timeouts_times() {
        let mut rig = rig_timed(timeouts_cfg(), None, Duration::from_millis(200)).await;
        rig.sim.update_faults(|f| f.answer_latency_ms = 2_000);
        rig.append(vec![alert(0)]);
        rig.run_until("the dead letter", |r| {
            r.counters.dead_lettered.load(Ordering::Relaxed) == 1
        })
        .await;
        let (at, launched) = launches_of(&rig.sim, "a-0");
        assert_eq!(launched, 3, "launches at {at:?}");
        // each attempt waited its whole (doubled) timeout before the next went
        assert!(
            at[1] >= 200 && at[2] - at[1] >= 400,
            "launches at {at:?} ms"
        );
        let dead: Vec<_> = rig
            .wal
            .dead_letters()
            .map(|d| d.expect("dead letter"))
            .collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason.kind, DeadKind::Unconfirmed);
        let msg = &dead[0].reason.message;
        for part in [
            "3 times",
            "0.2 s, 0.4 s, 0.8 s",
            "alertId a-0",
            "no execution or correlation id",
        ] {
            assert!(msg.contains(part), "{part:?} missing: {msg}");
        }
        let record = dead[0].record.as_ref().expect("record kept");
        assert_eq!(record.attempts, 3);
        assert_eq!(schedule::timeouts_in(record.last_error.as_deref()), 3);
        // nothing more goes for it
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(launches_of(&rig.sim, "a-0").1, 3);
    }

    /// The longer timeout is what lets a slow API answer: 300 ms answers, 200 ms timeout. The
    /// first attempt times out, the second (400 ms) gets the 2xx: launched twice, delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_timeout_the_longer_timeout_lets_a_slow_answer_arrive() {
        let mut rig = rig_timed(timeouts_cfg(), None, Duration::from_millis(200)).await;
        rig.sim.update_faults(|f| f.answer_latency_ms = 300);
        rig.append(vec![alert(0)]);
        rig.run_until("the delivery", |r| {
            r.counters.delivered.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(launches_of(&rig.sim, "a-0").1, 2);
        assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
    }

    /// The count is in the persisted record (`last_error`), so a restart does not reset it: an
    /// alert read back with 2 timeouts waits 800 ms on its next attempt, and one more timeout
    /// makes it a dead letter after a single launch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_timeout_count_survives_a_restart() {
        let mut rig = rig_timed(timeouts_cfg(), None, Duration::from_millis(200)).await;
        rig.sim.update_faults(|f| f.answer_latency_ms = 2_000);
        let mut r = alert(0);
        r.attempts = 2;
        r.last_error = Some(schedule::with_timeouts(
            "timed out waiting for the answer",
            2,
        ));
        rig.append(vec![r]);
        let started = Instant::now();
        rig.run_until("the dead letter", |r| {
            r.counters.dead_lettered.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(800));
        assert_eq!(launches_of(&rig.sim, "a-0").1, 1);
        let dead: Vec<_> = rig
            .wal
            .dead_letters()
            .map(|d| d.expect("dead letter"))
            .collect();
        assert_eq!(dead[0].reason.kind, DeadKind::Unconfirmed);
    }

    /// Issue 9, item 5: the drain called the log synchronously inside its async task, so a
    /// slow fsync (a dead letter is fsynced; an SD card under load takes hundreds of ms) held a
    /// runtime worker: on a single-core board that starves the MQTT keep-alives. Now every log
    /// call runs on the blocking pool. On a current-thread runtime, a ticker task keeps ticking
    /// while the drain dead-letters a malformed record behind a 400 ms fsync.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_fsync_does_not_stall_the_runtime() {
        let slow = Arc::new(AtomicBool::new(false));
        let sync = SlowSync {
            slow: slow.clone(),
            delay: Duration::from_millis(400),
        };
        let mut rig = rig_with(delivery(|_| {}), Some(Box::new(sync))).await;
        rig.append(vec![record("bad", b"not json", now_ms())]);
        slow.store(true, Ordering::Relaxed);
        let longest_gap = Arc::new(AtomicU64::new(0));
        let ticker = {
            let longest_gap = longest_gap.clone();
            tokio::spawn(async move {
                let mut last = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let gap = last.elapsed().as_millis() as u64;
                    longest_gap.fetch_max(gap, Ordering::Relaxed);
                    last = Instant::now();
                }
            })
        };
        rig.run_until("the dead letter", |r| {
            r.counters.dead_lettered.load(Ordering::Relaxed) == 1
        })
        .await;
        ticker.abort();
        let gap = longest_gap.load(Ordering::Relaxed);
        assert!(gap < 200, "the runtime stood still for {gap} ms");
        slow.store(false, Ordering::Relaxed);
        assert_eq!(rig.wal.stats().expect("stats").dead_letters, 1);
    }
}
