//! Ingest unit tests: mapping a publish to its entry, the budget rule, and the connection task
//! against a mock MQTT broker (stale acks, subscriptions kept and refused).

use std::sync::Arc;
use std::time::Duration;

use alertbridge_payload::{digest_id, Mapper};
use alertbridge_wal::{DeadKind, Entry, Key, Wal, PRIORITY_CRITICAL};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::over_budget;
use super::*;
use crate::config::{MqttConfig, StoreConfig};
use crate::events::Counters;

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
        protocol: crate::config::MqttProtocol::V311,
        session_expiry_secs: crate::config::DEFAULT_SESSION_EXPIRY_SECS,
        receive_maximum: crate::config::DEFAULT_RECEIVE_MAXIMUM,
        keep_response_topic: false,
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
        None,
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
        match entry_for(&m, "t", payload, None, 0) {
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
    match entry_for(&m, "t", big.as_bytes(), None, 0) {
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
    assert_eq!(
        id(entry_for(&m, "t", p, None, 1)),
        id(entry_for(&m, "t", p, None, 999))
    );
    assert_ne!(
        id(entry_for(&m, "t", p, None, 1)),
        id(entry_for(&m, "u", p, None, 1))
    );
}

/// The stored id is the dedup identity: without an id field it is the payload crate's
/// digest, for a payload the mapping accepts and for one it dead-letters alike.
#[test]
fn a_payload_without_an_id_field_is_stored_under_the_digest_of_topic_and_payload() {
    let m = mapper();
    for payload in [&br#"{"device_id":"d1"}"#[..], b"not json"] {
        let stored = match entry_for(&m, "plant/a/alerts/d1", payload, None, 0) {
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
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), rig.keys.recv()).await {
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
        Rig::start_with(port, topics, |_| {})
    }

    /// [`Rig::start`] with the broker settings changed by `edit` (e.g. MQTT 5).
    fn start_with(port: u16, topics: &[&str], edit: impl FnOnce(&mut MqttConfig)) -> Rig {
        Rig::start_in(tempfile::tempdir().expect("tempdir"), port, topics, edit)
    }

    /// [`Rig::start_with`] on the store in `dir` (a restart: see [`Rig::stop_keeping_store`]).
    fn start_in(
        dir: tempfile::TempDir,
        port: u16,
        topics: &[&str],
        edit: impl FnOnce(&mut MqttConfig),
    ) -> Rig {
        let wal = Wal::open(alertbridge_wal::WalConfig::new(dir.path().join("wal"))).expect("wal");
        let (mut mqtt, store) = test_configs(dir.path(), port, topics);
        edit(&mut mqtt);
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

    /// Stop, and hand back the directory of the store for the next start.
    async fn stop_keeping_store(self) -> tempfile::TempDir {
        self.cancel.cancel();
        let _ = self.task.await;
        self._dir
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

/// MQTT 5 against a mock v5 broker: the CONNECT asks for the configured session expiry and
/// Receive Maximum and announces the protocol's largest packet size; a refused filter shows its
/// reason code (0x87 NotAuthorized) in status; a publish is stored and acked through rumqttc's
/// request channel with its packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_connection_asks_for_its_session_shows_refusal_codes_and_acks_after_storing() {
    use tokio::io::AsyncWriteExt;

    let (listener, port) = mock::listen().await;
    let (connect_tx, connect_rx) = tokio::sync::oneshot::channel();
    let (acked_tx, acked_rx) = tokio::sync::oneshot::channel();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let connect = mock::expect(&mut s, mock::CONNECT).await.expect("CONNECT");
        let _ = connect_tx.send(connect);
        // CONNACK v5: flags, reason, empty properties
        s.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00])
            .await
            .expect("CONNACK");
        let body = mock::expect(&mut s, mock::SUBSCRIBE)
            .await
            .expect("SUBSCRIBE");
        let pkid = [body[0], body[1]];
        // SUBACK v5: packet id, empty properties, granted QoS 1 / 0x87 NotAuthorized
        s.write_all(&[0x90, 0x05, pkid[0], pkid[1], 0x00, 0x01, 0x87])
            .await
            .expect("SUBACK");
        // PUBLISH v5 QoS 1, packet id 7, empty properties
        let (topic, payload) = ("plant/a/alerts/d", r#"{"alert_id":"v5-1"}"#);
        let mut p = (topic.len() as u16).to_be_bytes().to_vec();
        p.extend_from_slice(topic.as_bytes());
        p.extend_from_slice(&[0x00, 0x07, 0x00]);
        p.extend_from_slice(payload.as_bytes());
        let mut w = vec![0x32, p.len() as u8];
        w.extend(p);
        s.write_all(&w).await.expect("PUBLISH");
        let puback = mock::expect(&mut s, mock::PUBACK).await;
        let _ = acked_tx.send(puback);
        let _ = end_rx.await;
    });

    let mut rig = Rig::start_with(port, &["plant/+/alerts/#", "site/b/#"], |m| {
        m.protocol = crate::config::MqttProtocol::V5;
        m.session_expiry_secs = 60;
        m.receive_maximum = 32;
    });
    let connect = within_10s(connect_rx, "CONNECT in time").await;
    assert_eq!(connect[6], 5, "protocol level 5: {connect:02x?}");
    let has = |bytes: &[u8]| connect.windows(bytes.len()).any(|w| w == bytes);
    assert!(
        has(&[0x11, 0, 0, 0, 60]),
        "session expiry 60 s: {connect:02x?}"
    );
    assert!(has(&[0x21, 0, 32]), "receive maximum 32: {connect:02x?}");
    assert!(
        has(&[0x27, 0x10, 0x00, 0x00, 0x04]),
        "maximum packet size 268435460: {connect:02x?}"
    );
    let st = rig
        .status_until("the refusal is counted", |c| c.subscription_errors >= 1)
        .await;
    assert!(!st.subscribed(), "not ready while a filter is refused");
    let err = st.subscription_error.expect("the error is in status");
    assert!(
        err.contains("`site/b/#` (SUBACK 0x87 NotAuthorized)"),
        "{err}"
    );
    assert_eq!(
        rig.next_stored_alert_id("the v5 publish is stored").await,
        "v5-1"
    );
    let puback = within_10s(acked_rx, "PUBACK in time").await;
    assert_eq!(
        puback,
        Some(vec![0, 7]),
        "acked with its packet id after it was stored"
    );
    let _ = end_tx.send(());
    rig.stop().await;
}

