//! Ingest throughput: alerts/s made durable (flush + fsync) and acked by alertbridge, beside
//! mosquitto's own QoS 1 ceiling measured in the same run with a subscriber that acks at once.
//!
//! `cargo bench --bench ingest [-- N]` (default N = 20000). Spawns its own mosquitto on a free
//! port (persistence on, max_inflight_messages as printed). Genesys is a simulator in a full
//! outage, so the drain stays out of the way (breaker open) and only ingest is measured.
//!
//! Two modes, both for the raw subscriber and for alertbridge:
//! - `backlog`: N messages queued in the broker for the (persistent) session while the consumer
//!   is offline, then the consumer connects: pure consumer-side throughput;
//! - `live`: the consumer is connected while a publisher sends N as fast as it can.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge::config::Config;
use alertbridge::events::Counters;
use genesys_sim::Sim;
use tokio_util::sync::CancellationToken;

mod broker;
use broker::{broker, raw_subscriber, runtime, unreachable_genesys, INFLIGHT};

/// Alert `i` of a run: (topic, payload of about 150 bytes), every tenth critical.
fn alert(i: usize) -> (String, String) {
    let body = format!(
        r#"{{"alert_id":"b-{i}","device_id":"SN-{:04}","alert_level":"{}","reading_value":85.4,"timestamp_ms":1678892340000}}"#,
        i % 997,
        if i % 10 == 0 { "critical" } else { "warning" }
    );
    (format!("plant/s{}/alerts/d{}", i % 4, i % 997), body)
}

/// Publish n QoS1 messages; returns when the broker acked them all.
async fn publish(port: u16, n: usize, id: &str) {
    broker::publish(port, id, n, None, alert).await;
}

async fn raw(mode: &str, n: usize) -> f64 {
    let b = broker();
    let id = format!("raw-{mode}");
    if mode == "backlog" {
        // register the session, go offline, queue n, come back
        let (tx, _rx) = tokio::sync::oneshot::channel();
        raw_subscriber(b.port, &id, false, 0, tx).await;
        publish(b.port, n, "pub").await;
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let d = raw_subscriber(b.port, &id, false, n, tx).await;
        n as f64 / d.as_secs_f64()
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn({
            let id = id.clone();
            let port = b.port;
            async move { raw_subscriber(port, &id, false, n, tx).await }
        });
        let _ = rx.await;
        publish(b.port, n, "pub").await;
        let d = h.await.expect("subscriber");
        n as f64 / d.as_secs_f64()
    }
}

fn agent_config(port: u16, sim: &Sim, dir: &std::path::Path) -> Config {
    let secret = dir.join("secret");
    std::fs::write(&secret, "bench-secret").expect("secret");
    let text = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"ab-bench\"\n[store]\ndir = \"{}\"\nmax_bytes = 10737418240\n[genesys]\nlogin_url = \"{u}\"\napi_url = \"{u}\"\nclient_id = \"bench\"\nclient_secret_file = \"{}\"\nflow_id = \"f\"\n[delivery]\nbreaker_failures = 1\nbreaker_cooldown_ms = 600000\n[mapping]\nalert_id_field = \"alert_id\"\n[admin]\nlisten = \"\"\n[log]\nlevel = \"error\"\n",
        dir.join("wal").display(),
        secret.display(),
        u = sim.base_url()
    );
    Config::parse(&text, std::path::Path::new("<bench>")).expect("bench config")
}

async fn agent(mode: &str, n: usize) -> (f64, u64) {
    let b = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = unreachable_genesys(Duration::from_secs(3600)).await;
    let start_agent = |counters: Arc<Counters>, stop: CancellationToken| {
        let cfg = agent_config(b.port, &sim, dir.path());
        tokio::spawn(
            async move { alertbridge::run_with(cfg, counters, stop.cancelled_owned()).await },
        )
    };
    let wait_acked = |c: Arc<Counters>, target: u64| async move {
        let mut last = Instant::now();
        while c.acked.load(Ordering::Relaxed) < target {
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
        publish(b.port, n, "pub").await;
    }
    let c = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let h = start_agent(c.clone(), stop.clone());
    let started;
    if mode == "backlog" {
        while c.received.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        started = Instant::now();
        wait_acked(c.clone(), n as u64).await;
    } else {
        wait_connected(c.clone()).await;
        started = Instant::now();
        publish(b.port, n, "pub").await;
        wait_acked(c.clone(), n as u64).await;
    }
    let d = started.elapsed();
    let batches = c.batches.load(Ordering::Relaxed);
    stop.cancel();
    let _ = h.await;
    (n as f64 / d.as_secs_f64(), batches)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rt = runtime();
    rt.block_on(async {
        println!("ingest benchmark: {n} QoS1 alerts (~150 B), mosquitto max_inflight_messages={INFLIGHT}, {} CPUs", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        println!("{:<10} {:<44} {:>12} {:>10}", "mode", "consumer", "alerts/s", "batches");
        for mode in ["backlog", "live"] {
            let r = raw(mode, n).await;
            println!("{:<10} {:<44} {:>12.0} {:>10}", mode, "raw rumqttc subscriber (ack at once)", r, "-");
            let (a, batches) = agent(mode, n).await;
            println!("{:<10} {:<44} {:>12.0} {:>10}", mode, "alertbridge (flush + fsync, then ack)", a, batches);
        }
    });
}
