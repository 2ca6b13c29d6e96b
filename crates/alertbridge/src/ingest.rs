//! Ingest: MQTT QoS 1 publishes → group commit into the log → PUBACK.
//!
//! Two tasks:
//! - the **connection task** owns rumqttc's `EventLoop` and polls it without ever blocking on
//!   I/O of ours; it stamps each publish with the connection *epoch* and is the only place that
//!   queues PUBACKs, so the epoch check and the enqueue happen with no reconnect in between;
//! - the **batcher** collects publishes, turns them into log entries and appends them in one
//!   group commit on a blocking thread (flush + fsync), then hands the acks back.
//!
//! Invariants kept here (docs/design.md table):
//! - **I1** a PUBACK is queued only for a publish whose batch returned [`Durable`] from
//!   `Wal::append_batch`, i.e. after sled's flush *and* the fsync of its data file. Encoded in
//!   [`UnackedBatch::release`], which needs that proof; dropping an `UnackedBatch` acks nothing,
//!   so any early return leaves the alerts with the broker, which redelivers them.
//! - **I2** a PUBACK is queued only for a publish received on the current connection epoch.
//!   rumqttc drops PubAcks still in its request channel when a connection fails, but one queued
//!   *after* that is sent on the next connection, where the same packet id can name another
//!   message if the broker started a fresh session. The epoch bumps on every ConnAck and every
//!   connection error; stale acks are skipped and the broker redelivers (the duplicate window
//!   recognises the alert).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alertbridge_payload::{Mapper, Priority, RejectionKind};
use alertbridge_wal::{
    Appended, DeadKind, DeadReason, Durable, Entry, Key, Record, Wal, PRIORITY_CRITICAL,
    PRIORITY_NORMAL,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, StoreConfig};
use crate::events::{self, Acked, BatchPersisted, BrokerUnreachable, Counters};
use crate::session::{reconnect_delay, ConnectFailures};

/// Largest MQTT packet accepted from the broker. Deliberately far above the payload limit of the
/// mapping: a payload over the mapping's `max_payload_bytes` must *arrive* so it can be
/// dead-lettered with a reason; if rumqttc refused it, the connection would drop and the broker
/// would redeliver it forever (a stuck queue). Set `message_size_limit` on the broker below this.
pub const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

/// Capacity of the publish channel between the connection task and the batcher. Full means the
/// connection task waits, i.e. stops reading the socket: back-pressure to the broker.
const PUBLISH_CHANNEL: usize = 4096;

/// Errors that stop ingest (the agent exits non-zero; systemd restarts it).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The log failed to append or to make a batch durable; it is poisoned (I5).
    #[error("write-ahead log failed: {0}")]
    Wal(#[from] alertbridge_wal::WalError),
    /// The blocking append task panicked or was cancelled.
    #[error("log writer thread failed: {0}")]
    Writer(String),
    /// Broker options are unusable (e.g. unreadable CA or password file).
    #[error("mqtt setup: {0}")]
    Setup(String),
}

/// A publish and the connection epoch it arrived on.
pub(crate) type Stamped = (u64, Publish);

/// Publishes of one batch whose PUBACKs wait for the batch's durability proof (I1).
///
/// Dropping it acks nothing: the broker keeps ownership and redelivers.
#[must_use = "dropping an UnackedBatch leaves its alerts with the broker"]
pub(crate) struct UnackedBatch {
    publishes: Vec<Stamped>,
}

impl UnackedBatch {
    /// The publishes may be acked now: `proof` says the batch that holds them is flushed and
    /// fsynced. (The proof's constructor is private to the WAL crate.)
    pub(crate) fn release(self, proof: &Durable<Vec<Appended>>) -> Vec<Stamped> {
        debug_assert_eq!(proof.get().len(), self.publishes.len());
        self.publishes
    }
}

/// Unix time in ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Log lane of a mapped priority.
pub(crate) fn lane(p: Priority) -> u8 {
    match p {
        Priority::Critical => PRIORITY_CRITICAL,
        Priority::Normal => PRIORITY_NORMAL,
    }
}

