//! Delivery receipts back to MQTT (`[receipts]`): a task with its own MQTT connection publishes,
//! at QoS 1, the receipts the log queued with each alert's state change (delivered,
//! dead-lettered, expired), and marks each done only after the broker's PUBACK for it.
//!
//! # Why from the log, and at least once
//!
//! The receipt is written in the same log frame as the state change it reports (RC1, see
//! `alertbridge_wal`'s `wal/outbox.rs`), so a crash between the Genesys 2xx and the publish
//! still publishes it after the restart. Marking done is not fsynced, and a connection lost
//! with receipts in flight publishes them again on the next one: a subscriber may see a receipt
//! twice and deduplicates on `receipt_id`, which is stable across re-publishes.
//!
//! # Its own connection
//!
//! Client id `<mqtt.client_id>-receipts`, clean session, same broker, credentials and TLS as
//! ingest. Ingest's acks, epochs and subscriptions stay untouched, a burst of receipts never
//! delays a PUBACK of an alert, and with a clean session nothing is re-sent behind our back: on
//! every new connection the client is built afresh and the receipts not yet done are read from
//! the log again. Within one connection the client sends requests in order, so the n-th
//! outgoing PUBLISH is the n-th receipt handed to it; that is how a PUBACK's packet id finds
//! its receipt.
//!
//! # Bounded, never backpressure
//!
//! At most `max_pending` receipts wait (the oldest beyond it are dropped), and one older than
//! `max_age` when it could be published is dropped; both counted (`receipts_dropped`) and
//! warned at most once a minute. Receipts never hold up delivery: stopping the calls to
//! specialists because a plant display cannot be told about them would trade the primary
//! guarantee for a courtesy (see docs/decisions.md).
//!
//! # Topic
//!
//! `receipts.topic` is a template: `{name}` takes the value of placeholder `name` of
//! `mapping.topic_pattern` in the alert's topic (e.g. `{device}` in
//! `plant/{site}/alerts/{device}`), `{client_id}` is `mqtt.client_id`. A value is sanitised
//! ([`sanitise_level`]) so it can never add a level or a wildcard; a topic that does not match
//! the pattern gives `_unknown`. Config validation refuses a template an ingest filter matches.
//!
//! # MQTT 5 request/response
//!
//! With `mqtt.protocol = "5"` the publisher speaks MQTT 5 too. An alert whose publisher set a
//! Response Topic gets its receipt there, with its Correlation Data echoed, never retained
//! (`receipts.response_topic`: `prefer` (default), `only`, `ignore`; [`outgoing`]). A response
//! topic an ingest filter matches is refused (counted, warned): the agent is not a way to
//! publish into its own input. A PUBACK refusing a receipt (0x87 NotAuthorized: the ACL) drops
//! it, counted with the reason code, instead of publishing it again forever.

mod link;
mod message;
mod topic;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_wal::{Key, OutboxItem, Wal};
use tokio_util::sync::CancellationToken;

use link::{Link, LinkEvent, Sender};
pub use message::*;
pub use topic::*;

use crate::config::{MqttConfig, ReceiptsConfig};
use crate::events::{self, Counters};

/// Receipts handed to the client and not yet acknowledged, at most.
const WINDOW: usize = 64;

/// How often the task looks for new receipts, writes the done ones and checks the bound.
const TICK: Duration = Duration::from_millis(50);

/// Longest value a placeholder puts in a topic level, in bytes.
const LEVEL_MAX: usize = 128;