/// The MQTT 5 form of the stale-ack regression above: rumqttc's v5 event loop hands publishes
/// buffered from a dead connection out *before* the next ConnAck. They must be stored and never
/// acked on the new connection (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publishes_buffered_from_a_dead_connection_are_stored_but_never_acked_on_the_next() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A v5 QoS 1 PUBLISH with empty properties.
    fn publish_v5(pkid: u16, topic: &str, payload: &str) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.push(0x00);
        body.extend_from_slice(payload.as_bytes());
        let mut w = vec![0x32, body.len() as u8];
        w.extend(body);
        w
    }
    const CONNACK_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x00, 0x00];

    let (listener, port) = mock::listen().await;
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        // connection 1: CONNACK (fresh session), three publishes and EOF in one write
        let (mut s, _) = listener.accept().await.expect("accept 1");
        let _ = s.read(&mut buf).await;
        let mut w = CONNACK_V5.to_vec();
        for i in 1..=3u16 {
            w.extend(publish_v5(
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
        s.write_all(&CONNACK_V5).await.expect("CONNACK 2");
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

    let mut rig = Rig::start_with(port, &["plant/+/alerts/#"], |m| {
        m.protocol = crate::config::MqttProtocol::V5;
    });
    let seen = seen_rx.await.expect("mock broker result");
    // PUBACK = 0x40 0x02 <pkid> (or 0x40 0x03 <pkid> <reason>); never on the new connection
    let pubacks: Vec<_> = seen
        .windows(2)
        .filter(|w| w[0] == 0x40 && (w[1] == 0x02 || w[1] == 0x03))
        .collect();
    assert!(
        pubacks.is_empty(),
        "stale PUBACK sent on the new connection: {seen:02x?}"
    );
    let mut stored = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), rig.keys.recv()).await {
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

/// S2: alerts published while the agent was away wait in its broker session; when the broker
/// discarded that session they were never queued and are gone, and the agent used to reconnect,
/// subscribe again (S1) and say nothing. The mock broker grants the subscription (the store
/// records the session), then drops the connection and answers the next CONNACK without a
/// session: that is reported and counted. A first CONNACK without a session is not. After a
/// restart on the same store, a first CONNACK without a session is reported too (the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_broker_lost_is_reported_in_this_process_and_after_a_restart() {
    /// One connection of the mock: CONNACK without a session, SUBACK granting every filter,
    /// then held until `drop_rx` fires.
    async fn fresh_session(
        listener: &tokio::net::TcpListener,
        drop_rx: tokio::sync::oneshot::Receiver<()>,
    ) {
        let (mut s, _) = listener.accept().await.expect("accept");
        mock::expect(&mut s, mock::CONNECT).await.expect("CONNECT");
        mock::connack(&mut s, false).await;
        let body = mock::expect(&mut s, mock::SUBSCRIBE)
            .await
            .expect("SUBSCRIBE");
        let (pkid, filters) = mock::subscribe(&body);
        mock::suback(&mut s, pkid, &vec![0x01; filters.len()]).await;
        let _ = drop_rx.await;
    }

    let (listener, port) = mock::listen().await;
    let (drop1_tx, drop1_rx) = tokio::sync::oneshot::channel();
    let (drop2_tx, drop2_rx) = tokio::sync::oneshot::channel();
    let broker = tokio::spawn(async move {
        fresh_session(&listener, drop1_rx).await;
        fresh_session(&listener, drop2_rx).await;
        listener // dropped by the test once the first rig is done with it
    });
    let rig = Rig::start(port, &["plant/+/alerts/#"]);
    let st = rig
        .status_until("the first session's subscription held", |c| c.subscribed())
        .await;
    assert_eq!(st.sessions_lost, 0, "a first start reports nothing");
    let marker = rig._dir.path().join(super::marker::FILE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !marker.is_file() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the granted subscription is recorded in the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = drop1_tx.send(()); // the broker drops the connection and forgets the session
    let st = rig
        .status_until("the lost session is counted", |c| c.sessions_lost == 1)
        .await;
    assert!(st.session_lost_at_ms.is_some());
    rig.status_until("subscribed again on the new session (S1)", |c| {
        c.subscribed()
    })
    .await;
    let _ = drop2_tx.send(());
    drop(broker.await.expect("mock broker"));
    let dir = rig.stop_keeping_store().await;

    // A restart on the same store; the broker (same address: the record names it) has no
    // session for us any more. A new listener, so no connection of the stopped rig is waiting.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the same port again");
    let (drop3_tx, drop3_rx) = tokio::sync::oneshot::channel();
    let broker = tokio::spawn(async move { fresh_session(&listener, drop3_rx).await });
    let rig = Rig::start_in(dir, port, &["plant/+/alerts/#"], |_| {});
    let st = rig
        .status_until("the session lost while stopped is counted", |c| {
            c.sessions_lost == 1
        })
        .await;
    assert_eq!(st.sessions_lost, 1);
    let _ = drop3_tx.send(());
    rig.stop().await;
    let _ = broker.await;
}