/// Pure: one publish → one log entry. A payload the mapping rejects is still persisted, straight
/// into dead letters with the mapping's reason (never dropped, never blocking the queue).
///
/// The mapper is pure and fuzzed, but a panic in it must not become a crash loop (the broker
/// would redeliver the same payload forever while other alerts pile up at the broker): it is
/// caught and the payload dead-lettered with the reason.
pub(crate) fn entry_for(mapper: &Mapper, topic: &str, payload: &[u8], now_ms: u64) -> Entry {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        entry_for_unguarded(mapper, topic, payload, now_ms)
    }));
    match attempt {
        Ok(entry) => entry,
        Err(_) => {
            tracing::error!(topic, "payload mapper panicked; payload dead-lettered");
            Entry::DeadLetter(
                new_record(digest_id(topic, payload), topic, payload, PRIORITY_NORMAL, now_ms),
                DeadReason {
                    kind: DeadKind::Malformed,
                    message: "the payload mapper failed on this payload (a bug: please report it with this dead letter)".into(),
                    status: None,
                    api_message: None,
                },
            )
        }
    }
}

/// Fallback identity when the mapper cannot give one: sha256(topic \0 payload), 16 bytes hex.
fn digest_id(topic: &str, payload: &[u8]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(payload);
    hex::encode(&h.finalize()[..16])
}

/// A record as ingest stores it: never tried, due now.
fn new_record(alert_id: String, topic: &str, payload: &[u8], priority: u8, now_ms: u64) -> Record {
    Record {
        alert_id,
        topic: topic.to_string(),
        payload: payload.to_vec(),
        priority,
        received_at_ms: now_ms,
        attempts: 0,
        first_attempt_ms: None,
        last_attempt_ms: None,
        next_attempt_ms: 0,
        last_error: None,
    }
}

fn entry_for_unguarded(mapper: &Mapper, topic: &str, payload: &[u8], now_ms: u64) -> Entry {
    // One pass for a valid payload: `map` yields the same id and lane as `identify` (a property
    // the payload crate tests); only a rejected payload needs `identify` for its identity.
    match mapper.map(topic, payload) {
        Ok(m) => Entry::Pending(new_record(
            m.alert_id,
            topic,
            payload,
            lane(m.priority),
            now_ms,
        )),
        Err(rej) => {
            let ident = mapper.identify(topic, payload);
            let kind = match rej.kind {
                RejectionKind::TooLarge => DeadKind::Oversize,
                _ => DeadKind::Malformed,
            };
            Entry::DeadLetter(
                new_record(ident.alert_id, topic, payload, lane(ident.priority), now_ms),
                DeadReason {
                    kind,
                    message: rej.reason,
                    status: None,
                    api_message: None,
                },
            )
        }
    }
}

/// rumqttc's request channel carries our PUBACKs. It must hold the acks of several batches
/// (the connection task may queue two batches between polls): an ack that does not fit is
/// counted as withheld and the broker redelivers only on reconnect, holding its in-flight slot.
pub(crate) fn request_channel_capacity(batch_max: usize) -> usize {
    batch_max.saturating_mul(4).max(1024)
}

/// Build rumqttc options from the validated config.
pub(crate) fn mqtt_options(cfg: &MqttConfig, batch_max: usize) -> Result<MqttOptions, IngestError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    // Persistent session: the broker keeps QoS1 alerts for us while we are down.
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024)
        .set_request_channel_capacity(request_channel_capacity(batch_max));
    if let (Some(user), Some(src)) = (&cfg.username, &cfg.password) {
        let pw = src
            .load()
            .map_err(|e| IngestError::Setup(format!("mqtt password: {e}")))?;
        o.set_credentials(user.clone(), pw.expose_secret().to_string());
    }
    if cfg.tls {
        let transport = match &cfg.ca_file {
            Some(path) => {
                let ca = std::fs::read(path).map_err(|e| {
                    IngestError::Setup(format!("reading mqtt.ca_file {}: {e}", path.display()))
                })?;
                Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: None,
                })
            }
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(IngestError::Setup(
                        "mqtts:// but no system CA certificates found: install ca-certificates or set mqtt.ca_file".into(),
                    ));
                }
                let tls = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls)))
            }
        };
        o.set_transport(transport);
    }
    Ok(o)
}

/// Where durable pending keys go (the drain). Unbounded: each item is a few bytes and the number
/// in flight is bounded by the broker's in-flight window times the batch size.
pub(crate) type DrainFeed = mpsc::UnboundedSender<Key>;

