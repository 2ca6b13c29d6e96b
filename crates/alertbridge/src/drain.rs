//! Drain: pending alerts → Genesys, paced, retried, never lost.
//!
//! One task owns every decision (queue, limiter, breaker); deliveries run as child tasks and
//! report their [`Disposition`] back here, so the log is changed from one place only.
//!
//! Invariant **I3**: a record leaves `pending` only through `Wal::remove` after a 2xx, or through
//! the atomic move `Wal::dead_letter` with a reason. Retryable failures, pauses, shutdown and
//! crashes all leave it pending (its `next_attempt_ms` persisted), so the worst case is a second
//! delivery, never a missing one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_genesys::{Disposition, GenesysClient};
use alertbridge_payload::Mapper;
use alertbridge_wal::{
    DeadKind, DeadReason, Key, Receipt, Record, Wal, WalError, PRIORITY_CRITICAL,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::events::{
    self, AlertDeadLettered, AlertDelivered, Counters, DeliveryPaused, DeliveryRetried,
};
use crate::ingest::now_ms;
use crate::limiter::{Breaker, Limiter, Permit, Transition};
use crate::schedule::{self, Queue};

/// How long delivery stays paused after a configuration fault before one probe request.
const PAUSE_PROBE: Duration = Duration::from_secs(30);

/// Errors that stop the drain (the agent exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The log failed.
    #[error("write-ahead log failed: {0}")]
    Wal(#[from] WalError),
}

/// What a finished delivery task hands back.
struct Done {
    key: Key,
    record: Record,
    disposition: Disposition,
    probe: bool,
}

/// The drain's owned state.
pub(crate) struct Drain {
    cfg: DeliveryConfig,
    wal: Wal,
    client: GenesysClient,
    mapper: Arc<Mapper>,
    counters: Arc<Counters>,
    queue: Queue,
    limiter: Limiter,
    breaker: Breaker,
    tasks: JoinSet<Done>,
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
        Drain {
            queue: Queue::new(cfg.normal_every),
            limiter: Limiter::new(cfg.rate_per_sec, cfg.burst, now),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            tasks: JoinSet::new(),
            cfg,
            wal,
            client,
            mapper,
            counters,
        }
    }

    /// Rebuild the queue from the log (the truth). Undecodable records become dead letters of
    /// kind `Corrupt` (I4): counted and visible, never a panic, never a stuck queue.
    fn load(&mut self) -> Result<(), DrainError> {
        let now = now_ms();
        let mut corrupt = Vec::new();
        let mut n = 0u64;
        for item in self.wal.pending() {
            match item {
                Ok((key, rec)) => {
                    self.queue.insert(key, rec.next_attempt_ms, now);
                    n += 1;
                }
                Err(c) => corrupt.push(c),
            }
        }
        for c in corrupt {
            let reason = DeadReason {
                kind: DeadKind::Corrupt,
                message: format!("record could not be decoded: {}", c.error),
                status: None,
                api_message: None,
            };
            self.wal.dead_letter(c.key, reason.clone(), now)?;
            AlertDeadLettered {
                alert_id: "",
                kind: DeadKind::Corrupt,
                reason: &reason.message,
                status: None,
            }
            .emit(&self.counters);
        }
        if n > 0 {
            tracing::info!(
                pending = n,
                "resuming delivery of alerts already in the log"
            );
        }
        Ok(())
    }

    /// Start as many deliveries as the breaker, the bucket and the concurrency cap allow.
    /// Returns how long to sleep before trying again, if something is held back.
    fn dispatch(&mut self) -> Result<Option<Duration>, DrainError> {
        let now_i = Instant::now();
        self.queue.promote(now_ms());
        while self.tasks.len() < self.cfg.max_in_flight && self.queue.ready_len() > 0 {
            let probe = match self.breaker.permit(now_i) {
                Permit::Send => false,
                Permit::Probe => true,
                Permit::Wait(d) => return Ok(Some(d)),
            };
            if let Err(d) = self.limiter.try_acquire(now_i) {
                if probe {
                    // give the probe back to the breaker's clock: re-open for the wait
                    self.breaker.hold(now_i, d);
                }
                return Ok(Some(d));
            }
            let Some(key) = self.queue.pick() else { break };
            let Some(mut record) = self.wal.get(key)? else {
                continue;
            };
            let now = now_ms();
            let ttl = if key.priority == PRIORITY_CRITICAL {
                self.cfg.ttl_critical
            } else {
                self.cfg.ttl_normal
            };
            if schedule::expired(record.received_at_ms, now, ttl) {
                let age = Duration::from_millis(now.saturating_sub(record.received_at_ms));
                self.dead_letter(
                    key,
                    &record,
                    DeadKind::Expired,
                    format!(
                        "expired: not delivered within its TTL (age {}s)",
                        age.as_secs()
                    ),
                    None,
                    None,
                )?;
                continue;
            }
            let data = match self.mapper.map(&record.topic, &record.payload) {
                Ok(m) => m.data,
                Err(rej) => {
                    self.dead_letter(key, &record, DeadKind::Malformed, rej.reason, None, None)?;
                    continue;
                }
            };
            record.attempts += 1;
            record.first_attempt_ms.get_or_insert(now);
            record.last_attempt_ms = Some(now);
            let client = self.client.clone();
            self.tasks.spawn(async move {
                let disposition = client.deliver(&record.alert_id, &data).await;
                Done {
                    key,
                    record,
                    disposition,
                    probe,
                }
            });
            if probe {
                break;
            }
        }
        Ok(None)
    }

    fn dead_letter(
        &mut self,
        key: Key,
        record: &Record,
        kind: DeadKind,
        message: String,
        status: Option<u16>,
        api_message: Option<String>,
    ) -> Result<(), DrainError> {
        // persist the attempt history first, so the dead letter shows it
        self.wal.update(key, record)?;
        let reason = DeadReason {
            kind,
            message,
            status,
            api_message,
        };
        self.wal.dead_letter(key, reason.clone(), now_ms())?;
        AlertDeadLettered {
            alert_id: &record.alert_id,
            kind,
            reason: &reason.message,
            status,
        }
        .emit(&self.counters);
        Ok(())
    }

    /// Apply one delivery outcome to the log and to the pacing state.
    fn settle(&mut self, done: Done) -> Result<(), DrainError> {
        let Done {
            key,
            mut record,
            disposition,
            probe,
        } = done;
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
                self.wal.remove(key, receipt)?;
                AlertDelivered {
                    alert_id: &record.alert_id,
                    seq: key.seq,
                    status: r.status,
                    execution_id: r.execution_id.as_deref(),
                    latency: Duration::from_millis(now.saturating_sub(record.received_at_ms)),
                    attempts: record.attempts,
                }
                .emit(&self.counters);
                self.limiter.on_success();
                self.api_is_up();
            }
            Disposition::Retry {
                after,
                reason,
                status,
            } => {
                if status == Some(429) {
                    self.limiter.on_throttled();
                    if let Some(a) = after {
                        self.limiter.retry_after(now_i, a);
                    }
                }
                let next = schedule::next_attempt_ms(
                    &self.cfg.backoff,
                    record.attempts,
                    after,
                    now,
                    fastrand::f64(),
                );
                record.next_attempt_ms = next;
                record.last_error = Some(reason.clone());
                self.wal.update(key, &record)?;
                self.queue.insert(key, next, now);
                DeliveryRetried {
                    alert_id: &record.alert_id,
                    reason: &reason,
                    status,
                    attempts: record.attempts,
                    after: Duration::from_millis(next.saturating_sub(now)),
                }
                .emit(&self.counters);
                if let Some(Transition::Opened) = self.breaker.on_failure(now_i) {
                    events::breaker_changed(&self.counters, true, self.cfg.breaker_failures);
                }
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
                self.api_is_up();
            }
            Disposition::Pause {
                reason,
                status,
                after,
            } => {
                // Configuration fault: not this alert's fault. Keep it, not as an attempt.
                record.attempts = record.attempts.saturating_sub(1);
                record.last_error = Some(reason.clone());
                self.wal.update(key, &record)?;
                self.queue.insert(key, 0, now);
                let wait = after.unwrap_or(PAUSE_PROBE);
                self.breaker.hold(now_i, wait);
                if !probe
                    || !self
                        .counters
                        .paused
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    DeliveryPaused {
                        reason: &reason,
                        status,
                        retry_in: wait,
                    }
                    .emit(&self.counters);
                }
            }
        }
        Ok(())
    }

    fn api_is_up(&mut self) {
        if let Some(Transition::Closed) = self.breaker.on_success() {
            events::breaker_changed(&self.counters, false, 0);
        }
        events::delivery_resumed(&self.counters);
    }

    /// Run until `cancel`; then give in-flight deliveries `shutdown_timeout` and leave the rest
    /// pending.
    pub(crate) async fn run(
        mut self,
        mut feed: mpsc::UnboundedReceiver<Key>,
        cancel: CancellationToken,
    ) -> Result<(), DrainError> {
        self.load()?;
        let mut feed_open = true;
        loop {
            while let Ok(k) = feed.try_recv() {
                self.queue.insert(k, 0, now_ms());
            }
            let held = self.dispatch()?;
            let now = now_ms();
            let wake = [
                held,
                self.queue
                    .next_wakeup_ms()
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
                    Some(k) => self.queue.insert(k, 0, now_ms()),
                    // ingest stopped; keep draining what is pending
                    None => feed_open = false,
                },
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
        Ok(())
    }
}
