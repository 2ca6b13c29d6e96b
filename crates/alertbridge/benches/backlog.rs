//! Backlog at edge scale (issue 10): what N pending alerts cost the agent in memory, disk writes,
//! disk space and restart time, beside mosquitto's QoS 1 ceiling measured in the same run.
//!
//! ```sh
//! cargo bench --bench backlog                      # N = 20000 200000, both modes
//! cargo bench --bench backlog -- 1000000 --mode backlog
//! ```
//!
//! Positional numbers are the N to run (default `20000 200000`); `--mode backlog|live|both`
//! (default both, backlog first); `--rate R` paces the live mode's publisher (raw and agent
//! alike) to R alerts/s instead of as fast as it can, e.g. below the agent's ingest rate so the
//! broker never piles up unacked publishes on the agent. Bounds for large N (a partial row is
//! printed when one hits): `BACKLOG_MAX_INGEST_SECS` (default 900) and `BACKLOG_MAX_RSS_MB`
//! (default 1024).
//! `BACKLOG_AGENT_WRAPPER` runs the agent under a profiler, e.g.
//! `BACKLOG_AGENT_WRAPPER="heaptrack -o /tmp/ht-{run}"` (`{run}` becomes `backlog-200000-ingest`,
//! `…-restart`); the agent's pid is then found among the wrapper's descendants by its name.
//! `BACKLOG_AGENT_WRAPPER_FOR=restart` wraps only the starts whose name contains that text.
//!
//! # What runs
//!
//! - The **real agent binary**, `CARGO_BIN_EXE_alertbridge` (cargo builds it with the bench
//!   profile: the release profile, LTO, one codegen unit, symbols kept), as a separate process,
//!   so RSS (`/proc/<pid>/status`) and disk writes (`/proc/<pid>/io`) are the agent's alone.
//!   Its config is TOML written into a tempdir: `store.max_bytes` 4 GiB, every other store key
//!   at its default (`cache_capacity_bytes` 16 MiB, `dedup_window` 100 000, `batch_max` 512),
//!   JSON logs at `info`, the status endpoint on a free loopback port.
//! - Its own **mosquitto** per (mode, N) on a free port (persistence on, data dir chmod 0777
//!   because mosquitto started as root drops to user `mosquitto`, `max_inflight_messages`
//!   [`INFLIGHT`], `max_queued_messages` 10 M).
//! - **Genesys is unreachable**: an in-process genesys-sim in a 24-hour outage (503 to token and
//!   API calls) with `breaker_failures = 1` and a 10-minute cool-down, so the drain delivers
//!   nothing and its breaker opens on the first attempt. The simulator's request log also tells
//!   when a restarted agent first tried to deliver.
//! - **Alerts**: N unique JSON objects of exactly [`PAYLOAD_BYTES`] bytes (`alert_id`,
//!   `device_id`, `sensor_type`, `alert_level` — every tenth critical —, `reading_value`,
//!   `timestamp_ms`, and a `text` of words padding to the size), on
//!   `plant/north/alerts/<device>`, published QoS 1 by an in-process rumqttc client (1000 in
//!   flight).
//!
//! # Modes
//!
//! - `backlog`: the agent's and the raw subscriber's persistent sessions are registered, both go
//!   offline, N are published once (the broker queues them for both sessions), then the raw
//!   subscriber drains its copy, then the agent is started and drains its own.
//! - `live`: the raw subscriber (clean session) is connected while N are published as fast as the
//!   publisher can; then the agent (empty store) is started, and once it is ready N more unique
//!   alerts are published the same way.
//!
//! # Columns
//!
//! - **RSS peak** / **RSS end**: `VmRSS` sampled every 100 ms from spawn until the status endpoint
//!   shows `acked ≥ N`; the peak is the larger of the sampled maximum and `VmHWM`.
//! - **written B/alert**: `write_bytes` of `/proc/<pid>/io` (bytes this process caused to be sent
//!   to the block layer; ext4's journal, written by jbd2, is not in it) at the end of ingest minus
//!   the value at the start (backlog: process start, so the store open is included; live: once
//!   ready), ÷ N, and ÷ the stored record (`data_bytes ÷ pending` from `/status`).
//! - **store B/alert**: the sum of the lengths of the files under the store dir at the end of
//!   ingest ÷ N (and ÷ the stored record).
//! - **ingest/s**: N ÷ (time the status endpoint first shows `received > 0` → time it shows
//!   `acked ≥ N`), polled every 20 ms. **raw/s**: the same N through a rumqttc subscriber that
//!   acks each publish at once (first publish → N-th), same broker and (backlog) same queued
//!   messages. **ratio** = ingest/s ÷ raw/s.
//! - **restart**: SIGTERM, wait for the exit, spawn on the same store. Ready = the status
//!   endpoint shows `connected`, the subscription stands (the log says `subscribed`, or, for the
//!   resumed persistent session of every restart here, `session_present=true`: the broker kept
//!   the subscription and the agent does not subscribe again), and the simulator logged a
//!   request from the new process (the drain is picking alerts again); the time is the latest
//!   of the three, from spawn, polled every 10 ms. RSS is read at that moment and 5 s later; the
//!   restart peak is `VmHWM`.
//! - **idle**: the agent on an empty store, connected and subscribed, nothing flowing, 5 s later.
//!
//! Nothing here asserts: it prints one Markdown table, then one line of details per row:
//! `wchar` (bytes handed to write calls) beside `write_bytes`, `write_bytes` by thread name,
//! RssAnon / RssFile, group commits, the status counters at the end of ingest (received,
//! persisted, duplicates, stale acks skipped, connections lost, pending), the most publishes
//! the agent held unacked, and the restart milestones (status up, connected, subscribed, first
//! delivery attempt).
//!
//! # Reading it
//!
//! When the broker can send faster than the agent acks (backlog mode, or live mode with an
//! unpaced publisher), mosquitto does not hold the agent to `max_inflight_messages`: the agent
//! holds the unacked publishes in memory, which then dominate "RSS during ingest". If that lasts
//! longer than the keep-alive, the connection drops, the withheld acks make the broker redeliver,
//! and the store holds more than N records (the N column then says how many). Use `--rate`
//! below the ingest rate to measure the store alone.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use genesys_sim::Sim;
use serde_json::Value;

