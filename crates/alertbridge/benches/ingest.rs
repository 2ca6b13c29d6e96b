//! Ingest throughput: alerts/s made durable (flush + fsync) and acked by alertbridge, beside
//! mosquitto's own QoS 1 ceiling measured in the same run with a subscriber that acks at once,
//! in MQTT 3.1.1 and in MQTT 5.
//!
//! `cargo bench --bench ingest [-- N] [--protocol 3.1.1|5]` (default N = 20000, both
//! protocols). Spawns its own mosquitto on a free port (persistence on, max_inflight_messages
//! as printed). Genesys is a simulator in a full outage, so the drain stays out of the way
//! (breaker open) and only ingest is measured.
//!
//! Two modes, both for the raw subscriber and for alertbridge:
//! - `backlog`: N messages queued in the broker for the (persistent) session while the consumer
//!   is offline, then the consumer connects: pure consumer-side throughput;
//! - `live`: the consumer is connected while a publisher sends N as fast as it can.
//!
//! Each (mode, consumer) runs once per protocol, the publisher and the consumer both speaking
//! it. In MQTT 5 the agent runs with `mqtt.protocol = "5"` and the default `mqtt.receive_maximum`
//! (its PUBACKs go through rumqttc's request channel, see `src/ingest/v5.rs`), the raw
//! subscriber announces the same Receive Maximum, and the publisher sets a Message Expiry
//! Interval and two user properties on every alert, so the agent keeps them with each record
//! (record version 2). mosquitto announces its `max_inflight_messages` as Receive Maximum to
//! the v5 publisher too, so that one has 100 publishes in flight where the 3.1.1 one has 1000:
//! in `live` mode the raw v5 row shows that publisher's cap.
//!
//! Agent columns: `batches`, group commits (flush + fsync) for the N alerts; `unacked`, the most
//! alerts seen received and not yet acked at once (sampled each millisecond, so a lower bound):
//! how many the broker let pile up on the agent, at most the in-flight window where the broker
//! holds to it; `props`, the records in the agent's log that carry MQTT 5 properties, read back
//! after the run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge::config::{Config, DEFAULT_RECEIVE_MAXIMUM};
use alertbridge::events::Counters;
use genesys_sim::Sim;
use tokio_util::sync::CancellationToken;

mod broker;
use broker::client::{PUBLISH_EXPIRY_SECS, USER_PROPERTIES};
use broker::{broker, raw_subscriber, runtime, unreachable_genesys, Protocol, INFLIGHT};

/// Alert `i` of a run: (topic, payload of about 150 bytes), every tenth critical.
fn alert(i: usize) -> (String, String) {
    let body = format!(
        r#"{{"alert_id":"b-{i}","device_id":"SN-{:04}","alert_level":"{}","reading_value":85.4,"timestamp_ms":1678892340000}}"#,
        i % 997,
        if i % 10 == 0 { "critical" } else { "warning" }
    );
    (format!("plant/s{}/alerts/d{}", i % 4, i % 997), body)
}

/// Publish n QoS1 messages in `protocol`; returns when the broker acked them all.
async fn publish(port: u16, protocol: Protocol, n: usize) {
    broker::publish(port, protocol, "pub", n, None, alert).await;
}

async fn raw(mode: &str, protocol: Protocol, n: usize) -> f64 {
    let b = broker();
    let id = format!("raw-{mode}");
    if mode == "backlog" {
        // register the session, go offline, queue n, come back
        let (tx, _rx) = tokio::sync::oneshot::channel();
        raw_subscriber(b.port, protocol, &id, false, 0, tx).await;
        publish(b.port, protocol, n).await;
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let d = raw_subscriber(b.port, protocol, &id, false, n, tx).await;
        n as f64 / d.as_secs_f64()
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn({
            let id = id.clone();
            let port = b.port;
            async move { raw_subscriber(port, protocol, &id, false, n, tx).await }
        });
        let _ = rx.await;
        publish(b.port, protocol, n).await;
        let d = h.await.expect("subscriber");
        n as f64 / d.as_secs_f64()
    }
}

fn agent_config(port: u16, protocol: Protocol, sim: &Sim, dir: &std::path::Path) -> Config {
    let secret = dir.join("secret");
    std::fs::write(&secret, "bench-secret").expect("secret");
    let text = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"ab-bench\"\nprotocol = \"{}\"\n[store]\ndir = \"{}\"\nmax_bytes = 10737418240\n[genesys]\nlogin_url = \"{u}\"\napi_url = \"{u}\"\nclient_id = \"bench\"\nclient_secret_file = \"{}\"\nflow_id = \"f\"\n[delivery]\nbreaker_failures = 1\nbreaker_cooldown_ms = 600000\n[mapping]\nalert_id_field = \"alert_id\"\n[admin]\nlisten = \"\"\n[log]\nlevel = \"error\"\n",
        protocol.name(),
        dir.join("wal").display(),
        secret.display(),
        u = sim.base_url()
    );
    Config::parse(&text, std::path::Path::new("<bench>")).expect("bench config")
}

/// One alertbridge row: alerts/s, group commits, the most alerts received and not yet acked,
/// and records in the log that carry MQTT 5 properties.
struct AgentRun {
    rate: f64,
    batches: u64,
    peak_unacked: u64,
    with_props: usize,
}