/// Drops are warned at most this often (they are counted every time).
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// Errors of one connection of the publisher (each ends it; the task connects again).
#[derive(Debug, thiserror::Error)]
pub enum ReceiptsError {
    /// Building the MQTT options failed (password file, CA file).
    #[error("receipts connection options")]
    Options(#[source] crate::ingest::IngestError),
    /// The connection failed or was lost (a rumqttc error, 3.1.1 or 5).
    #[error("receipts connection")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The client refused a publish (its channel closed).
    #[error("receipts publish")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker refused a receipt for now (an MQTT 5 PUBACK reason code that may pass later).
    #[error("the broker refused a receipt for now ({0})")]
    Refused(&'static str),
    /// The log failed (it is poisoned; the agent stops on its own).
    #[error("log")]
    Log(#[source] alertbridge_wal::WalError),
    /// A blocking log call did not complete.
    #[error("log call")]
    Join(#[source] tokio::task::JoinError),
}

/// Runs the publisher until `cancel`, connecting again after each lost connection (backoff
/// `mqtt.reconnect_min` doubling to `reconnect_max`). Receipts never stop the agent: every
/// error is logged and counted, and the task goes on.
pub async fn run(
    cfg: ReceiptsConfig,
    mqtt: MqttConfig,
    wal: Wal,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    if fault_hold_receipts() {
        tracing::warn!("ALERTBRIDGE_FAULT_HOLD_RECEIPTS=1: the receipts publisher does not run");
        cancel.cancelled().await;
        return;
    }
    let template = match Template::parse(&cfg.topic) {
        Ok(t) => t,
        Err(problem) => {
            // Validated with the config: cannot happen, but must not take the agent down.
            tracing::error!(topic = %cfg.topic, problem, "receipts.topic is invalid; receipts stay queued");
            return;
        }
    };
    let mut backoff = mqtt.reconnect_min;
    let mut publisher = Publisher {
        cfg,
        template,
        client_id: mqtt.client_id.clone(),
        wal,
        counters,
        dropped_unwarned: 0,
        last_drop_warn: None,
        reply_refused_unwarned: 0,
        last_reply_warn: None,
    };
    loop {
        let result = publisher.connection(&mqtt, &cancel).await;
        events::receipts_connection(&publisher.counters, false, None);
        match result {
            Ok(true) => return,
            Ok(false) => backoff = mqtt.reconnect_min,
            Err(e) => {
                events::receipts_connection_failed(&publisher.counters, &e, backoff);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(mqtt.reconnect_max);
    }
}

/// Fault injection for the end-to-end tests, never set in production: with
/// `ALERTBRIDGE_FAULT_HOLD_RECEIPTS=1` in its environment the publisher never connects, so
/// receipts only accumulate in the log (a crash between the 2xx and the publish, stretched).
fn fault_hold_receipts() -> bool {
    std::env::var_os("ALERTBRIDGE_FAULT_HOLD_RECEIPTS").is_some_and(|v| v == "1")
}

struct Publisher {
    cfg: ReceiptsConfig,
    template: Template,
    client_id: String,
    wal: Wal,
    counters: Arc<Counters>,
    dropped_unwarned: u64,
    last_drop_warn: Option<Instant>,
    reply_refused_unwarned: u64,
    last_reply_warn: Option<Instant>,
}

/// The receipts of one connection between the log and the broker's PUBACK.
#[derive(Default)]
struct Flight {
    /// Handed to the client, waiting for their outgoing PUBLISH (in order: within one
    /// connection the client writes requests in the order it was given them).
    handed: VecDeque<Key>,
    /// Written, by packet id, waiting for the broker's PUBACK.
    inflight: HashMap<u16, Key>,
    /// Acknowledged (or refused, or not asked for): to be marked done in the log.
    done: Vec<Key>,
}

impl Flight {
    /// The client wrote the oldest handed receipt with `pkid`.
    fn sent(&mut self, pkid: u16) {
        if let Some(key) = self.handed.pop_front() {
            self.inflight.insert(pkid, key);
        }
    }

    /// The broker answered `pkid`; whether it was one of ours (now done).
    fn acked(&mut self, pkid: u16) -> bool {
        match self.inflight.remove(&pkid) {
            Some(key) => {
                self.done.push(key);
                true
            }
            None => false,
        }
    }

    /// Receipts handed and not yet answered.
    fn len(&self) -> usize {
        self.handed.len() + self.inflight.len()
    }
}

async fn wal_call<T: Send + 'static>(
    wal: &Wal,
    f: impl FnOnce(&Wal) -> Result<T, alertbridge_wal::WalError> + Send + 'static,
) -> Result<T, ReceiptsError> {
    let w = wal.clone();
    tokio::task::spawn_blocking(move || f(&w))
        .await
        .map_err(ReceiptsError::Join)?
        .map_err(ReceiptsError::Log)
}

impl Publisher {
    /// One connection: publishes until it fails (`Err`), or `cancel` (`Ok(true)`). The
    /// receipts done so far are written to the log in every case.
    async fn connection(
        &mut self,
        mqtt: &MqttConfig,
        cancel: &CancellationToken,
    ) -> Result<bool, ReceiptsError> {
        let mut own = mqtt.clone();
        own.client_id = format!("{}-receipts", mqtt.client_id);
        let mut link = Link::new(&own, WINDOW)?;
        let mut cursor = self.wal.outbox_cursor();
        let mut flight = Flight::default();
        let mut connected = false;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(true),
                event = link.events.poll() => match event {
                    Ok(LinkEvent::ConnAck) => {
                        connected = true;
                        events::receipts_connection(&self.counters, true, Some(&own.client_id));
                    }
                    Ok(LinkEvent::Sent(pkid)) => flight.sent(pkid),
                    Ok(LinkEvent::Acked(pkid)) => {
                        if flight.acked(pkid) {
                            events::receipt_published(&self.counters);
                        }
                    }
                    Ok(LinkEvent::Refused { pkid, reason, permanent: true }) => {
                        // Sending it again would be refused again: dropped, counted, warned.
                        if flight.acked(pkid) {
                            self.dropped(1, reason, None);
                        }
                    }
                    // It may pass later: not done, so the next connection (after the backoff)
                    // reads it from the log again, with every receipt not yet acknowledged.
                    Ok(LinkEvent::Refused { reason, permanent: false, .. }) => {
                        break Err(ReceiptsError::Refused(reason));
                    }
                    Ok(LinkEvent::Other) => {}
                    Err(e) => break Err(e),
                },
                _ = tick.tick() => {
                    if let Err(e) = self.turn(&link.sender, &mut cursor, &mut flight, connected).await {
                        break Err(e);
                    }
                }
            }
        };
        // Whatever the broker acknowledged stays done; the rest is published again.
        let flushed = self.write_done(&mut flight.done).await;
        if result.as_ref().is_ok_and(|stop| *stop) {
            link.sender.disconnect();
        }
        flushed?;
        result
    }

    async fn write_done(&self, done: &mut Vec<Key>) -> Result<(), ReceiptsError> {
        if done.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(done);
        wal_call(&self.wal, move |w| w.outbox_done(&keys)).await
    }

    /// One tick: write what is done, keep the bound, hand new receipts to the client.
    async fn turn(
        &mut self,
        link: &Sender,
        cursor: &mut alertbridge_wal::Cursor,
        flight: &mut Flight,
        connected: bool,
    ) -> Result<(), ReceiptsError> {
        self.write_done(&mut flight.done).await?;
        self.keep_bound().await?;
        let space = WINDOW.saturating_sub(flight.len());
        if !connected || space == 0 {
            return Ok(());
        }
        let mut c = cursor.clone();
        let (page, c) = wal_call(&self.wal, move |w| {
            let page = w.read_outbox(&mut c, space)?;
            Ok((page, c))
        })
        .await?;
        *cursor = c;
        let now = crate::clock::now_ms();
        let max_age_ms = self.cfg.max_age.as_millis() as u64;
        let mut stale = Vec::new();
        let mut oldest_stale = None;
        for item in page {
            let (key, entry) = match item {
                Ok(found) => found,
                Err(corrupt) => {
                    // A receipt that does not decode cannot be published; it must not pin
                    // its segment either.
                    tracing::warn!(key = %corrupt.key, error = %corrupt.error, "dropping an undecodable receipt");
                    stale.push(corrupt.key);
                    continue;
                }
            };
            if now.saturating_sub(entry.at_ms) > max_age_ms {
                oldest_stale.get_or_insert_with(|| entry.alert_id.clone());
                stale.push(key);
                continue;
            }
            let routed = outgoing(&self.cfg, &self.template, &self.client_id, key, &entry);
            if let Some(problem) = routed.refused_reply {
                self.reply_refused(&entry.alert_id, &problem);
            }
            match routed.publish {
                Some(out) => {
                    link.publish(out)?;
                    flight.handed.push_back(key);
                }
                // Not asked for (`response_topic = "only"`): done, nothing to publish.
                None => flight.done.push(key),
            }
        }
        if !stale.is_empty() {
            let n = stale.len() as u64;
            wal_call(&self.wal, move |w| w.outbox_done(&stale)).await?;
            self.dropped(
                n,
                "older than receipts.max_age_secs",
                oldest_stale.as_deref(),
            );
        }
        Ok(())
    }

    /// An alert's response topic was refused; its receipt follows the template (or, with
    /// `"only"`, is not published). Counted every time, warned at most once a minute.
    fn reply_refused(&mut self, alert_id: &str, problem: &str) {
        self.counters
            .receipts_reply_refused
            .fetch_add(1, Ordering::Relaxed);
        self.reply_refused_unwarned += 1;
        if self
            .last_reply_warn
            .is_none_or(|at| at.elapsed() >= DROP_WARN_EVERY)
        {
            events::receipt_reply_refused(
                self.reply_refused_unwarned,
                alert_id,
                problem,
                self.cfg.response_topic,
            );
            self.reply_refused_unwarned = 0;
            self.last_reply_warn = Some(Instant::now());
        }
    }

    /// Over `max_pending`: the oldest receipts are dropped (marked done unpublished).
    async fn keep_bound(&mut self) -> Result<(), ReceiptsError> {
        let max = self.cfg.max_pending;
        // On the blocking pool like every log call (D1): the log's mutex can be held by a
        // dead letter's fsync.
        let (n, oldest) = wal_call(&self.wal, move |w| {
            let over = w.outbox_len().saturating_sub(max);
            if over == 0 {
                return Ok((0, None));
            }
            let mut c = w.outbox_cursor();
            let page = w.read_outbox(&mut c, over as usize)?;
            let oldest = page
                .iter()
                .find_map(|i| i.as_ref().ok().map(|(_, e)| e.alert_id.clone()));
            let keys: Vec<Key> = page
                .iter()
                .map(|i: &OutboxItem| match i {
                    Ok((k, _)) => *k,
                    Err(c) => c.key,
                })
                .collect();
            w.outbox_done(&keys)?;
            Ok((keys.len() as u64, oldest))
        })
        .await?;
        if n > 0 {
            self.dropped(n, "over receipts.max_pending", oldest.as_deref());
        }
        Ok(())
    }

    fn dropped(&mut self, n: u64, why: &str, oldest: Option<&str>) {
        self.counters
            .receipts_dropped
            .fetch_add(n, Ordering::Relaxed);
        self.dropped_unwarned += n;
        let due = self
            .last_drop_warn
            .is_none_or(|at| at.elapsed() >= DROP_WARN_EVERY);
        if due {
            events::receipts_dropped(self.dropped_unwarned, why, oldest.unwrap_or(""));
            self.dropped_unwarned = 0;
            self.last_drop_warn = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests;