mod agent;
// This bench speaks MQTT 3.1.1 only; the MQTT 5 side of the shared module is the ingest
// bench's, which compiles it with dead-code warnings on.
#[allow(dead_code)]
mod broker;
mod measure;
use agent::*;
use broker::{broker, raw_subscriber, runtime, unreachable_genesys, Protocol, INFLIGHT};
use measure::*;
/// Size of every alert payload, bytes.
const PAYLOAD_BYTES: usize = 250;
/// Status endpoint polling period while ingesting.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long after "ready" the second RSS reading is taken (and the idle reading).
const SETTLE: Duration = Duration::from_secs(5);
/// Give up waiting for a restarted agent to be ready after this long.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// alerts and their publisher

/// Alert `i` of a run: (topic, payload of exactly [`PAYLOAD_BYTES`]).
fn alert(prefix: &str, i: usize) -> (String, String) {
    let device = format!("SN-north-{:04}", i % 997);
    let head = format!(
        r#"{{"alert_id":"{prefix}-{i:08}","device_id":"{device}","sensor_type":"temperature_probe","alert_level":"{}","reading_value":{}.{},"timestamp_ms":{},"text":""#,
        if i % 10 == 0 { "critical" } else { "warning" },
        60 + i % 40,
        i % 10,
        1_678_892_340_000u64 + i as u64,
    );
    // words, not one long run: the mapping strips binary-looking (base64-like) strings
    let words = "probe reading above threshold on line four; ".repeat(6);
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    let body = format!("{head}{}\"}}", &words[..pad.min(words.len())]);
    (format!("plant/north/alerts/{device}"), body)
}

/// Publish alerts `0..n` of `prefix` at QoS 1 (paced to `rate` alerts/s when given); returns the
/// time from the first publish queued to the last PUBACK.
async fn publish(port: u16, prefix: &str, n: usize, rate: Option<f64>) -> Duration {
    let owned = prefix.to_string();
    let id = format!("pub-{prefix}");
    broker::publish(port, Protocol::V311, &id, n, rate, move |i| {
        alert(&owned, i)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// the agent process and /proc

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Backlog,
    Live,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Backlog => "backlog",
            Mode::Live => "live",
        }
    }
}

/// Bounds for one ingest.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_ingest: Duration,
    max_rss_kb: u64,
}

