//! Drain: pending alerts → Genesys, paced, retried, never lost.
//!
//! One task owns every decision (queue, limiter, breaker); deliveries run as child tasks and
//! report their [`Disposition`] back here, so the log is changed from one place only.
//!
//! # Files
//! - `mod.rs` (this file): the drain's state and its loop ([`Drain::run`]).
//! - `window.rs`: the bounded window over the log: cursors, held records, the reconcile (D4).
//! - `dispatch.rs`: picking the next job, checking and mapping its record, starting its
//!   delivery task through the [`job::Deliver`] seam.
//! - `job.rs`: a [`job::Job`] is one request and the alerts it settles (one for a single
//!   alert, every member for a storm summary), with their shared attempt history.
//! - `settle.rs`: one `settle` applies an answer to any job: receipts, retries, dead letters,
//!   and the pacing (limiter, breaker, rejection run) that follows from it.
//! - `expiry.rs`: TTL checks and the sweep.
//! - `storm.rs`: storm coalescing (`[mapping.coalesce]`): the drain's storm state over the
//!   pure, time-passed-in `coalescer.rs`.
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
//! | 400/413/415/422 | dead letter `Rejected` with status and API message | the API is up; the `pause_after_rejections`-th identical one (same status and API code) in a row pauses delivery, and later ones with the same answer stay pending until a request passes (R1 in `breaker.rs`) |
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
//! (`storm.rs`); an absorbed alert is not sent and stays pending in the log, held in memory
//! as a member of its site's window. When the window ends, one summary request goes for all of
//! them (same breaker, limiter and in-flight cap), settled by the same `settle` as an alert for
//! every member: 2xx → each removed with a receipt carrying the summary's execution id (I3
//! holds per member); permanent rejection → each a dead letter naming the summary, with the
//! summary's attempt history; retryable or pause → the
//! summary is kept and retried, the members stay pending. A crash leaves the members pending
//! with no attempt made: the next run offers them again. With coalescing off nothing of this
//! runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_genesys::MAX_RATE_LIMIT_WAIT;
use alertbridge_payload::Mapper;
use alertbridge_wal::{Cursor, Key, Priority, Record, Wal, WalError};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use self::dispatch::MapFn;
use self::job::{Deliver, Done, InFlight};
use self::storm::Storm;
use crate::breaker::{Breaker, Rejections};
#[cfg(test)]
use crate::clock::WallClock;
use crate::clock::{self, Clock};
use crate::config::DeliveryConfig;
use crate::events::{self, Counters};
use crate::limiter::Limiter;
use crate::schedule::{Queue, Sighting};

mod coalescer;
mod dispatch;
mod expiry;
mod job;
mod settle;
mod storm;
#[cfg(test)]
mod tests;
mod window;

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

/// The drain's owned state.
pub(crate) struct Drain {
    cfg: DeliveryConfig,
    wal: Wal,
    /// Where requests go ([`Deliver`]).
    client: Arc<dyn Deliver>,
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
        client: impl Deliver,
        mapper: Arc<Mapper>,
        counters: Arc<Counters>,
    ) -> Drain {
        let now = clock::now();
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
            reprobe: Arc::new(Notify::new()),
            next_sweep: now,
            storm: mapper.coalesce().map(Storm::new),
            clock: Clock::system(),
            cfg,
            wal,
            client: Arc::new(client),
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
                    let t = self.breaker.on_failure(clock::now(), Some(probe));
                    self.breaker_moved(t, "the probe's delivery task failed");
                }
                Ok(())
            }
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
            if self.unflushed && clock::now() >= self.next_flush {
                wal_call(&self.wal, "flush", |w| w.flush()).await??;
                self.unflushed = false;
                self.next_flush = clock::now() + FLUSH_EVERY;
            }
            if sweeping && clock::now() >= self.next_sweep {
                self.sweep_expired().await?;
                self.next_sweep = clock::now() + EXPIRY_SWEEP;
            }
            if clock::now() >= self.next_reconcile {
                if self.reconcile().await? {
                    self.refill().await?;
                }
                let every = if self.reconcile_suspect {
                    RECONCILE_CONFIRM
                } else {
                    RECONCILE_EVERY
                };
                self.next_reconcile = clock::now() + every;
            }
            if let Some(jump) = self.clock.jumped() {
                events::clock_jumped(&self.counters, jump);
            }
            if let Some(storm) = self.storm.as_mut() {
                storm.flush_due(self.clock.sched_ms(), &self.mapper);
            }
            // One `now` for dispatch and the wake-up: a retry time falling between two reads of
            // the clock would be neither ready in dispatch nor counted as a wake-up.
            let now = self.clock.sched_ms();
            let held = self.dispatch().await?;
            let sweep_in =
                sweeping.then(|| self.next_sweep.saturating_duration_since(clock::now()));
            let wake = [
                held,
                self.queue
                    .next_wakeup_ms()
                    .map(|at| Duration::from_millis(at.saturating_sub(now))),
                sweep_in,
                Some(self.next_reconcile.saturating_duration_since(clock::now())),
                self.unflushed
                    .then(|| self.next_flush.saturating_duration_since(clock::now())),
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
                    self.breaker.probe_now(clock::now());
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

/// Fault injection for the end-to-end tests, never set in production: with
/// `ALERTBRIDGE_FAULT_WEDGE_DRAIN=1` in its environment the drain loop turns once and then
/// stops turning (it still obeys shutdown), which is what a drain stuck in a call that never
/// returns looks like from outside: `/health` fails and the systemd watchdog is no longer fed.
fn fault_wedge_drain() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var_os("ALERTBRIDGE_FAULT_WEDGE_DRAIN").is_some_and(|v| v == "1"))
}
