//! `alertbridge demo`: the product on its embedded default, no broker or Genesys account needed.
//!
//! Starts an in-process MQTT broker (rumqttd) and the Genesys simulator, runs the real agent
//! against them, simulates a plant (a trickle, then a mass-failure burst of thousands of alerts
//! in about a second, mixed severities, a few malformed payloads), makes the simulator throw a
//! 503 storm and a short outage in the middle, shows live progress and ends with a report that
//! checks `lost = 0` against what the broker acknowledged to the publisher.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use genesys_sim::{Faults, Sim, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::Counters;
use plant::Plant;

pub mod plant;

/// Demo knobs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Alerts in the mass-failure burst.
    pub burst: usize,
    /// Keep the log here (default: a temporary directory).
    pub store: Option<PathBuf>,
}

/// The final report.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Alerts the broker acknowledged to the plant's publishers.
    pub published_acked: usize,
    /// Distinct alerts Genesys accepted.
    pub delivered_unique: usize,
    /// Accepted more than once.
    pub duplicates: usize,
    /// In dead letters.
    pub dead_letters: usize,
    /// Acked by the broker but neither delivered nor dead-lettered.
    pub lost: usize,
}

const DEMO_FLOW: &str = "demo-maintenance-callout";

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn start_broker(port: u16) -> anyhow::Result<()> {
    let toml_text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let cfg: rumqttd::Config = toml::from_str(&toml_text).context("embedded broker config")?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("starting the embedded broker")?;
    // wait until it listens
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("embedded broker did not start listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn demo_config(broker_port: u16, sim_url: &str, dir: &std::path::Path) -> anyhow::Result<Config> {
    let secret = dir.join("genesys-client-secret");
    std::fs::write(&secret, "demo-secret\n").context("writing the demo secret file")?;
    let text = format!(
        r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "alertbridge-demo"
topics = ["plant/+/alerts/#"]

[store]
dir = "{store}"

[genesys]
login_url = "{sim_url}"
api_url = "{sim_url}"
client_id = "demo-client"
client_secret_file = "{secret}"
target = "workflow"
flow_id = "{DEMO_FLOW}"
request_timeout_secs = 2

[delivery]
rate_per_sec = 1500.0
burst = 100
max_in_flight = 32
backoff_initial_ms = 200
backoff_max_ms = 2000
breaker_failures = 50
breaker_cooldown_ms = 500

[mapping]
alert_id_field = "alert_id"

[admin]
listen = ""
"#,
        store = dir.join("wal").display(),
        secret = secret.display(),
    );
    Ok(Config::parse(&text, std::path::Path::new("<demo>"))?)
}

struct Progress {
    tty: bool,
    last: Instant,
}

impl Progress {
    fn show(&mut self, phase: &str, plant: &Plant, c: &Counters, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        };
        if !force && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let s = c.snapshot();
        let line = format!(
            "[{phase:<22}] published {:>6}  persisted {:>6}  delivered {:>6}  retries {:>5}  dead-lettered {:>3}  breaker {}",
            plant.sent(),
            s.persisted,
            s.delivered,
            s.retried,
            s.dead_lettered,
            if s.breaker_open { "OPEN  " } else { "closed" },
        );
        let mut out = std::io::stdout();
        if self.tty {
            let _ = write!(out, "\r{line}");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// Run the demo and print its report.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    crate::install_crypto_provider();
    let tmp;
    let dir = match &opts.store {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempdir()?;
            tmp.0.clone()
        }
    };
    println!(
        "alertbridge demo: embedded MQTT broker + Genesys simulator + a plant of {} devices",
        1000
    );
    let broker_port = free_port()?;
    start_broker(broker_port)?;
    let sim = Sim::start(SimConfig {
        client_id: "demo-client".into(),
        client_secret: "demo-secret".into(),
        token_ttl: Duration::from_secs(8),
        known_flow_ids: Some(vec![DEMO_FLOW.into()]),
        faults: Faults {
            latency_ms: 3,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .context("starting the Genesys simulator")?;
    let config = demo_config(broker_port, &sim.base_url(), &dir)?;
    println!("  broker    mqtt://127.0.0.1:{broker_port}");
    println!(
        "  genesys   {} (simulated; tokens expire every 8 s)",
        sim.base_url()
    );
    println!("  log       {}", dir.join("wal").display());

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let agent = {
        let counters = counters.clone();
        let stop = stop.clone();
        tokio::spawn(async move { crate::run_with(config, counters, stop.cancelled_owned()).await })
    };
    // wait for the agent's subscriptions (the SUBACK, not just the connection)
    let t0 = Instant::now();
    while !counters.snapshot().subscribed() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let plant_cancel = CancellationToken::new();
    let (mut plant, plant_task) = Plant::connect(broker_port, "demo-plant", plant_cancel.clone());
    let mut progress = Progress {
        tty: std::io::stdout().is_terminal(),
        last: Instant::now(),
    };
    let mut rng = fastrand::Rng::with_seed(7);
    let started = Instant::now();

    // Phase 1: normal operation, a trickle.
    let mut n = 0;
    for _ in 0..200 {
        let (t, b, id) = plant::alert(n, &mut rng);
        plant.publish(t, b, id).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        progress.show("normal operation", &plant, &counters, false);
    }
    // A device with broken firmware.
    plant.publish_malformed(b"TEMP=85.4;ALARM").await?;
    plant
        .publish_malformed(b"[\"not\", \"an\", \"object\"]")
        .await?;
    plant.publish_malformed(b"\xff\xfe\x00garbage").await?;

    // Phase 2: power surge, the whole warehouse alarms within a second; Genesys struggles.
    sim.update_faults(|f| f.error_rate_503 = 0.3);
    let burst_start = Instant::now();
    let per_ms = (opts.burst / 1000).max(1);
    for i in 0..opts.burst {
        let (t, b, id) = plant::alert(n, &mut rng);
        plant.publish(t, b, id).await?;
        n += 1;
        if i % per_ms == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if burst_start.elapsed() > Duration::from_millis(700) && sim.faults().outage_until.is_none()
        {
            sim.outage_for(Duration::from_secs(3));
        }
        progress.show("MASS FAILURE + 503s", &plant, &counters, false);
    }
    if sim.faults().outage_until.is_none() {
        sim.outage_for(Duration::from_secs(3));
    }
    let outage_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < outage_end {
        progress.show("GENESYS OUTAGE", &plant, &counters, false);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.set_faults(Faults {
        latency_ms: 3,
        ..Faults::default()
    });

    // Phase 3: recovery; wait until everything the broker acked is accounted for.
    let expected = n + plant.malformed();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = counters.snapshot();
        let acked = plant.acked_count();
        if acked >= expected && (s.delivered + s.dead_lettered) as usize >= expected {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        progress.show("recovery / draining", &plant, &counters, false);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.show("done", &plant, &counters, true);
    println!();
    let elapsed = started.elapsed();

    stop.cancel();
    agent.await.context("agent task")??;
    plant_cancel.cancel();
    let _ = plant_task.await;

    // Account for every acked alert: delivered (the simulator saw it) or dead-lettered (the log).
    let accepted = sim.accepted();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for a in &accepted {
        if let Some(id) = &a.alert_id {
            if !seen.insert(id.clone()) {
                duplicates += 1;
            }
        }
    }
    let cfg_dir = dir.join("wal");
    let wal = alertbridge_wal::Wal::open(alertbridge_wal::WalConfig {
        dir: cfg_dir,
        ..Default::default()
    })?;
    let dead: Vec<_> = wal.dead_letters().filter_map(|d| d.ok()).collect();
    let acked = plant.acked_ids();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !id.starts_with("malformed-") && !seen.contains(*id))
        .collect();
    let malformed_dead = dead
        .iter()
        .filter(|d| d.reason.kind == alertbridge_wal::DeadKind::Malformed)
        .count();
    let lost_malformed = plant.malformed().saturating_sub(malformed_dead);
    let s = counters.snapshot();
    let stats = sim.stats();
    let p = counters.latency_percentiles(&[50.0, 95.0, 99.0, 100.0]);
    let report = DemoReport {
        published_acked: acked.len(),
        delivered_unique: seen.len(),
        duplicates,
        dead_letters: dead.len(),
        lost: lost.len() + lost_malformed,
    };

    println!(
        "\n=== alertbridge demo report ({:.1} s) ===",
        elapsed.as_secs_f64()
    );
    println!(
        "published by the plant, acked by the broker  {:>7}",
        report.published_acked
    );
    println!(
        "persisted to the log (group commits: {:>5})   {:>7}",
        s.batches, s.persisted
    );
    println!(
        "delivered to Genesys (distinct alerts)      {:>7}",
        report.delivered_unique
    );
    println!(
        "delivered twice (at-least-once duplicates)  {:>7}",
        report.duplicates
    );
    println!(
        "dead letters (malformed payloads)           {:>7}",
        report.dead_letters
    );
    println!(
        "retries (503 storm + outage)                {:>7}",
        s.retried
    );
    println!(
        "LOST                                         {:>7}",
        report.lost
    );
    println!(
        "latency received→accepted  p50 {} ms  p95 {} ms  p99 {} ms  max {} ms",
        p[0], p[1], p[2], p[3]
    );
    println!(
        "Genesys saw: {} token requests, {} API requests, answers {:?}",
        stats.token_requests, stats.api_requests, stats.by_status
    );
    for d in dead.iter().take(3) {
        println!(
            "  dead letter #{}: {:?}: {}",
            d.id, d.reason.kind, d.reason.message
        );
    }
    if let Some(first) = accepted.first() {
        println!("example request body Genesys received:\n  {}", first.body);
    }
    if report.lost == 0 {
        println!("result: no alert lost, none dropped silently.");
    } else {
        println!(
            "result: {} alert(s) LOST: {:?}",
            report.lost,
            lost.iter().take(10).collect::<Vec<_>>()
        );
    }
    sim.shutdown().await;
    Ok(report)
}

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let p = std::env::temp_dir().join(format!(
        "alertbridge-demo-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(TempDir(p))
}