#[derive(Debug, Default)]
struct Row {
    label: String,
    n: usize,
    /// Alerts acked when ingest ended (< n when a bound stopped it).
    acked: u64,
    stopped_by: Option<String>,
    rss_peak_kb: u64,
    rss_end_kb: u64,
    rss_ready_kb: Option<u64>,
    rss_settled_kb: Option<u64>,
    restart_peak_kb: Option<u64>,
    ready: Ready,
    write_bytes: u64,
    wchar: u64,
    record_bytes: f64,
    store_bytes: u64,
    store_alloc: u64,
    ingest_rate: f64,
    raw_rate: Option<f64>,
    publish_rate: Option<f64>,
    end_mem: Mem,
    batches: u64,
    /// Status counters at the end of ingest: received, persisted, duplicates, stale acks
    /// skipped, and the pending count.
    received: u64,
    persisted: u64,
    duplicates: u64,
    stale: u64,
    pending: u64,
    reconnects: usize,
    /// Largest `received − acked − stale acks skipped` seen while polling: publishes the agent
    /// held unacked (the broker's window as the agent saw it).
    max_unacked: u64,
    /// `write_bytes` by thread name at the end of ingest (live threads only).
    writes_by_thread: Vec<(String, u64)>,
    shutdown: Option<Duration>,
    pending_after_restart: Option<u64>,
    note: String,
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn opt_mb(kb: Option<u64>) -> String {
    kb.map(mb).unwrap_or_else(|| "-".into())
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{}", d.as_millis()))
        .unwrap_or_else(|| "-".into())
}

impl Row {
    /// Per-alert figures divide by the unique alerts acked: N, or fewer for a partial row.
    fn per_alert(&self) -> f64 {
        self.acked.min(self.n as u64).max(1) as f64
    }

    fn print_row(&self) {
        let n = if self.n == 0 {
            "0".to_string()
        } else if self.acked < self.n as u64 {
            format!("{} of {} (partial)", self.acked, self.n)
        } else {
            self.n.to_string()
        };
        // redeliveries stored again (beyond the duplicate window) show as extra pending
        let n = if self.n > 0 && self.pending != self.n as u64 {
            format!("{n}, {} stored", self.pending)
        } else {
            n
        };
        let restart = match (self.rss_ready_kb, self.rss_settled_kb) {
            (Some(a), Some(b)) => format!(
                "{} / {} (peak {})",
                mb(a),
                mb(b),
                opt_mb(self.restart_peak_kb)
            ),
            _ => "-".into(),
        };
        let (wpa, spa) = if self.n == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            let w = self.write_bytes as f64 / self.per_alert();
            let s = self.store_bytes as f64 / self.per_alert();
            (
                format!("{w:.0} ({:.1}×)", w / self.record_bytes.max(1.0)),
                format!("{s:.0} ({:.1}×)", s / self.record_bytes.max(1.0)),
            )
        };
        let rate = if self.n == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", self.ingest_rate)
        };
        let raw = self
            .raw_rate
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "-".into());
        let ratio = self
            .raw_rate
            .filter(|_| self.n > 0)
            .map(|r| format!("{:.2}", self.ingest_rate / r))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.label,
            n,
            mb(self.rss_peak_kb),
            mb(self.rss_end_kb),
            restart,
            ms(self.ready.ready),
            wpa,
            spa,
            rate,
            raw,
            ratio
        );
    }

    fn print_details(&self) {
        let n = self.n;
        println!(
            "- {} N={n}: record {:.0} B (data_bytes/pending); write_bytes {} B, wchar {} B ({:.0} B/alert); store files {} B, allocated {} B; \
             RSS at end: anon {} MB, file {} MB, VmHWM {} MB; group commits {}; publisher {}/s; \
             at the end of ingest: received {}, persisted {}, duplicates {}, stale acks skipped {}, broker connections lost {}, pending {}; \
             most publishes held unacked {}; write_bytes by thread (process lifetime) {}; \
             start milestones (ms from spawn): status {}, connected {}, subscribed {}, first delivery attempt {}; \
             shutdown before restart {} ms; pending after restart {}{}{}",
            self.label,
            self.record_bytes,
            self.write_bytes,
            self.wchar,
            self.wchar as f64 / self.per_alert(),
            self.store_bytes,
            self.store_alloc,
            mb(self.end_mem.anon),
            mb(self.end_mem.file),
            mb(self.end_mem.hwm),
            self.batches,
            self.publish_rate
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into()),
            self.received,
            self.persisted,
            self.duplicates,
            self.stale,
            self.reconnects,
            self.pending,
            self.max_unacked,
            if self.writes_by_thread.is_empty() {
                "-".to_string()
            } else {
                self.writes_by_thread
                    .iter()
                    .map(|(t, b)| format!("{t}={b}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            ms(self.ready.status),
            ms(self.ready.connected),
            ms(self.ready.subscribed),
            ms(self.ready.first_attempt),
            ms(self.shutdown),
            self.pending_after_restart
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            self.stopped_by
                .as_ref()
                .map(|s| format!("; STOPPED: {s}"))
                .unwrap_or_default(),
            if self.note.is_empty() {
                String::new()
            } else {
                format!("; {}", self.note)
            },
        );
    }
}

fn progress(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "[backlog] {msg}");
}