/// Run ingest until `cancel`: connection task + batcher. Returns when both stopped; the acks of
/// the last durable batch are queued and flushed to the broker before the disconnect.
pub(crate) async fn run(
    mqtt: MqttConfig,
    store: StoreConfig,
    wal: Wal,
    mapper: Arc<Mapper>,
    counters: Arc<Counters>,
    feed: DrainFeed,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let options = mqtt_options(&mqtt, store.batch_max)?;
    let (client, eventloop) = AsyncClient::new(options, request_channel_capacity(store.batch_max));
    let (pub_tx, pub_rx) = mpsc::channel::<Stamped>(PUBLISH_CHANNEL);
    // Unbounded: acks ≤ publishes received, which the broker's in-flight window bounds.
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<Stamped>>();
    let batcher_done = CancellationToken::new();

    let batcher = {
        let counters = counters.clone();
        let cancel = cancel.clone();
        let done = batcher_done.clone();
        tokio::spawn(async move {
            let r = batcher(store, wal, mapper, counters, feed, pub_rx, ack_tx, cancel).await;
            done.cancel();
            r
        })
    };
    let conn = connection(
        mqtt,
        client,
        eventloop,
        pub_tx,
        ack_rx,
        counters,
        batcher_done,
    );
    let conn_result = conn.await;
    let batch_result = batcher
        .await
        .map_err(|e| IngestError::Writer(e.to_string()))?;
    batch_result?;
    conn_result
}

