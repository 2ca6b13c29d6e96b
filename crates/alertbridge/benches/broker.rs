//! What the ingest and backlog benches share on the MQTT side: their own mosquitto (a free
//! loopback port, persistence on in a data dir of its own, `max_inflight_messages` [`INFLIGHT`], a
//! queue big enough for any N; killed and reaped on drop), a QoS 1 publisher, and the raw
//! subscriber that measures the broker's QoS 1 ceiling, both in MQTT 3.1.1 or 5 (`client.rs`);
//! and the Genesys simulator in an outage, so the agent's drain stays out of the way; and the
//! runtime they run on.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use genesys_sim::{Sim, SimConfig};

pub(crate) mod client;
pub(crate) use client::Protocol;
use client::{Client, Event};

/// mosquitto's `max_inflight_messages`: unacked QoS 1 publishes it sends one client.
pub(crate) const INFLIGHT: u16 = 100;

/// A mosquitto of this bench's own, killed and reaped on drop.
pub(crate) struct Broker {
    child: Child,
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(crate) fn broker() -> Broker {
    let dir = tempfile::tempdir().expect("tempdir");
    // mosquitto started as root drops to user `mosquitto`: without this it cannot write into
    // its data dir.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod data dir");
    let port = free_port();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_inflight_messages {INFLIGHT}\nmax_queued_messages 10000000\n",
            dir.path().display()
        ),
    )
    .expect("write conf");
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker {
        child,
        port,
        _dir: dir,
    }
}

/// Publishes `alert(0..n)` (topic, payload) at QoS 1 in `protocol` as client `id`, as fast as
/// the broker acks them or paced to `rate` alerts/s; returns the time from the first publish
/// queued to the last PUBACK. In flight: 1000 in MQTT 3.1.1; in MQTT 5 the broker's Receive
/// Maximum, which mosquitto sets to its `max_inflight_messages` ([`INFLIGHT`]).
pub(crate) async fn publish<F>(
    port: u16,
    protocol: Protocol,
    id: &str,
    n: usize,
    rate: Option<f64>,
    alert: F,
) -> Duration
where
    F: Fn(usize) -> (String, String) + Send + 'static,
{
    let (client, mut el) = client::publisher(protocol, port, id);
    let start = Instant::now();
    let pubs = tokio::spawn(async move {
        for i in 0..n {
            if let Some(rate) = rate.filter(|_| i % 100 == 0) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let (t, b) = alert(i);
            client.publish(t, b).await;
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match el.poll().await {
            Ok(Event::PubAck) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher lost the broker: {e}"),
        }
    }
    let d = start.elapsed();
    if let Ok(client) = pubs.await {
        client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
    }
    d
}

/// Queues as many of `unacked` (packet ids) as the client's request channel takes; the rest
/// wait for the next poll.
fn try_ack_front(client: &Client, unacked: &mut VecDeque<u16>) {
    while let Some(&pkid) = unacked.front() {
        if !client.try_ack(pkid) {
            break;
        }
        unacked.pop_front();
    }
}

/// A plain subscriber to `plant/+/alerts/#` in `protocol` that acks each publish at once: the
/// broker's QoS 1 ceiling. `clean` picks a clean or a persistent session; in MQTT 5 it
/// announces a Receive Maximum of [`INFLIGHT`], the window mosquitto allows a 3.1.1 client.
/// Sends on `ready` once subscribed; returns the time from the first to the `n`-th publish, or
/// right after subscribing (and disconnecting, the session registered) when `n` is 0.
pub(crate) async fn raw_subscriber(
    port: u16,
    protocol: Protocol,
    id: &str,
    clean: bool,
    n: usize,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Duration {
    let (client, mut el) = client::subscriber(protocol, port, id, clean, INFLIGHT);
    let mut ready = Some(ready);
    let mut got = 0;
    let mut start = None;
    let mut unacked = VecDeque::new();
    loop {
        try_ack_front(&client, &mut unacked);
        match el.poll().await {
            Ok(Event::ConnAck) => client.try_subscribe("plant/+/alerts/#"),
            Ok(Event::SubAck) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                if n == 0 {
                    client.disconnect().await;
                    let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
                    return Duration::ZERO;
                }
            }
            Ok(Event::Publish(pkid)) => {
                start.get_or_insert_with(Instant::now);
                unacked.push_back(pkid);
                got += 1;
                if got == n {
                    let d = start.map(|s| s.elapsed()).unwrap_or_default();
                    // Tens of thousands of acks may still wait here, more than the request
                    // channel holds: keep the event loop polled while they go (awaiting `ack`
                    // with nobody polling would never return).
                    while !unacked.is_empty() {
                        try_ack_front(&client, &mut unacked);
                        let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
                    }
                    client.try_disconnect();
                    let flush_until = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < flush_until {
                        match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                            Ok(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    return d;
                }
            }
            Ok(_) => {}
            // e.g. the previous session of this id being taken over: rumqttc reconnects
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// An in-process genesys-sim (client `bench`, secret `bench-secret`) in an outage for `outage`:
/// 503 to token and API calls, so the agent delivers nothing and only ingest is measured.
pub(crate) async fn unreachable_genesys(outage: Duration) -> Sim {
    let sim = Sim::start(SimConfig {
        client_id: "bench".into(),
        client_secret: "bench-secret".into(),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    sim.outage_for(outage);
    sim
}

/// The benches' runtime (multi-threaded, I/O and time on), with the TLS crypto provider the
/// agent installs at start.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    alertbridge::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