/// Agent on an empty store, connected, nothing flowing: RSS 5 s after ready.
async fn idle(sim: &Sim) -> Row {
    let b = broker();
    let mut home = AgentHome::new(b.port, sim);
    let mut agent = home.spawn("idle");
    let sampler = Sampler::start(agent.pid);
    let ready = wait_ready(&agent, sim, false, Duration::from_secs(30)).await;
    tokio::time::sleep(SETTLE).await;
    let m = mem_of(agent.pid).unwrap_or_default();
    let io = io_of(agent.pid);
    let (store, alloc) = dir_bytes(&home.store);
    let row = Row {
        label: "idle".into(),
        n: 0,
        rss_peak_kb: sampler.max_kb().max(m.hwm),
        rss_end_kb: m.rss,
        ready,
        write_bytes: io.get("write_bytes").copied().unwrap_or(0),
        wchar: io.get("wchar").copied().unwrap_or(0),
        store_bytes: store,
        store_alloc: alloc,
        end_mem: m,
        note: "idle: RSS end = 5 s after ready; restart-to-ready = spawn → connected + subscribed on an empty store".into(),
        ..Row::default()
    };
    drop(sampler);
    let (d, _) = agent.stop();
    progress(&format!("idle done (stop {} ms)", d.as_millis()));
    row
}

/// Register the agent's persistent session: start it, wait until subscribed, stop it.
async fn register_agent(home: &mut AgentHome, sim: &Sim, run: &str) {
    let mut a = home.spawn(&format!("{run}-register"));
    let r = wait_ready(&a, sim, false, Duration::from_secs(30)).await;
    assert!(
        r.ready.is_some(),
        "the agent did not subscribe:\n{}",
        a.logs()
    );
    let (_, code) = a.stop();
    assert_eq!(code, Some(0), "agent exit: {}", a.logs());
}

