//! Drain throughput and lane latency: the real agent (`alertbridge::run_with`, in-process)
//! delivering a preloaded backlog to the Genesys simulator with 50 ms added latency.
//!
//! `cargo bench --bench drain` (release build, `[profile.bench]`). No MQTT broker: the config
//! points ingest at a closed loopback port, so it only keeps reconnecting (harmless); every alert
//! comes from the log, written straight into the WAL before the agent starts, exactly as ingest
//! would write it (alert id and lane from the configured mapping's `identify`).
//!
//! Two parts:
//! 1. `rate`: delivered/s vs `rate_per_sec` for 5, 50, 200 and 1000/s, `max_in_flight` =
//!    ⌈rate × latency × 2⌉ + 4. Steady state is measured over a fixed window that starts after the
//!    bucket's burst plus one second of deliveries, and is reported as achieved / configured.
//! 2. `backlog`: 100 000 alerts received over the last 10 minutes (an outage), 10 % critical;
//!    rate 1000/s, burst 100, max_in_flight 128. Time to drain, delivered/s, and per lane the time
//!    from agent start to arrival of the accepted request at the simulator (p50/p95/max). Checks
//!    that every alert id was accepted exactly once.
//!
//! Both parts print the store size (sled `size_on_disk`, and the sum of the files' lengths) after
//! the preload and after the agent stopped.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alertbridge::config::Config;
use alertbridge::events::Counters;
use alertbridge_payload::{Mapper, Priority};
use alertbridge_wal::{Appended, Entry, Record, WalStats, PRIORITY_CRITICAL, PRIORITY_NORMAL};
use genesys_sim::{Faults, Sim, SimConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Added latency of every simulator answer.
const LATENCY_MS: u64 = 50;
/// Steady-state window of the rate part.
const WINDOW: Duration = Duration::from_secs(10);
/// Size of the outage backlog.
const BACKLOG: usize = 100_000;
/// Records per preload group commit.
const PRELOAD_CHUNK: usize = 2_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Delivery knobs of one run.
struct Pace {
    rate: f64,
    burst: u32,
    max_in_flight: usize,
}

fn agent_config(mqtt_port: u16, sim: &Sim, dir: &Path, pace: &Pace) -> Config {
    let secret = dir.join("secret");
    std::fs::write(&secret, "bench-secret").expect("secret");
    let text = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"ab-drain-bench\"\n[store]\ndir = \"{}\"\nmax_bytes = 10737418240\n[genesys]\nlogin_url = \"{u}\"\napi_url = \"{u}\"\nclient_id = \"bench\"\nclient_secret_file = \"{}\"\nflow_id = \"f\"\n[delivery]\nrate_per_sec = {:.1}\nburst = {}\nmax_in_flight = {}\n[mapping]\nalert_id_field = \"alert_id\"\n[admin]\nlisten = \"\"\n[log]\nlevel = \"error\"\n",
        dir.join("wal").display(),
        secret.display(),
        pace.rate,
        pace.burst,
        pace.max_in_flight,
        u = sim.base_url()
    );
    Config::parse(&text, Path::new("<bench>")).expect("bench config")
}

