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
//!   `Wal::append_publishes`, i.e. after the batch was written *and* fdatasync'ed. Encoded in
//!   [`UnackedBatch::release`], which needs that proof; dropping an `UnackedBatch` acks nothing,
//!   so any early return leaves the alerts with the broker, which redelivers them.
//! - **I2** a PUBACK is queued only for a publish received on the current connection epoch.
//!   rumqttc drops PubAcks still in its request channel when a connection fails, but one queued
//!   *after* that is sent on the next connection, where the same packet id can name another
//!   message if the broker started a fresh session. The epoch bumps on every ConnAck and every
//!   connection error; stale acks are skipped and the broker redelivers (the duplicate window
//!   recognises the alert).
//! - **S1** the connection task subscribes until a SUBACK seen in this process granted QoS 1 for
//!   every configured filter on the broker's current session; "session present" alone is not
//!   trusted. The rules are pure, in `session.rs`; refusals show in `status`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alertbridge_payload::{digest_id, Mapper, Priority, RejectionKind};
use alertbridge_wal::{
    Appended, DeadKind, DeadReason, Durable, Entry, Key, Record, Wal, PRIORITY_CRITICAL,
    PRIORITY_NORMAL,
};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    Transport,
};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, StoreConfig};
use crate::events::{
    self, Acked, BatchPersisted, BrokerUnreachable, Counters, Subscribed, SubscriptionRefused,
};
use crate::session::{reconnect_delay, ConnectFailures, Grant, Subscriptions};

/// Largest MQTT packet accepted from the broker: the largest MQTT allows (a remaining length of
/// 268 435 455 bytes, MQTT 3.1.1 §2.2.3).
///
/// Why the protocol maximum: a payload over the mapping's `max_payload_bytes` must *arrive* so
/// it can be dead-lettered (as a 1 KiB prefix + length + SHA-256) and acked. When rumqttc refuses
/// a packet it drops the connection, and the persistent session resends the same publish on
/// every reconnect: one publish over the client's limit used to stop all ingest for good (with
/// the earlier 16 MiB limit; mosquitto's default `message_size_limit` is unlimited). The cost is
/// memory for one such packet while it is read; `docs/operations.md` tells operators to set the
/// broker's `message_size_limit` (e.g. 1 MiB), which keeps such publishes off the gateway.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

/// Capacity of the publish channel between the connection task and the batcher. Full means the
/// connection task waits, i.e. stops reading the socket: back-pressure to the broker.
const PUBLISH_CHANNEL: usize = 4096;

/// Errors that stop ingest. Each variant says whether restarting can help: the binary exits 1
/// (runtime, systemd restarts it) or 2 (configuration, restarting cannot fix it), see
/// [`IngestError::is_config`].
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The log failed to append or to make a batch durable; it is poisoned (I5). Runtime: the
    /// agent exits 1 and the restart reads the log as it is.
    #[error("write-ahead log failed")]
    Wal(#[from] alertbridge_wal::WalError),
    /// An ingest task (the batcher, or a blocking append) panicked or was cancelled: what it did
    /// is unknown, so ingest stops. Runtime: exit 1, the broker keeps every unacked alert.
    #[error("the ingest {task} task failed")]
    Task {
        /// Which task: `batcher` or `log append`.
        task: &'static str,
        /// The join error (panic or cancellation).
        #[source]
        source: tokio::task::JoinError,
    },
    /// The MQTT password could not be read (`mqtt.password_file` or its variable).
    /// Configuration: fix the file or variable; exit 2.
    #[error("mqtt password")]
    Password(#[source] alertbridge_genesys::TokenError),
    /// `mqtt.ca_file` could not be read. Configuration: fix the path or permissions; exit 2.
    #[error("reading mqtt.ca_file {path}")]
    CaFile {
        /// The configured path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `mqtts://` without `mqtt.ca_file`, and the system has no CA certificates.
    /// Configuration: install ca-certificates or set `mqtt.ca_file`; exit 2.
    #[error(
        "mqtts:// but no system CA certificates found: install ca-certificates or set mqtt.ca_file"
    )]
    NoSystemRoots,
}

impl IngestError {
    /// True when the cause is in the configuration or the files it names, so restarting
    /// cannot fix it (the binary exits 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            IngestError::Password(_) | IngestError::CaFile { .. } | IngestError::NoSystemRoots
        )
    }
}

/// A publish, the connection epoch it arrived on and when it arrived (the ack latency).
pub(crate) type Stamped = (u64, Publish, Instant);