async fn agent(mode: &str, protocol: Protocol, n: usize) -> AgentRun {
    let b = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = unreachable_genesys(Duration::from_secs(3600)).await;
    let cfg = agent_config(b.port, protocol, &sim, dir.path());
    let start_agent = |counters: Arc<Counters>, stop: CancellationToken| {
        let cfg = cfg.clone();
        tokio::spawn(
            async move { alertbridge::run_with(cfg, counters, stop.cancelled_owned()).await },
        )
    };
    // Waits for `target` acks; returns the most alerts seen received but not yet acked (sampled
    // each millisecond, so a lower bound): what the broker let pile up on the agent.
    let wait_acked = |c: Arc<Counters>, target: u64| async move {
        let mut last = Instant::now();
        let mut peak = 0;
        loop {
            let acked = c.acked.load(Ordering::Relaxed);
            if acked >= target {
                return peak;
            }
            peak = peak.max(c.received.load(Ordering::Relaxed).saturating_sub(acked));
            tokio::time::sleep(Duration::from_millis(1)).await;
            if std::env::var_os("BENCH_DEBUG").is_some() && last.elapsed() > Duration::from_secs(1)
            {
                last = Instant::now();
                eprintln!("{:?}", c.snapshot());
            }
        }
    };
    let wait_connected = |c: Arc<Counters>| async move {
        while !c.connected.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // subscription
    };
    if mode == "backlog" {
        let c = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let h = start_agent(c.clone(), stop.clone());
        wait_connected(c.clone()).await;
        stop.cancel();
        let _ = h.await;
        publish(b.port, protocol, n).await;
    }
    let c = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let h = start_agent(c.clone(), stop.clone());
    let started;
    let peak_unacked;
    if mode == "backlog" {
        while c.received.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        started = Instant::now();
        peak_unacked = wait_acked(c.clone(), n as u64).await;
    } else {
        wait_connected(c.clone()).await;
        started = Instant::now();
        let acked = tokio::spawn(wait_acked(c.clone(), n as u64));
        publish(b.port, protocol, n).await;
        peak_unacked = acked.await.expect("ack waiter");
    }
    let d = started.elapsed();
    let batches = c.batches.load(Ordering::Relaxed);
    stop.cancel();
    let _ = h.await;
    // After the clock stopped and the agent closed its log: what it stored.
    let wal = alertbridge::open_wal(&cfg).expect("reopen the agent's log");
    let with_props = wal
        .pending()
        .filter(|r| matches!(r, Ok((_, record)) if record.mqtt.is_some()))
        .count();
    AgentRun {
        rate: n as f64 / d.as_secs_f64(),
        batches,
        peak_unacked,
        with_props,
    }
}

/// N (default 20000) and the protocols to run (`--protocol 3.1.1|5`, default both); anything
/// else (cargo passes `--bench`) is ignored.
fn parse_args() -> (usize, Vec<Protocol>) {
    let mut n = 20_000;
    let mut protocols = Protocol::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--protocol" {
            let name = args.next().unwrap_or_default();
            let p = Protocol::from_name(&name)
                .unwrap_or_else(|| panic!("--protocol 3.1.1|5, not {name:?}"));
            protocols = vec![p];
        } else if let Ok(v) = a.parse() {
            n = v;
        }
    }
    (n, protocols)
}

/// One line of the table: mode, protocol, consumer, alerts/s, then the agent's figures
/// (batches, peak unacked, props), `-` for the raw subscriber.
fn row(mode: &str, protocol: Protocol, consumer: &str, rate: f64, agent: Option<&AgentRun>) {
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "{mode:<8} {:<8} {consumer:<38} {rate:>10.0} {:>8} {:>8} {:>8}",
        protocol.name(),
        show(agent.map(|a| a.batches.to_string())),
        show(agent.map(|a| a.peak_unacked.to_string())),
        show(agent.map(|a| a.with_props.to_string())),
    );
}

fn main() {
    let (n, protocols) = parse_args();
    let rt = runtime();
    rt.block_on(async {
        println!(
            "ingest benchmark: {n} QoS1 alerts (~150 B), mosquitto max_inflight_messages={INFLIGHT}, {} CPUs",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        println!(
            "MQTT 5: message expiry {PUBLISH_EXPIRY_SECS} s and user properties {:?} on every alert; \
             agent and raw subscriber Receive Maximum {DEFAULT_RECEIVE_MAXIMUM}; publisher {INFLIGHT} \
             in flight (mosquitto's Receive Maximum), 1000 in MQTT 3.1.1",
            USER_PROPERTIES.map(|(k, _)| k)
        );
        println!(
            "{:<8} {:<8} {:<38} {:>10} {:>8} {:>8} {:>8}",
            "mode", "protocol", "consumer", "alerts/s", "batches", "unacked", "props"
        );
        for mode in ["backlog", "live"] {
            for &p in &protocols {
                let r = raw(mode, p, n).await;
                row(mode, p, "raw rumqttc subscriber (ack at once)", r, None);
            }
            for &p in &protocols {
                let a = agent(mode, p, n).await;
                row(mode, p, "alertbridge (flush + fsync, then ack)", a.rate, Some(&a));
            }
        }
    });
}