async fn start_sim() -> Sim {
    Sim::start(SimConfig {
        client_id: "bench".into(),
        client_secret: "bench-secret".into(),
        faults: Faults {
            latency_ms: LATENCY_MS,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim")
}

/// Sum of the lengths of the files under `dir`.
fn files_len(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => files_len(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What the preload wrote.
struct Preloaded {
    /// alert id → critical lane.
    lanes: HashMap<String, bool>,
    stats: WalStats,
    files: u64,
}

/// Write `n` pending records into the agent's WAL, as ingest would (identity and lane from the
/// mapping), received at `received_at(i)`; alert `i` is critical when `critical(i)`. The WAL is
/// closed again before this returns (the agent's `Wal::open` waits for sled's lock anyway).
async fn preload(
    config: &Config,
    prefix: &'static str,
    n: usize,
    received_at: impl Fn(usize) -> u64 + Send + 'static,
    critical: impl Fn(usize) -> bool + Send + 'static,
) -> Preloaded {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let mapper = Mapper::new(&config.mapping).expect("mapping");
        let wal = alertbridge::open_wal(&config).expect("open wal for preload");
        let mut lanes = HashMap::with_capacity(n);
        let mut i = 0;
        while i < n {
            let end = (i + PRELOAD_CHUNK).min(n);
            let mut batch = Vec::with_capacity(end - i);
            for j in i..end {
                let topic = format!("plant/s{}/alerts/d{}", j % 4, j % 997);
                let level = if critical(j) { "critical" } else { "warning" };
                let payload = format!(
                    r#"{{"alert_id":"{prefix}-{j}","device_id":"SN-{:04}","alert_level":"{level}","reading_value":85.4}}"#,
                    j % 997
                );
                let ident = mapper.identify(&topic, payload.as_bytes());
                assert_eq!(ident.alert_id, format!("{prefix}-{j}"), "mapping identity");
                assert!(
                    mapper.map(&topic, payload.as_bytes()).is_ok(),
                    "payload must map"
                );
                let is_critical = ident.priority == Priority::Critical;
                assert_eq!(is_critical, critical(j), "lane of {level}");
                lanes.insert(ident.alert_id.clone(), is_critical);
                batch.push(Entry::Pending(Record {
                    alert_id: ident.alert_id,
                    topic,
                    payload: payload.into_bytes(),
                    priority: if is_critical {
                        PRIORITY_CRITICAL
                    } else {
                        PRIORITY_NORMAL
                    },
                    received_at_ms: received_at(j),
                    attempts: 0,
                    first_attempt_ms: None,
                    last_attempt_ms: None,
                    next_attempt_ms: 0,
                    last_error: None,
                    mqtt: None,
                }));
            }
            let durable = wal.append_batch(batch).expect("preload append");
            assert!(
                durable
                    .get()
                    .iter()
                    .all(|a| matches!(a, Appended::Pending(_))),
                "every preloaded record is new and pending"
            );
            i = end;
        }
        let stats = wal.stats().expect("stats");
        assert_eq!(stats.pending, n as u64, "preloaded records pending");
        drop(wal);
        Preloaded {
            lanes,
            stats,
            files: files_len(config.store.dir()),
        }
    })
    .await
    .expect("preload task")
}

/// Reopen the (stopped) agent's WAL and read its stats.
async fn store_after(config: &Config) -> (WalStats, u64) {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let wal = alertbridge::open_wal(&config).expect("reopen wal");
        let stats = wal.stats().expect("stats");
        drop(wal);
        (stats, files_len(config.store.dir()))
    })
    .await
    .expect("stats task")
}

type AgentHandle = JoinHandle<Result<(), alertbridge::RunError>>;

fn start_agent(config: &Config) -> (Arc<Counters>, CancellationToken, AgentHandle) {
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let h = tokio::spawn(alertbridge::run_with(
        config.clone(),
        counters.clone(),
        stop.clone().cancelled_owned(),
    ));
    (counters, stop, h)
}

async fn stop_agent(stop: CancellationToken, h: AgentHandle) {
    stop.cancel();
    match h.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("agent failed: {e}"),
        Err(e) => panic!("agent task: {e}"),
    }
}