/// What a PUBACK needs of a durable publish: its connection epoch, packet id and QoS. The
/// payload and topic are dropped as soon as the batch is durable: under a flood rumqttc writes
/// far fewer acks per poll than it reads publishes, and holding whole publishes until their ack
/// went out made memory grow with the backlog (about 0.4 KB per alert in the backlog bench).
/// The receive time (16 bytes) stays for the ack latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckToken {
    epoch: u64,
    pkid: u16,
    qos: QoS,
    received: Instant,
}

impl AckToken {
    fn of((epoch, p, received): &Stamped) -> AckToken {
        AckToken {
            epoch: *epoch,
            pkid: p.pkid,
            qos: p.qos,
            received: *received,
        }
    }

    /// A publish rumqttc's `try_ack` turns into the right PUBACK (it reads qos and pkid only).
    fn as_publish(&self) -> Publish {
        let mut p = Publish::new("", self.qos, Vec::<u8>::new());
        p.pkid = self.pkid;
        p
    }
}

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
    pub(crate) fn release(self, proof: &Durable<Vec<Appended>>) -> Vec<AckToken> {
        debug_assert_eq!(proof.get().len(), self.publishes.len());
        self.publishes.iter().map(AckToken::of).collect()
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
            let (kind, kept, message) = match rej.kind {
                RejectionKind::TooLarge => {
                    let (kept, note) = oversize_prefix(payload);
                    (DeadKind::Oversize, kept, format!("{}; {note}", rej.reason))
                }
                _ => (DeadKind::Malformed, payload, rej.reason),
            };
            Entry::DeadLetter(
                new_record(ident.alert_id, topic, kept, lane(ident.priority), now_ms),
                DeadReason {
                    kind,
                    message,
                    status: None,
                    api_message: None,
                },
            )
        }
    }
}

/// How much of an oversize payload its dead letter keeps.
pub(crate) const OVERSIZE_PREFIX: usize = 1024;