async fn run_one(mode: Mode, n: usize, sim: &Sim, limits: Limits, rate: Option<f64>) -> Row {
    let run = format!("{}-{n}", mode.name());
    let b = broker();
    let mut home = AgentHome::new(b.port, sim);
    let mut row = Row {
        label: match rate {
            Some(r) if mode == Mode::Live => format!("live, paced {r:.0}/s"),
            _ => mode.name().into(),
        },
        n,
        ..Row::default()
    };

    // raw subscriber, and (backlog) the messages queued for both sessions
    let raw_id = format!("raw-{run}");
    let agent;
    let io0;
    if mode == Mode::Backlog {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        raw_subscriber(b.port, Protocol::V311, &raw_id, false, 0, tx).await;
        register_agent(&mut home, sim, &run).await;
        progress(&format!("{run}: publishing {n}"));
        let d = publish(b.port, "bl", n, None).await;
        row.publish_rate = Some(n as f64 / d.as_secs_f64());
        progress(&format!(
            "{run}: published in {:.1} s; raw subscriber",
            d.as_secs_f64()
        ));
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let d = raw_subscriber(b.port, Protocol::V311, &raw_id, false, n, tx).await;
        row.raw_rate = Some(n as f64 / d.as_secs_f64());
        progress(&format!(
            "{run}: raw {:.0}/s; agent",
            n as f64 / d.as_secs_f64()
        ));
        agent = home.spawn(&format!("{run}-ingest"));
        io0 = HashMap::new(); // from process start: the store open is included
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn({
            let (port, id) = (b.port, raw_id.clone());
            async move { raw_subscriber(port, Protocol::V311, &id, true, n, tx).await }
        });
        let _ = rx.await;
        progress(&format!("{run}: raw subscriber live"));
        publish(b.port, "raw", n, rate).await;
        let d = h.await.expect("raw subscriber");
        row.raw_rate = Some(n as f64 / d.as_secs_f64());
        progress(&format!(
            "{run}: raw {:.0}/s; agent",
            n as f64 / d.as_secs_f64()
        ));
        agent = home.spawn(&format!("{run}-ingest"));
        let r = wait_ready(&agent, sim, false, Duration::from_secs(30)).await;
        assert!(r.ready.is_some(), "agent not ready:\n{}", agent.logs());
        io0 = io_of(agent.pid);
    }
    let sampler = Sampler::start(agent.pid);
    let publisher = (mode == Mode::Live).then(|| {
        let port = b.port;
        tokio::spawn(async move { publish(port, "lv", n, rate).await })
    });

    // ingest: first received → acked ≥ n
    let t_spawn = Instant::now();
    let mut started: Option<Instant> = None;
    let mut last = None;
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    loop {
        let st = agent.status().await;
        let now = Instant::now();
        if let Some(st) = &st {
            if started.is_none() && counter(st, "received") > 0 {
                started = Some(now);
            }
            row.max_unacked = row.max_unacked.max(
                counter(st, "received")
                    .saturating_sub(counter(st, "acked") + counter(st, "stale_acks_skipped")),
            );
            if counter(st, "acked") >= n as u64 {
                last = Some(st.clone());
                break;
            }
            last = Some(st.clone());
        }
        let rss = sampler.last_kb();
        if rss > limits.max_rss_kb {
            row.stopped_by = Some(format!("RSS {} MB > {} MB", mb(rss), mb(limits.max_rss_kb)));
        } else if now.duration_since(t_spawn) > limits.max_ingest {
            row.stopped_by = Some(format!("ingest over {} s", limits.max_ingest.as_secs()));
        }
        if row.stopped_by.is_some() {
            break;
        }
        if now > next_progress {
            next_progress = now + Duration::from_secs(10);
            let c = |k| last.as_ref().map(|s| counter(s, k)).unwrap_or(0);
            let el = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            progress(&format!(
                "{run}: {el:.0} s: received {} persisted {} acked {} stale {} duplicates {}, RSS {} MB",
                c("received"),
                c("persisted"),
                c("acked"),
                c("stale_acks_skipped"),
                c("duplicates"),
                mb(rss)
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let t_end = Instant::now();
    let m = mem_of(agent.pid).unwrap_or_default();
    let io1 = io_of(agent.pid);
    row.writes_by_thread = write_bytes_by_thread(agent.pid);
    let st = last.unwrap_or(Value::Null);
    row.acked = counter(&st, "acked");
    row.batches = counter(&st, "batches");
    row.received = counter(&st, "received");
    row.persisted = counter(&st, "persisted");
    row.duplicates = counter(&st, "duplicates");
    row.stale = counter(&st, "stale_acks_skipped");
    row.reconnects = agent.logs().matches("broker connection lost").count();
    row.ingest_rate = row.acked as f64
        / t_end
            .duration_since(started.unwrap_or(t_spawn))
            .as_secs_f64();
    let pending = st["pending"].as_u64().unwrap_or(0);
    row.pending = pending;
    let data = st["data_bytes"].as_u64().unwrap_or(0);
    row.record_bytes = if pending > 0 {
        data as f64 / pending as f64
    } else {
        0.0
    };
    let delta = |k: &str| {
        io1.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(io0.get(k).copied().unwrap_or(0))
    };
    row.write_bytes = delta("write_bytes");
    row.wchar = delta("wchar");
    (row.store_bytes, row.store_alloc) = dir_bytes(&home.store);
    row.rss_peak_kb = sampler.max_kb().max(m.hwm);
    row.rss_end_kb = m.rss;
    row.end_mem = m;
    drop(sampler);
    if counter(&st, "delivered") > 0 {
        row.note = format!(
            "DRAIN DELIVERED {} (should be 0)",
            counter(&st, "delivered")
        );
    }
    if let Some(p) = publisher {
        match tokio::time::timeout(Duration::from_secs(5), p).await {
            Ok(Ok(d)) => row.publish_rate = Some(n as f64 / d.as_secs_f64()),
            _ => progress(&format!("{run}: publisher still running at stop")),
        }
    }
    progress(&format!(
        "{run}: ingest {:.0}/s, acked {}, RSS peak {} MB end {} MB; restart",
        row.ingest_rate,
        row.acked,
        mb(row.rss_peak_kb),
        mb(row.rss_end_kb)
    ));

    // restart on the same store
    let mut agent = agent;
    let (d, code) = agent.stop();
    row.shutdown = Some(d);
    if code != Some(0) {
        row.note
            .push_str(&format!(" first agent exit code {code:?};"));
    }
    drop(agent);
    let agent = home.spawn(&format!("{run}-restart"));
    let sampler = Sampler::start(agent.pid);
    let ready = wait_ready(&agent, sim, true, READY_TIMEOUT).await;
    row.rss_ready_kb = mem_of(agent.pid).map(|m| m.rss);
    row.ready = ready;
    tokio::time::sleep(SETTLE).await;
    let m = mem_of(agent.pid).unwrap_or_default();
    row.rss_settled_kb = Some(m.rss);
    row.restart_peak_kb = Some(sampler.max_kb().max(m.hwm));
    row.pending_after_restart = agent.status().await.and_then(|s| s["pending"].as_u64());
    drop(sampler);
    let mut agent = agent;
    let (_, code) = agent.stop();
    if code != Some(0) {
        row.note
            .push_str(&format!(" restarted agent exit code {code:?};"));
    }
    if row.ready.ready.is_none() {
        row.note.push_str(" restart: not ready before the timeout;");
    }
    row
}

fn parse_args() -> (Vec<usize>, Vec<Mode>, Option<f64>) {
    let mut ns = Vec::new();
    let mut rate = None;
    let mut modes = vec![Mode::Backlog, Mode::Live];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if let Ok(n) = a.parse::<usize>() {
            ns.push(n);
        } else if a == "--rate" {
            rate = args
                .next()
                .and_then(|r| r.parse::<f64>().ok())
                .filter(|r| *r > 0.0);
        } else if a == "--mode" {
            modes = match args.next().as_deref() {
                Some("backlog") => vec![Mode::Backlog],
                Some("live") => vec![Mode::Live],
                Some("both") | None => vec![Mode::Backlog, Mode::Live],
                Some(other) => panic!("--mode backlog|live|both, not {other}"),
            };
        }
        // anything else (cargo passes `--bench`) is ignored
    }
    if ns.is_empty() {
        ns = vec![20_000, 200_000];
    }
    (ns, modes, rate)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (ns, modes, rate) = parse_args();
    let limits = Limits {
        max_ingest: Duration::from_secs(env_u64("BACKLOG_MAX_INGEST_SECS", 900)),
        max_rss_kb: env_u64("BACKLOG_MAX_RSS_MB", 1024) * 1024,
    };
    let rt = runtime();
    rt.block_on(async {
        let sim = unreachable_genesys(Duration::from_secs(24 * 3600)).await;
        let mut rows = vec![idle(&sim).await];
        for &mode in &modes {
            for &n in &ns {
                progress(&format!("{} N={n}", mode.name()));
                rows.push(run_one(mode, n, &sim, limits, rate).await);
            }
        }
        let delivered = sim.stats().accepted;
        println!(
            "\nbacklog benchmark: {PAYLOAD_BYTES}-byte JSON alerts, Genesys unreachable (simulator outage, {delivered} accepted), \
             mosquitto max_inflight_messages={INFLIGHT}, {} CPUs, agent {}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            env!("CARGO_BIN_EXE_alertbridge"),
        );
        println!();
        println!("| mode | N pending | RSS peak during ingest (MB) | RSS end of ingest (MB) | RSS after restart: ready / +5 s (MB) | restart-to-ready (ms) | written B/alert (÷ record) | store B/alert (÷ record) | ingest alerts/s | raw QoS1 sub alerts/s | ratio |");
        println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            r.print_row();
        }
        println!();
        for r in &rows {
            r.print_details();
        }
    });
}