/// The connection task. Never blocks the event loop on our I/O; acks are queued here only.
/// Reconnects wait a jittered exponential backoff between `mqtt.reconnect_min_ms` and
/// `reconnect_max_ms`; failed attempts warn at once, then at a bounded rate.
async fn connection(
    cfg: MqttConfig,
    client: AsyncClient,
    mut eventloop: EventLoop,
    pub_tx: mpsc::Sender<Stamped>,
    mut ack_rx: mpsc::UnboundedReceiver<Vec<Stamped>>,
    counters: Arc<Counters>,
    batcher_done: CancellationToken,
) -> Result<(), IngestError> {
    let mut epoch: u64 = 0;
    let broker = crate::config::display_url(&format!("{}:{}", cfg.host, cfg.port)).into_owned();
    let mut failures = ConnectFailures::default();
    // A CONNACK was seen since the last connection error.
    let mut up = false;
    let topics: Vec<rumqttc::SubscribeFilter> = cfg
        .topics
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
        .collect();
    let mut pub_tx = Some(pub_tx);
    // Acks released by the batcher that rumqttc's request channel could not take yet.
    let mut ack_backlog: VecDeque<Stamped> = VecDeque::new();
    let mut acks_open = true;
    loop {
        if !ack_backlog.is_empty() {
            queue_acks(&client, epoch, &mut ack_backlog, &counters);
        }
        if !acks_open && ack_backlog.is_empty() {
            // batcher gone and every ack queued: say goodbye and stop
            break;
        }
        tokio::select! {
            biased;
            acks = ack_rx.recv(), if acks_open => {
                match acks {
                    Some(acks) => {
                        ack_backlog.extend(acks);
                        queue_acks(&client, epoch, &mut ack_backlog, &counters);
                    }
                    None => acks_open = false,
                }
            }
            _ = batcher_done.cancelled(), if pub_tx.is_some() => {
                // The batcher stopped taking publishes; stop feeding it. Its last acks are
                // still in ack_rx and get queued before the disconnect.
                pub_tx = None;
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    epoch += 1;
                    up = true;
                    let failed = failures.on_connack();
                    let detail = if failed > 0 {
                        format!("session_present={} after {failed} failed attempts", ack.session_present)
                    } else {
                        format!("session_present={}", ack.session_present)
                    };
                    events::connection_changed(&counters, true, &detail);
                    // A resumed session keeps its subscriptions; subscribing again would make
                    // the broker resend every retained alert on each reconnect (MQTT 3.1.1 §3.8.4).
                    if !ack.session_present {
                        if let Err(e) = client.try_subscribe_many(topics.clone()) {
                            tracing::error!(error = %e, "cannot queue subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    for (t, code) in cfg.topics.iter().zip(s.return_codes.iter()) {
                        match code {
                            rumqttc::SubscribeReasonCode::Failure => tracing::error!(topic = %t, "broker REFUSED the subscription (check its ACL)"),
                            rumqttc::SubscribeReasonCode::Success(q) => tracing::info!(topic = %t, qos = ?q, "subscribed"),
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    // A full channel parks us here: back-pressure to the broker. Without a
                    // sender (shutting down) the publish is not acked: the broker keeps it.
                    if let Some(tx) = &pub_tx {
                        if tx.send((epoch, p)).await.is_err() {
                            pub_tx = None;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc keeps packets it already decoded from the dead connection in
                    // `state.events` and hands them out *after* the next ConnAck. Take them now:
                    // their publishes are stored (the broker may not resend them if it lost
                    // the session) but stamped with the dead epoch, so they are never acked on
                    // the new connection, where their packet ids may name other messages (I2).
                    let buffered = std::mem::take(&mut eventloop.state.events);
                    for ev in buffered {
                        if let Event::Incoming(Packet::Publish(p)) = ev {
                            counters.received.fetch_add(1, Ordering::Relaxed);
                            if let Some(tx) = &pub_tx {
                                if tx.send((epoch, p)).await.is_err() {
                                    pub_tx = None;
                                }
                            }
                        }
                    }
                    // I2: anything acked from now on must come from the next connection.
                    epoch += 1;
                    let error = e.to_string();
                    let (errors, unreachable) = if std::mem::take(&mut up) {
                        events::connection_changed(&counters, false, &error);
                        (failures.on_lost(), None)
                    } else {
                        failures.on_attempt_failed(now())
                    };
                    let delay = reconnect_delay(cfg.reconnect_min, cfg.reconnect_max, errors, fastrand::f64());
                    if let Some(u) = unreachable {
                        BrokerUnreachable {
                            broker: &broker,
                            attempts: u.attempts,
                            failing_for: u.for_,
                            error: &error,
                            retry_in: delay,
                        }
                        .emit();
                    }
                    tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection error");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = batcher_done.cancelled() => {}
                    }
                    if batcher_done.is_cancelled() && pub_tx.is_none() {
                        // no broker and shutting down: nothing can be acked anyway
                        let mut dropped = ack_backlog.len() as u64;
                        while let Ok(acks) = ack_rx.try_recv() {
                            dropped += acks.len() as u64;
                        }
                        counters.stale_acks_skipped.fetch_add(dropped, Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }
        }
    }
    // Graceful goodbye: queue DISCONNECT and poll until the queued acks and it are written.
    let _ = client.try_disconnect();
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    events::disconnected_for_shutdown(&counters);
    Ok(())
}

/// Now on tokio's clock, for the pure session rules (which take `std` instants).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Queue PUBACKs for publishes of the current epoch only (I2), as many as rumqttc's request
/// channel takes now; the rest wait in `backlog` for the next turn (after the event loop has
/// written some). An ack that was not sent would hold one of the broker's in-flight slots until
/// the next reconnect, so none is given up while its connection lives; acks of an older epoch
/// are dropped (the broker redelivers those publishes).
fn queue_acks(
    client: &AsyncClient,
    epoch: u64,
    backlog: &mut VecDeque<Stamped>,
    counters: &Counters,
) {
    let (mut acked, mut stale) = (0, 0);
    while let Some((e, p)) = backlog.front() {
        if *e != epoch {
            stale += 1;
            backlog.pop_front();
            continue;
        }
        match client.try_ack(p) {
            Ok(()) => {
                acked += 1;
                backlog.pop_front();
            }
            // channel full: try again after the next poll
            Err(_) => break,
        }
    }
    if acked > 0 || stale > 0 {
        Acked { acked, stale }.emit(counters);
    }
}

/// The batcher: group commit.
#[allow(clippy::too_many_arguments)]
async fn batcher(
    store: StoreConfig,
    wal: Wal,
    mapper: Arc<Mapper>,
    counters: Arc<Counters>,
    feed: DrainFeed,
    mut pub_rx: mpsc::Receiver<Stamped>,
    ack_tx: mpsc::UnboundedSender<Vec<Stamped>>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = pub_rx.recv() => match p { Some(p) => p, None => break },
        };
        let mut publishes = vec![first];
        while publishes.len() < store.batch_max {
            match pub_rx.try_recv() {
                Ok(p) => publishes.push(p),
                Err(_) => break,
            }
        }
        // Disk budget: hold this batch unacked until space frees. The broker's in-flight window
        // then stops sending us more; nothing is deleted to make room.
        if !wait_for_budget(&wal, &store, &counters, &cancel).await? {
            break; // shutting down: the held batch stays with the broker
        }
        let now = now_ms();
        let entries: Vec<Entry> = publishes
            .iter()
            .map(|(_, p)| entry_for(&mapper, &p.topic, &p.payload, now))
            .collect();
        let unacked = UnackedBatch { publishes };
        let w = wal.clone();
        let started = Instant::now();
        let durable = tokio::task::spawn_blocking(move || w.append_batch(entries))
            .await
            .map_err(|e| IngestError::Writer(e.to_string()))??;
        let (mut persisted, mut dup, mut dead) = (0, 0, 0);
        for a in durable.get() {
            match a {
                Appended::Pending(key) => {
                    persisted += 1;
                    let _ = feed.send(*key);
                }
                Appended::DeadLettered(_) => dead += 1,
                Appended::Duplicate { .. } => dup += 1,
            }
        }
        BatchPersisted {
            persisted,
            duplicates: dup,
            dead_lettered: dead,
            took: started.elapsed(),
        }
        .emit(&counters);
        let acks = unacked.release(&durable);
        if ack_tx.send(acks).is_err() {
            break;
        }
    }
    Ok(())
}

/// Why ingest holds back, if it must. Pure, so the rule is a table test.
pub(crate) fn over_budget(
    size: u64,
    max_bytes: u64,
    free: Option<u64>,
    min_free: u64,
) -> Option<String> {
    if size >= max_bytes {
        return Some(format!(
            "log data {size} B reached store.max_bytes {max_bytes} B"
        ));
    }
    match free {
        Some(f) if f < min_free => Some(format!(
            "filesystem free space {f} B below store.min_free_bytes {min_free} B"
        )),
        _ => None,
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `dir` (None if unknown).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Returns Ok(true) when under budget (now or after waiting), Ok(false) when cancelled first.
/// While over, nothing is appended and nothing acked: the broker keeps the alerts (its
/// in-flight window stops the flow), and nothing already in the log is deleted to make room.
async fn wait_for_budget(
    wal: &Wal,
    store: &StoreConfig,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<bool, IngestError> {
    loop {
        // The live data (pending + dead letters), not sled's file size: sled reuses freed space
        // but never shrinks its files, so a file-size budget once reached would hold forever.
        let size = wal.data_bytes();
        let reason = over_budget(
            size,
            store.max_bytes,
            free_bytes(&store.dir),
            store.min_free_bytes,
        );
        events::backpressure_changed(counters, reason.as_deref(), size);
        if reason.is_none() {
            return Ok(true);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alertbridge_payload::MappingConfig;

    fn mapper() -> Mapper {
        Mapper::new(&MappingConfig::default()).expect("default mapping")
    }

    #[test]
    fn json_object_becomes_pending_with_lane() {
        let m = mapper();
        let e = entry_for(
            &m,
            "plant/a/alerts/d1",
            br#"{"device_id":"d1","alert_level":"critical"}"#,
            5,
        );
        match e {
            Entry::Pending(r) => {
                let ident = m.identify(
                    "plant/a/alerts/d1",
                    br#"{"device_id":"d1","alert_level":"critical"}"#,
                );
                assert_eq!(
                    r.alert_id, ident.alert_id,
                    "stored id is the dedup identity"
                );
                assert_eq!(r.priority, PRIORITY_CRITICAL);
                assert_eq!(r.received_at_ms, 5);
                assert!(!r.alert_id.is_empty());
            }
            Entry::DeadLetter(..) => panic!("should be pending"),
        }
    }

    #[test]
    fn malformed_payloads_are_persisted_as_dead_letters_with_reason() {
        let m = mapper();
        for payload in [&b"not json"[..], b"[1,2]", b"\xff\xfe", b"42"] {
            match entry_for(&m, "t", payload, 0) {
                Entry::DeadLetter(r, reason) => {
                    assert_eq!(r.payload, payload, "original kept");
                    assert_eq!(reason.kind, DeadKind::Malformed);
                    assert!(!reason.message.is_empty());
                }
                Entry::Pending(_) => panic!("{payload:?} must be dead-lettered"),
            }
        }
    }

    #[test]
    fn oversize_payload_is_dead_lettered_as_oversize() {
        let m = mapper();
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(70 * 1024));
        match entry_for(&m, "t", big.as_bytes(), 0) {
            Entry::DeadLetter(_, reason) => assert_eq!(reason.kind, DeadKind::Oversize),
            Entry::Pending(_) => panic!("oversize must be dead-lettered"),
        }
    }

    #[test]
    fn budget_rule_covers_log_size_and_filesystem_space() {
        assert_eq!(over_budget(10, 100, Some(1_000), 50), None);
        assert!(over_budget(100, 100, Some(1_000), 50)
            .unwrap()
            .contains("store.max_bytes"));
        assert!(over_budget(10, 100, Some(49), 50)
            .unwrap()
            .contains("min_free_bytes"));
        assert_eq!(
            over_budget(10, 100, None, 50),
            None,
            "unknown free space does not block"
        );
    }

    #[test]
    fn redelivered_publish_gets_the_same_alert_id() {
        let m = mapper();
        let p = br#"{"device_id":"d1","alert_level":"warning","ts":1}"#;
        let id = |e: Entry| match e {
            Entry::Pending(r) | Entry::DeadLetter(r, _) => r.alert_id,
        };
        assert_eq!(id(entry_for(&m, "t", p, 1)), id(entry_for(&m, "t", p, 999)));
        assert_ne!(id(entry_for(&m, "t", p, 1)), id(entry_for(&m, "u", p, 1)));
    }

    /// Regression (review F1): rumqttc keeps publishes it decoded from a connection that then
    /// died in `state.events` and returns them *after* the next ConnAck. Stamped with the new
    /// epoch they were acked on the new connection, where a fresh session reuses their packet
    /// ids for other messages: the stale-ack hazard. A mock broker sends three publishes and
    /// closes in one write, then starts a fresh session: no PUBACK may reach it, and the three
    /// alerts must still be stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_buffered_from_a_dead_connection_are_stored_but_never_acked_on_the_next() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        fn publish(pkid: u16, payload: &str) -> Vec<u8> {
            let topic = "plant/a/alerts/d";
            let mut body = Vec::new();
            body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&pkid.to_be_bytes());
            body.extend_from_slice(payload.as_bytes());
            let mut v = vec![0x32, body.len() as u8];
            v.extend(body);
            v
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // connection 1: CONNACK (fresh session), three publishes and EOF in one write
            let (mut s, _) = listener.accept().await.expect("accept 1");
            let _ = s.read(&mut buf).await;
            let mut w = vec![0x20, 0x02, 0x00, 0x00];
            for i in 1..=3u16 {
                w.extend(publish(i, &format!("{{\"alert_id\":\"old-{i}\"}}")));
            }
            s.write_all(&w).await.expect("write");
            drop(s);
            // connection 2: a fresh session; record everything the client sends for a while
            let (mut s, _) = listener.accept().await.expect("accept 2");
            let _ = s.read(&mut buf).await; // CONNECT
            s.write_all(&[0x20, 0x02, 0x00, 0x00])
                .await
                .expect("connack");
            let mut seen = Vec::new();
            let deadline = tokio::time::sleep(Duration::from_millis(1500));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            }
            let _ = seen_tx.send(seen);
        });

        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(alertbridge_wal::WalConfig::new(dir.path().join("wal"))).expect("wal");
        let mqtt = MqttConfig {
            host: "127.0.0.1".into(),
            port,
            tls: false,
            ca_file: None,
            client_id: "t".into(),
            topics: vec!["plant/+/alerts/#".into()],
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(100),
        };
        let store = StoreConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: u64::MAX,
            segment_bytes: 64 << 10,
            cache_capacity_ignored: false,
            dedup_window: 100,
            dedup_window_time: Duration::from_secs(600),
            delivered_keep: 10,
            batch_max: 16,
            min_free_bytes: 0,
        };
        let counters = Arc::new(Counters::default());
        let (feed, mut keys) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            mqtt,
            store,
            wal.clone(),
            Arc::new(mapper()),
            counters.clone(),
            feed,
            cancel.clone(),
        ));

        let seen = seen_rx.await.expect("mock broker result");
        // PUBACK = 0x40 0x02 <pkid>; the client may send CONNECT, SUBSCRIBE, PINGREQ — never PUBACK
        let pubacks: Vec<_> = seen
            .windows(2)
            .filter(|w| w[0] == 0x40 && w[1] == 0x02)
            .collect();
        assert!(
            pubacks.is_empty(),
            "stale PUBACK sent on the new connection: {seen:02x?}"
        );
        let mut stored = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), keys.recv()).await {
            stored += 1;
            if stored == 3 {
                break;
            }
        }
        assert_eq!(
            stored, 3,
            "the buffered publishes are stored (the fresh session will not resend them)"
        );
        cancel.cancel();
        let _ = task.await;
    }
}