/// Wait until `delivered` reaches `target`; panics after `limit` or when the agent stopped.
async fn wait_delivered(c: &Counters, h: &AgentHandle, target: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while c.delivered.load(Ordering::Relaxed) < target {
        assert!(!h.is_finished(), "agent stopped early");
        assert!(
            Instant::now() < deadline,
            "only {} of {target} delivered after {limit:?}",
            c.delivered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Accepted ids: (total accepted, unique ids).
fn accepted_ids(sim: &Sim) -> (usize, HashSet<String>) {
    let acc = sim.accepted();
    let total = acc.len();
    (total, acc.into_iter().filter_map(|a| a.alert_id).collect())
}

async fn rate_run(rate: u32) {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pace = Pace {
        rate: f64::from(rate),
        burst: (rate / 10).max(8),
        max_in_flight: (f64::from(rate) * LATENCY_MS as f64 / 1000.0 * 2.0).ceil() as usize + 4,
    };
    let config = agent_config(free_port(), &sim, dir.path(), &pace);
    let n = (rate as usize * 20).max(200);
    let now = unix_ms(SystemTime::now());
    let pre = preload(&config, "r", n, move |_| now, |i| i % 10 == 0).await;

    let (c, stop, h) = start_agent(&config);
    // skip the bucket's burst and one second of deliveries at the configured rate
    let skip = u64::from(pace.burst) + u64::from(rate);
    wait_delivered(&c, &h, skip, Duration::from_secs(120)).await;
    let (t0, d0) = (Instant::now(), c.delivered.load(Ordering::Relaxed));
    tokio::time::sleep(WINDOW).await;
    let (t1, d1) = (Instant::now(), c.delivered.load(Ordering::Relaxed));
    assert!(!h.is_finished(), "agent stopped early");
    let retried = c.retried.load(Ordering::Relaxed);
    stop_agent(stop, h).await;
    let delivered = c.delivered.load(Ordering::Relaxed);
    let (accepted, unique) = accepted_ids(&sim);
    let (after, after_files) = store_after(&config).await;
    assert_eq!(
        after.pending + delivered,
        n as u64,
        "pending + delivered = preloaded"
    );
    let secs = (t1 - t0).as_secs_f64();
    let achieved = (d1 - d0) as f64 / secs;
    println!(
        "{:>6} {:>5} {:>5} {:>7} {:>7.2} {:>7} {:>10.1} {:>7.1}% {:>8} {:>8} {:>6} {:>17} {:>18}",
        rate,
        pace.burst,
        pace.max_in_flight,
        n,
        secs,
        d1 - d0,
        achieved,
        achieved / f64::from(rate) * 100.0,
        accepted,
        accepted - unique.len(),
        retried,
        format!(
            "{:.1}/{:.1}",
            mib(pre.stats.size_on_disk),
            mib(after.size_on_disk)
        ),
        format!("{:.1}/{:.1}", mib(pre.files), mib(after_files)),
    );
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

async fn backlog_run() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pace = Pace {
        rate: 1000.0,
        burst: 100,
        max_in_flight: 128,
    };
    let config = agent_config(free_port(), &sim, dir.path(), &pace);
    let outage_ms = 10 * 60 * 1000;
    let now = unix_ms(SystemTime::now());
    let t_pre = Instant::now();
    let pre = preload(
        &config,
        "b",
        BACKLOG,
        move |i| now - outage_ms + (i as u64 * outage_ms) / BACKLOG as u64,
        |i| i % 10 == 0,
    )
    .await;
    let preload_time = t_pre.elapsed();
    println!(
        "preloaded {} alerts ({} critical) in {:.1} s; store: size_on_disk {:.1} MiB, files {:.1} MiB",
        pre.stats.pending,
        pre.stats.pending_critical,
        preload_time.as_secs_f64(),
        mib(pre.stats.size_on_disk),
        mib(pre.files)
    );

    let start_sys = SystemTime::now();
    let start = Instant::now();
    let (c, stop, h) = start_agent(&config);
    wait_delivered(&c, &h, BACKLOG as u64, Duration::from_secs(1800)).await;
    let drained = start.elapsed();
    let retried = c.retried.load(Ordering::Relaxed);
    let dead = c.dead_lettered.load(Ordering::Relaxed);
    stop_agent(stop, h).await;

    let acc = sim.accepted();
    let total = acc.len();
    let mut seen = HashSet::with_capacity(BACKLOG);
    let mut lat_critical = Vec::with_capacity(BACKLOG / 10);
    let mut lat_normal = Vec::with_capacity(BACKLOG);
    let mut first_at = None::<SystemTime>;
    let mut last_at = None::<SystemTime>;
    for a in &acc {
        let id = a.alert_id.clone().expect("accepted launch carries alertId");
        let critical = *pre.lanes.get(&id).expect("accepted id was preloaded");
        let ms =
            a.at.duration_since(start_sys)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
        if critical {
            lat_critical.push(ms);
        } else {
            lat_normal.push(ms);
        }
        first_at = Some(first_at.map_or(a.at, |f| f.min(a.at)));
        last_at = Some(last_at.map_or(a.at, |l| l.max(a.at)));
        seen.insert(id);
    }
    lat_critical.sort_unstable();
    lat_normal.sort_unstable();
    let (after, after_files) = store_after(&config).await;
    let span = match (first_at, last_at) {
        (Some(f), Some(l)) => l.duration_since(f).unwrap_or_default(),
        _ => Duration::ZERO,
    };

    println!(
        "drained {} in {:.1} s from agent start: {:.0} delivered/s overall; first→last acceptance {:.1} s: {:.0}/s; retried {retried}, dead-lettered {dead}",
        c.delivered.load(Ordering::Relaxed),
        drained.as_secs_f64(),
        BACKLOG as f64 / drained.as_secs_f64(),
        span.as_secs_f64(),
        BACKLOG as f64 / span.as_secs_f64().max(1e-9),
    );
    let first_ms = first_at
        .and_then(|f| f.duration_since(start_sys).ok())
        .map_or(0, |d| d.as_millis());
    println!("first acceptance {first_ms} ms after agent start (WAL open, queue load, token)");
    println!(
        "{:<10} {:>7} {:>10} {:>10} {:>10}",
        "lane", "count", "p50 ms", "p95 ms", "max ms"
    );
    for (lane, v) in [("critical", &lat_critical), ("normal", &lat_normal)] {
        println!(
            "{:<10} {:>7} {:>10} {:>10} {:>10}",
            lane,
            v.len(),
            pct(v, 0.50),
            pct(v, 0.95),
            v.last().copied().unwrap_or(0)
        );
    }
    let missing = pre.lanes.keys().filter(|id| !seen.contains(*id)).count();
    println!(
        "exactly once: accepted {total}, unique alert ids {} of {BACKLOG}, duplicates {}, missing {missing} -> {}",
        seen.len(),
        total - seen.len(),
        if seen.len() == BACKLOG && total == BACKLOG && missing == 0 {
            "OK"
        } else {
            "FAILED"
        }
    );
    println!(
        "store after: pending {}, dead letters {}, receipts kept {}; size_on_disk {:.1} MiB -> {:.1} MiB, files {:.1} MiB -> {:.1} MiB",
        after.pending,
        after.dead_letters,
        after.delivered_kept,
        mib(pre.stats.size_on_disk),
        mib(after.size_on_disk),
        mib(pre.files),
        mib(after_files)
    );
    assert_eq!(seen.len(), BACKLOG, "every alert delivered");
    assert_eq!(total, BACKLOG, "no alert delivered twice");
}

fn main() {
    alertbridge::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    rt.block_on(async {
        println!(
            "drain benchmark: genesys-sim with {LATENCY_MS} ms added latency, {cpus} CPUs, steady window {} s",
            WINDOW.as_secs()
        );
        println!("\n1. delivered/s vs configured rate (after burst + 1 s)");
        println!(
            "{:>6} {:>5} {:>5} {:>7} {:>7} {:>7} {:>10} {:>8} {:>8} {:>8} {:>6} {:>17} {:>18}",
            "rate/s", "burst", "inflt", "preload", "window", "deliv", "achieved/s", "of rate",
            "accepted", "dups", "retry", "sled MiB pre/post", "files MiB pre/post"
        );
        for rate in [5, 50, 200, 1000] {
            rate_run(rate).await;
        }
        println!(
            "\n2. backlog: {BACKLOG} alerts from a 10-minute outage, 10 % critical; rate 1000/s, burst 100, max_in_flight 128"
        );
        backlog_run().await;
    });
}