/// An oversize payload is dead-lettered as a bounded prefix plus its length and SHA-256, not in
/// full: a device sending 5 MB payloads must not fill the dead-letter budget with them (and the
/// digest still lets an operator match the original at the device).
fn oversize_prefix(payload: &[u8]) -> (&[u8], String) {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(payload));
    let kept = &payload[..payload.len().min(OVERSIZE_PREFIX)];
    (
        kept,
        format!(
            "payload of {} bytes (sha256 {digest}); only its first {} bytes are kept",
            payload.len(),
            kept.len()
        ),
    )
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
        let pw = src.load().map_err(IngestError::Password)?;
        o.set_credentials(user.clone(), pw.expose_secret().to_string());
    }
    if cfg.tls {
        let transport = match &cfg.ca_file {
            Some(path) => {
                let ca = std::fs::read(path).map_err(|source| IngestError::CaFile {
                    path: path.clone(),
                    source,
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
                    return Err(IngestError::NoSystemRoots);
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
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<AckToken>>();
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
    let batch_result = batcher.await.map_err(|source| IngestError::Task {
        task: "batcher",
        source,
    })?;
    batch_result?;
    conn_result
}

/// The connection task. Never blocks the event loop on our I/O; acks are queued here only.
///
/// It also keeps the subscriptions (**S1**, [`crate::session`]): it subscribes after every
/// CONNACK until a SUBACK of this process granted QoS 1 for every filter on the broker's current
/// session, and asks again for refused filters on the open connection. Reconnects wait a
/// jittered exponential backoff between `mqtt.reconnect_min_ms` and `reconnect_max_ms`.
async fn connection(
    cfg: MqttConfig,
    client: AsyncClient,
    mut eventloop: EventLoop,
    pub_tx: mpsc::Sender<Stamped>,
    mut ack_rx: mpsc::UnboundedReceiver<Vec<AckToken>>,
    counters: Arc<Counters>,
    batcher_done: CancellationToken,
) -> Result<(), IngestError> {
    let mut epoch: u64 = 0;
    let broker = crate::config::display_url(&format!("{}:{}", cfg.host, cfg.port)).into_owned();
    let mut subs = Subscriptions::new(
        cfg.subscribed_filters(),
        cfg.reconnect_min,
        cfg.reconnect_max,
    );
    let mut failures = ConnectFailures::default();
    // A CONNACK was seen since the last connection error.
    let mut up = false;
    report_subscriptions(&counters, &subs);
    let mut pub_tx = Some(pub_tx);
    // Acks released by the batcher that rumqttc's request channel could not take yet.
    let mut ack_backlog: VecDeque<AckToken> = VecDeque::new();
    let mut acks_open = true;
    loop {
        // Liveness: `/health` checks this loop turned recently (rumqttc's poll returns at least
        // at every keep-alive ping, or after each reconnect attempt).
        counters.mqtt_tick_ms.store(now_ms(), Ordering::Relaxed);
        if !ack_backlog.is_empty() {
            write_acks(&mut eventloop, &client, epoch, &mut ack_backlog, &counters).await;
        }
        if !acks_open && ack_backlog.is_empty() {
            // batcher gone and every ack queued: say goodbye and stop
            break;
        }
        let subscribe_retry = subs.next_retry().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            acks = ack_rx.recv(), if acks_open => {
                match acks {
                    Some(acks) => {
                        ack_backlog.extend(acks);
                        write_acks(&mut eventloop, &client, epoch, &mut ack_backlog, &counters).await;
                    }
                    None => acks_open = false,
                }
            }
            _ = batcher_done.cancelled(), if pub_tx.is_some() => {
                // The batcher stopped taking publishes; stop feeding it. Its last acks are
                // still in ack_rx and get queued before the disconnect.
                pub_tx = None;
            }
            _ = sleep_until(subscribe_retry) => {
                if let Some((filters, timed_out)) = subs.due(now()) {
                    if timed_out {
                        tracing::warn!(
                            timeout_secs = crate::session::SUBACK_TIMEOUT.as_secs(),
                            "the broker did not answer our SUBSCRIBE; sending it again"
                        );
                    }
                    subscribe(&client, &mut subs, filters);
                    report_subscriptions(&counters, &subs);
                }
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
                    // S1: "session present" does not prove the session holds our
                    // subscriptions (the SUBACK of its first SUBSCRIBE may never have come):
                    // subscribe every filter no SUBACK of this process granted on this session.
                    let missing = subs.on_connack(ack.session_present);
                    if !missing.is_empty() {
                        subscribe(&client, &mut subs, missing);
                    }
                    report_subscriptions(&counters, &subs);
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => subs.on_subscribe_sent(pkid),
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    on_suback(&mut subs, &s, &counters);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    // A full channel parks us here: back-pressure to the broker. Without a
                    // sender (shutting down) the publish is not acked: the broker keeps it.
                    if let Some(tx) = &pub_tx {
                        if tx.send((epoch, p, Instant::now())).await.is_err() {
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
                    // A SUBACK among them is dropped: its filters are subscribed again (S1).
                    let buffered = std::mem::take(&mut eventloop.state.events);
                    for ev in buffered {
                        if let Event::Incoming(Packet::Publish(p)) = ev {
                            counters.received.fetch_add(1, Ordering::Relaxed);
                            if let Some(tx) = &pub_tx {
                                if tx.send((epoch, p, Instant::now())).await.is_err() {
                                    pub_tx = None;
                                }
                            }
                        }
                    }
                    // S1: a SUBSCRIBE still in rumqttc's queue would be sent on the next
                    // connection if the broker resumes the session; whether to subscribe is
                    // decided afresh at that CONNACK instead, so two never cross.
                    eventloop
                        .pending
                        .retain(|r| !matches!(r, rumqttc::Request::Subscribe(_)));
                    subs.on_connection_lost();
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
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
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

/// Sleep until `at`, or forever without one (a disabled `select!` branch that needs no flag).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queue one SUBSCRIBE at QoS 1 for the filters at `at` (S1). A full request channel (acks
/// waiting to be written) is not an error: the filters stay wanted and are asked again shortly.
fn subscribe(client: &AsyncClient, subs: &mut Subscriptions, at: Vec<usize>) {
    let filters = subs
        .filters(&at)
        .into_iter()
        .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
    match client.try_subscribe_many(filters) {
        Ok(()) => subs.subscribe_queued(at, now()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot queue SUBSCRIBE now; trying again shortly");
            subs.subscribe_not_queued(now());
        }
    }
}

/// A SUBACK: per filter, held (info `subscribed`) or refused / downgraded (error, counted,
/// shown in status); then the totals for status.
fn on_suback(subs: &mut Subscriptions, s: &rumqttc::SubAck, counters: &Counters) {
    let Some(answers) = subs.on_suback(s.pkid, &s.return_codes, now(), fastrand::f64()) else {
        tracing::debug!(
            pkid = s.pkid,
            "SUBACK answering no SUBSCRIBE in flight; ignored"
        );
        return;
    };
    let retry = match subs.next_retry() {
        Some(at) => format!(
            "asked again in {} ms, and at every reconnect",
            at.saturating_duration_since(now()).as_millis()
        ),
        None => "asked again at the next connection".to_string(),
    };
    for a in &answers {
        match a.grant {
            Grant::Held => Subscribed {
                filter: &a.filter,
                qos: a.qos.map_or(1, |q| q as u8),
            }
            .emit(),
            Grant::Refused | Grant::Downgraded => SubscriptionRefused {
                filter: &a.filter,
                granted_qos: a.qos.map(|q| q as u8),
                again: a.again,
                retry: if a.grant == Grant::Refused {
                    &retry
                } else {
                    "asked again at the next connection"
                },
            }
            .emit(counters),
            Grant::Wanted => tracing::warn!(
                topic = %a.filter,
                "the broker's SUBACK has no return code for this filter; asking again"
            ),
        }
    }
    report_subscriptions(counters, subs);
}

/// Held / wanted / what is wrong, into the counters `status` reads.
fn report_subscriptions(counters: &Counters, subs: &Subscriptions) {
    events::subscriptions_changed(counters, subs.held(), subs.wanted(), subs.error());
}

/// Queue PUBACKs for publishes of the current epoch only (I2), as many as rumqttc's request
/// channel takes now; the rest wait in `backlog` for the next turn (after the event loop has
/// written some). An ack that was not sent would hold one of the broker's in-flight slots until
/// the next reconnect, so none is given up while its connection lives; acks of an older epoch
/// are dropped (the broker redelivers those publishes).
///
/// Acks go straight onto the connection, all of them, between two polls: through rumqttc's
/// request channel only one request is written per poll that selects it, while each network
/// read takes up to ten publishes, so under a flood (a broker emptying a long outage's queue)
/// acks fell ever further behind, held memory and, at a stop, left hundreds of thousands of
/// durable alerts unacked for the broker to send again. Written through `EventLoop::state`
/// (so rumqttc's state sees them as sent) and `EventLoop::network` of the current connection;
/// without a connection they fall back to the request channel.
async fn write_acks(
    eventloop: &mut EventLoop,
    client: &AsyncClient,
    epoch: u64,
    backlog: &mut VecDeque<AckToken>,
    counters: &Counters,
) {
    let Some(network) = eventloop.network.as_mut() else {
        queue_acks(client, epoch, backlog, counters);
        return;
    };
    let (mut acked, mut stale) = (0, 0);
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(token) = backlog.front().copied() {
        if token.epoch != epoch {
            stale += 1;
            backlog.pop_front();
            continue;
        }
        let request = rumqttc::Request::PubAck(rumqttc::PubAck::new(token.pkid));
        match eventloop.state.handle_outgoing_packet(request) {
            Ok(Some(packet)) => {
                if network.write(packet).await.is_err() {
                    failed = true;
                    break;
                }
            }
            Ok(None) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
        acked += 1;
        received.push(token.received);
        backlog.pop_front();
    }
    if !failed && acked > 0 && network.flush().await.is_err() {
        failed = true;
    }
    if failed {
        // The connection is going: the next poll reports it and bumps the epoch, and the acks
        // left are stale then (the broker resends those publishes).
        tracing::debug!("writing PUBACKs failed; the connection is being lost");
    }
    if acked > 0 || stale > 0 {
        Acked {
            acked,
            stale,
            received: &received,
        }
        .emit(counters);
    }
}

fn queue_acks(
    client: &AsyncClient,
    epoch: u64,
    backlog: &mut VecDeque<AckToken>,
    counters: &Counters,
) {
    let (mut acked, mut stale) = (0, 0);
    let mut received = Vec::new();
    while let Some(token) = backlog.front() {
        if token.epoch != epoch {
            stale += 1;
            backlog.pop_front();
            continue;
        }
        match client.try_ack(&token.as_publish()) {
            Ok(()) => {
                acked += 1;
                received.push(token.received);
                backlog.pop_front();
            }
            // channel full: try again after the next poll
            Err(_) => break,
        }
    }
    if acked > 0 || stale > 0 {
        Acked {
            acked,
            stale,
            received: &received,
        }
        .emit(counters);
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
    ack_tx: mpsc::UnboundedSender<Vec<AckToken>>,
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
        // The DUP flag goes with each entry: only a redelivery can be a duplicate. RETAIN = 1 on
        // a publish *to* us means the broker replays a stored retained message because we
        // subscribed (MQTT 3.1.1 §3.3.1.3; each process start subscribes again, see S1): it is
        // checked against the window like a redelivery.
        let entries: Vec<(Entry, bool)> = publishes
            .iter()
            .map(|(_, p, _)| {
                (
                    entry_for(&mapper, &p.topic, &p.payload, now),
                    p.dup || p.retain,
                )
            })
            .collect();
        // Why each rejected payload goes to dead letters, for the warning once it is durable.
        let rejected: Vec<Option<(String, String, DeadKind)>> = entries
            .iter()
            .map(|(e, _)| match e {
                Entry::DeadLetter(r, why) => {
                    Some((r.alert_id.clone(), why.message.clone(), why.kind))
                }
                Entry::Pending(_) => None,
            })
            .collect();
        let unacked = UnackedBatch { publishes };
        let started = Instant::now();
        let Some(durable) = append_when_space(&wal, entries, &counters, &cancel).await? else {
            break; // shutting down: the held batch stays with the broker
        };
        if fault_exit_before_ack() {
            // Test fault injection (see `fault_exit_before_ack`): die like a kill -9 between
            // the fsync and the PUBACK.
            std::process::abort();
        }
        let (mut persisted, mut dup, mut dead) = (0, 0, 0);
        for ((a, (_, p, _)), why) in durable.get().iter().zip(&unacked.publishes).zip(&rejected) {
            match a {
                Appended::Pending(key) => {
                    persisted += 1;
                    let _ = feed.send(*key);
                }
                Appended::DeadLettered(id) => {
                    dead += 1;
                    if let Some((alert_id, reason, kind)) = why {
                        events::PayloadDeadLettered {
                            dead_letter_id: *id,
                            alert_id,
                            topic: &p.topic,
                            kind: *kind,
                            reason,
                        }
                        .emit(&counters);
                    }
                }
                Appended::Duplicate { alert_id } => {
                    dup += 1;
                    events::DuplicateDropped {
                        alert_id,
                        topic: &p.topic,
                        retained: p.retain && !p.dup,
                    }
                    .emit(&counters);
                }
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

/// Appends a batch, holding it (unacked: the broker keeps it) while the filesystem is full.
///
/// `min_free_bytes` normally holds ingest back before the disk fills; this covers space taken by
/// something else at the last moment. A full disk is backpressure, not a failure: the WAL wrote
/// nothing of the batch and stays usable, the drain keeps delivering what is pending. `None`
/// when cancelled while waiting.
async fn append_when_space(
    wal: &Wal,
    entries: Vec<(Entry, bool)>,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<Option<Durable<Vec<Appended>>>, IngestError> {
    let mut held_since: Option<Instant> = None;
    loop {
        let w = wal.clone();
        let batch = entries.clone();
        let result = tokio::task::spawn_blocking(move || w.append_publishes(batch))
            .await
            .map_err(|source| IngestError::Task {
                task: "log append",
                source,
            })?;
        match result {
            Ok(durable) => {
                if held_since.is_some() {
                    events::backpressure_changed(counters, None, wal.data_bytes());
                }
                return Ok(Some(durable));
            }
            Err(alertbridge_wal::WalError::NoSpace { op }) => {
                if held_since.is_none() {
                    held_since = Some(Instant::now());
                    events::backpressure_changed(
                        counters,
                        Some(&format!(
                            "the store's filesystem is full ({op}); holding the batch unacked"
                        )),
                        wal.data_bytes(),
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Fault injection for the end-to-end tests, never set in production: with
/// `ALERTBRIDGE_FAULT_ABORT_AFTER_FSYNC=1` in its environment the agent aborts right after its
/// first durable batch and before any PUBACK, which is the one crash window a kill -9 from
/// outside cannot hit on purpose (the broker then redelivers with DUP=1).
fn fault_exit_before_ack() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        std::env::var_os("ALERTBRIDGE_FAULT_ABORT_AFTER_FSYNC").is_some_and(|v| v == "1")
    })
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
        // The segments holding pending alerts (they shrink as the backlog drains); dead letters
        // have their own budget and never hold up ingest.
        let size = wal.data_bytes();
        let reason = over_budget(
            size,
            store.max_bytes,
            free_bytes(store.dir()),
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

    /// Broker and store settings of the ingest tests (a mock broker on `port`, the log in `dir`).
    pub(super) fn test_configs(
        dir: &std::path::Path,
        port: u16,
        topics: &[&str],
    ) -> (MqttConfig, StoreConfig) {
        let mqtt = MqttConfig {
            host: "127.0.0.1".into(),
            port,
            tls: false,
            ca_file: None,
            client_id: "t".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            share_group: None,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(100),
        };
        let store = StoreConfig {
            wal: alertbridge_wal::WalConfig {
                dir: dir.to_path_buf(),
                segment_bytes: 64 << 10,
                dedup_window: 100,
                dedup_window_ms: 600_000,
                dead_max_count: 1000,
                dead_max_bytes: 1 << 20,
                delivered_keep: 10,
                ..alertbridge_wal::WalConfig::default()
            },
            max_bytes: u64::MAX,
            cache_capacity_ignored: false,
            dead_letters_export_dir: dir.join("export"),
            dead_letters_export_files: 2,
            batch_max: 16,
            min_free_bytes: 0,
        };
        (mqtt, store)
    }
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

    /// The stored id is the dedup identity: without an id field it is the payload crate's
    /// digest, for a payload the mapping accepts and for one it dead-letters alike.
    #[test]
    fn a_payload_without_an_id_field_is_stored_under_the_digest_of_topic_and_payload() {
        let m = mapper();
        for payload in [&br#"{"device_id":"d1"}"#[..], b"not json"] {
            let stored = match entry_for(&m, "plant/a/alerts/d1", payload, 0) {
                Entry::Pending(r) | Entry::DeadLetter(r, _) => r.alert_id,
            };
            assert_eq!(stored, digest_id("plant/a/alerts/d1", payload));
        }
    }

    /// Regression: rumqttc keeps publishes it decoded from a connection that then
    /// died in `state.events` and returns them *after* the next ConnAck. Stamped with the new
    /// epoch they were acked on the new connection, where a fresh session reuses their packet
    /// ids for other messages: the stale-ack hazard. A mock broker sends three publishes and
    /// closes in one write, then starts a fresh session: no PUBACK may reach it, and the three
    /// alerts must still be stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_buffered_from_a_dead_connection_are_stored_but_never_acked_on_the_next() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (listener, port) = mock::listen().await;
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // connection 1: CONNACK (fresh session), three publishes and EOF in one write
            let (mut s, _) = listener.accept().await.expect("accept 1");
            let _ = s.read(&mut buf).await;
            let mut w = mock::connack_bytes(false).to_vec();
            for i in 1..=3u16 {
                w.extend(mock::publish_bytes(
                    i,
                    "plant/a/alerts/d",
                    &format!("{{\"alert_id\":\"old-{i}\"}}"),
                ));
            }
            s.write_all(&w).await.expect("write");
            drop(s);
            // connection 2: a fresh session; record everything the client sends for a while
            let (mut s, _) = listener.accept().await.expect("accept 2");
            let _ = s.read(&mut buf).await; // CONNECT
            mock::connack(&mut s, false).await;
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

        let mut rig = Rig::start(port, &["plant/+/alerts/#"]);

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
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), rig.keys.recv()).await
        {
            stored += 1;
            if stored == 3 {
                break;
            }
        }
        assert_eq!(
            stored, 3,
            "the buffered publishes are stored (the fresh session will not resend them)"
        );
        rig.stop().await;
    }

    /// Just enough of an MQTT 3.1.1 broker for the connection and subscription tests: packets in
    /// and out.
    mod mock {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        /// Packet types (upper nibble of the first byte).
        pub(super) const CONNECT: u8 = 1;
        pub(super) const PUBACK: u8 = 4;
        pub(super) const SUBSCRIBE: u8 = 8;

        /// One packet from the client: (type, body); `None` at EOF.
        pub(super) async fn read(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            let kind = b[0] >> 4;
            let (mut len, mut shift) = (0usize, 0);
            loop {
                s.read_exact(&mut b).await.ok()?;
                len |= ((b[0] & 0x7f) as usize) << shift;
                if b[0] & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).await.ok()?;
            Some((kind, body))
        }

        /// Skip packets (PINGREQ, PUBACK…) until one of `kind`.
        pub(super) async fn expect(s: &mut TcpStream, kind: u8) -> Option<Vec<u8>> {
            loop {
                let (k, body) = read(s).await?;
                if k == kind {
                    return Some(body);
                }
            }
        }

        /// A SUBSCRIBE body → (packet id, filters with their requested QoS).
        pub(super) fn subscribe(body: &[u8]) -> (u16, Vec<(String, u8)>) {
            let pkid = u16::from_be_bytes([body[0], body[1]]);
            let mut rest = &body[2..];
            let mut filters = Vec::new();
            while rest.len() >= 3 {
                let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let filter = String::from_utf8(rest[2..2 + n].to_vec()).expect("utf-8 filter");
                filters.push((filter, rest[2 + n]));
                rest = &rest[3 + n..];
            }
            (pkid, filters)
        }

        /// A listener on a free loopback port, and the port.
        pub(super) async fn listen() -> (TcpListener, u16) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            (listener, port)
        }

        /// A CONNACK accepting the connection.
        pub(super) fn connack_bytes(session_present: bool) -> [u8; 4] {
            [0x20, 0x02, u8::from(session_present), 0x00]
        }

        pub(super) async fn connack(s: &mut TcpStream, session_present: bool) {
            let w = connack_bytes(session_present);
            s.write_all(&w).await.expect("write CONNACK");
        }

        pub(super) async fn suback(s: &mut TcpStream, pkid: u16, codes: &[u8]) {
            let mut w = vec![0x90, 2 + codes.len() as u8];
            w.extend_from_slice(&pkid.to_be_bytes());
            w.extend_from_slice(codes);
            s.write_all(&w).await.expect("write SUBACK");
        }

        /// A QoS 1 PUBLISH, encoded (a body under 128 bytes: one length byte).
        pub(super) fn publish_bytes(pkid: u16, topic: &str, payload: &str) -> Vec<u8> {
            let mut body = Vec::new();
            body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&pkid.to_be_bytes());
            body.extend_from_slice(payload.as_bytes());
            let mut w = vec![0x32, body.len() as u8];
            w.extend(body);
            w
        }

        /// A QoS 1 PUBLISH, sent.
        pub(super) async fn publish(s: &mut TcpStream, pkid: u16, topic: &str, payload: &str) {
            let w = publish_bytes(pkid, topic, payload);
            s.write_all(&w).await.expect("write PUBLISH");
        }
    }

    /// Ingest against the mock broker on `port`, with fast retries.
    struct Rig {
        _dir: tempfile::TempDir,
        wal: Wal,
        counters: Arc<Counters>,
        keys: mpsc::UnboundedReceiver<Key>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), IngestError>>,
    }

    impl Rig {
        fn start(port: u16, topics: &[&str]) -> Rig {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal =
                Wal::open(alertbridge_wal::WalConfig::new(dir.path().join("wal"))).expect("wal");
            let (mqtt, store) = test_configs(dir.path(), port, topics);
            let counters = Arc::new(Counters::default());
            let (feed, keys) = mpsc::unbounded_channel();
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
            Rig {
                _dir: dir,
                wal,
                counters,
                keys,
                cancel,
                task,
            }
        }

        /// Poll the live counters (as `status` shows them) until `cond` holds, up to 10 s.
        async fn status_until(
            &self,
            what: &str,
            cond: impl Fn(&crate::events::Snapshot) -> bool,
        ) -> crate::events::Snapshot {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let st = crate::admin::status_of(&self.wal, Some(&self.counters)).expect("status");
                let c = st.counters.expect("live counters");
                if cond(&c) {
                    return c;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}; status: {c:#?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// The alert id of the next record ingest stores, waiting up to 10 s.
        async fn next_stored_alert_id(&mut self, what: &str) -> String {
            let key = tokio::time::timeout(Duration::from_secs(10), self.keys.recv())
                .await
                .expect(what)
                .expect("key");
            let record = self.wal.get(key).expect("read").expect("stored");
            record.alert_id
        }

        async fn stop(self) {
            self.cancel.cancel();
            let _ = self.task.await;
        }
    }

    /// What the mock broker reports on `rx`, waiting up to 10 s.
    async fn within_10s<T>(rx: tokio::sync::oneshot::Receiver<T>, what: &str) -> T {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect(what)
            .expect("mock broker")
    }

    /// Regression: the agent subscribed only when the broker started a fresh
    /// session. When the connection dropped between the CONNACK and the SUBACK of a fresh
    /// session, the broker kept a session without the subscription, every later CONNACK said
    /// "session present", and the agent sat connected, healthy and deaf forever. Here the
    /// mock broker closes connection 1 on SUBSCRIBE and resumes the session on connection 2:
    /// the agent must SUBSCRIBE again there, and an alert published after the SUBACK must be
    /// stored and acked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_lost_before_its_suback_is_sent_again_when_the_session_resumes() {
        let (listener, port) = mock::listen().await;
        let (resubscribed_tx, resubscribed_rx) = tokio::sync::oneshot::channel();
        let (acked_tx, acked_rx) = tokio::sync::oneshot::channel();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // connection 1: a fresh session; the connection dies before the SUBACK
            let (mut s, _) = listener.accept().await.expect("accept 1");
            mock::expect(&mut s, mock::CONNECT)
                .await
                .expect("CONNECT 1");
            mock::connack(&mut s, false).await;
            mock::expect(&mut s, mock::SUBSCRIBE)
                .await
                .expect("SUBSCRIBE on the fresh session");
            drop(s);
            // connection 2: the broker kept the session (without the subscription)
            let (mut s, _) = listener.accept().await.expect("accept 2");
            mock::expect(&mut s, mock::CONNECT)
                .await
                .expect("CONNECT 2");
            mock::connack(&mut s, true).await;
            let Some(body) = mock::expect(&mut s, mock::SUBSCRIBE).await else {
                return; // the test reports the missing SUBSCRIBE
            };
            let (pkid, filters) = mock::subscribe(&body);
            let _ = resubscribed_tx.send(filters);
            mock::suback(&mut s, pkid, &[0x01, 0x01]).await;
            mock::publish(
                &mut s,
                7,
                "site/b/pump",
                r#"{"alert_id":"after-resubscribe"}"#,
            )
            .await;
            let puback = mock::expect(&mut s, mock::PUBACK).await;
            let _ = acked_tx.send(puback);
            let _ = end_rx.await; // keep the connection until the test is done
        });

        let mut rig = Rig::start(port, &["plant/+/alerts/#", "site/b/#"]);
        let filters = within_10s(
            resubscribed_rx,
            "no SUBSCRIBE after a session-present CONNACK: the agent would be deaf",
        )
        .await;
        assert_eq!(
            filters,
            vec![
                ("plant/+/alerts/#".to_string(), 1),
                ("site/b/#".to_string(), 1)
            ],
            "every filter, at QoS 1"
        );
        let st = rig
            .status_until("every subscription held", |c| c.subscribed())
            .await;
        assert_eq!((st.subscriptions_held, st.subscriptions_wanted), (2, 2));
        assert_eq!((st.subscription_errors, st.subscription_error), (0, None));
        assert_eq!(
            rig.next_stored_alert_id("the alert published after the SUBACK is stored")
                .await,
            "after-resubscribe"
        );
        let puback = within_10s(acked_rx, "PUBACK in time").await;
        assert_eq!(puback, Some(vec![0, 7]), "acked after it was stored");
        let _ = end_tx.send(());
        rig.stop().await;
    }

    /// Regression: a refused grant (SUBACK 0x80, e.g. the broker's ACL) was only logged.
    /// Now it is an error in status naming the filter, counted, the agent is not `subscribed`,
    /// and the refused filter alone is asked again with backoff on the open connection until
    /// the broker grants it (an ACL fixed while the agent runs needs no restart).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_subscription_shows_in_status_and_is_asked_again_until_granted() {
        let (listener, port) = mock::listen().await;
        let (retried_tx, mut retried_rx) = mpsc::unbounded_channel();
        let (grant_tx, grant_rx) = tokio::sync::oneshot::channel::<()>();
        let (acked_tx, acked_rx) = tokio::sync::oneshot::channel();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            mock::expect(&mut s, mock::CONNECT).await.expect("CONNECT");
            mock::connack(&mut s, false).await;
            let body = mock::expect(&mut s, mock::SUBSCRIBE)
                .await
                .expect("SUBSCRIBE");
            let (pkid, _) = mock::subscribe(&body);
            mock::suback(&mut s, pkid, &[0x01, 0x80]).await;
            // refuse every retry until the test has checked the status
            let mut grant_rx = grant_rx;
            loop {
                let Some(body) = mock::expect(&mut s, mock::SUBSCRIBE).await else {
                    return;
                };
                let (pkid, filters) = mock::subscribe(&body);
                let _ = retried_tx.send(filters);
                if grant_rx.try_recv().is_ok() {
                    mock::suback(&mut s, pkid, &[0x01]).await;
                    break;
                }
                mock::suback(&mut s, pkid, &[0x80]).await;
            }
            mock::publish(&mut s, 9, "site/b/pump", r#"{"alert_id":"granted-late"}"#).await;
            let puback = mock::expect(&mut s, mock::PUBACK).await;
            let _ = acked_tx.send(puback);
            let _ = end_rx.await;
        });

        let mut rig = Rig::start(port, &["plant/+/alerts/#", "site/b/#"]);
        let st = rig
            .status_until("the refusal of a retry is counted", |c| {
                c.subscription_errors >= 2
            })
            .await;
        assert!(!st.subscribed(), "not ready while a filter is refused");
        assert_eq!((st.subscriptions_held, st.subscriptions_wanted), (1, 2));
        let err = st.subscription_error.expect("the error is in status");
        assert!(
            err.contains("`site/b/#`") && err.contains("ACL") && !err.contains("plant/+"),
            "{err}"
        );
        assert!(
            st.connected,
            "connected, yet not subscribed: exactly what status must show"
        );
        let first_retry = retried_rx.recv().await.expect("a retry");
        assert_eq!(
            first_retry,
            vec![("site/b/#".to_string(), 1)],
            "only the refused filter is asked again"
        );

        let _ = grant_tx.send(()); // the broker's ACL is fixed
        let st = rig
            .status_until("the retried filter is granted", |c| c.subscribed())
            .await;
        assert_eq!(st.subscription_error, None, "the error clears once held");
        assert_eq!(
            rig.next_stored_alert_id("the alert on the late-granted filter is stored")
                .await,
            "granted-late"
        );
        let puback = within_10s(acked_rx, "PUBACK in time").await;
        assert_eq!(puback, Some(vec![0, 9]));
        let _ = end_tx.send(());
        rig.stop().await;
    }
}
