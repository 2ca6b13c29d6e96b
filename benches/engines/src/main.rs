//! Side-by-side benchmark of storage engines for alertbridge's durable alert queue.
//!
//! The question: can an engine hold the backlog of a long outage on a Raspberry Pi? Goals, with
//! 1 000 000 pending records of a ~250-byte payload: RSS <= 64 MB; bytes written per alert
//! <= 2 × the stored record; store bytes per pending record <= 1.5 × the record; space returned
//! once drained; reopen with 1M pending in <= 2 s.
//!
//! # Engines (see `engines.rs` for the exact calls and durability choices)
//!
//! - `sled` 0.34.7 as alertbridge-wal configures it (`Mode::LowSpace`, 16 MiB cache, flusher every
//!   500 ms; durable = `flush()` + `fdatasync(<dir>/db)`).
//! - `redb` 4.x: one write transaction per batch, `Durability::Immediate`, 16 MiB cache.
//! - `fjall` 3.x: batch commit + `persist(SyncAll)`, 16 MiB block cache, 8 MiB memtable, 64 MiB
//!   journal limit (the smallest it accepts); removals with `remove` (strong tombstones).
//! - `fjall-weak`: the same with `remove_weak` (experimental weak tombstones, fjall #115 / #126).
//! - `wal`: the project's own `alertbridge-wal` through its public API only (`Wal::open`,
//!   `append_batch`, `remove` + `flush`, `pending`), dedup window 0, no receipts kept. Whatever
//!   engine is behind that API is what this row measures.
//!
//! # Workload (the same for every engine)
//!
//! Keys are `[lane u8 = 1][seq u64 BE]`. The stored value is one record: the raw engines get
//! incompressible pseudo-random bytes of exactly the length `alertbridge_wal::encode_record`
//! gives a `Record` with a 250-byte JSON payload, topic `plant/line-3/pump-17/alerts` and a
//! 20-character alert id (331 bytes today; printed in the report header); the `wal` row stores
//! that real record. For each N:
//!
//! 1. **fill**: N records in durable group commits of 256. Reported: records/s, RSS at the end
//!    (`VmRSS`) and its peak (`VmHWM`), write amplification = bytes written by the process
//!    (`/proc/self/io` `write_bytes - cancelled_write_bytes`, all threads, measured after
//!    background work went quiet) / (N × record bytes), store size (file lengths and allocated
//!    blocks) / N. Then a clean close.
//! 2. **reopen** (a new process, store evicted from the page cache with fsync +
//!    `posix_fadvise(DONTNEED)`): time from open until the first 1000 records in key order were
//!    read; RSS and peak RSS after that.
//! 3. **drain** (same process): one scan for the keys in order (as the agent's drain loads its
//!    queue), then remove them in batches of 256, each batch made durable the way the engine
//!    makes an append durable. Reported: write amplification of the drain per record, store
//!    size after the drain (engine open) and after close.
//! 4. **cycle** (own process, fresh store, N = 200 000 by default): 10 × (fill N/10, drain all);
//!    store size after each fill and each drain, to show whether space is reused and returned.
//!
//! Every (engine, N) runs in its own processes (this binary re-executes itself with
//! `--worker`), so RSS figures belong to one engine. Store directories live in a temporary
//! directory under `$TMPDIR` (default `/tmp`) and are deleted after each run.
//!
//! # Running
//!
//! ```text
//! # everything (sled, redb, fjall, fjall-weak, wal × 20k, 200k, 1M, plus the 200k cycle):
//! cargo run --release --manifest-path benches/engines/Cargo.toml > engines.md
//! # a quick run:
//! cargo run --release --manifest-path benches/engines/Cargo.toml -- \
//!     --engines redb,wal --n 20000 --cycle 20000
//! ```
//!
//! Flags: `--engines a,b,..` (default all), `--n 20000,200000,..` (`none`: cycle only),
//! `--cycle N` (0 = none),
//! `--timeout-min M` (per engine and N, fill + reopen + drain; default 15; a run that exceeds it
//! is killed and reported as such), `--dir-root PATH` (default a new temporary directory).
//! The markdown report goes to stdout, progress to stderr.
//!
//! Not part of the alertbridge workspace: it has its own `[workspace]` and lockfile, and the
//! root manifest excludes it, so it adds nothing to the agent's build or CI.

mod engines;
mod probe;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engines::{key, raw_value, record_len, Res, ALL_ENGINES};

/// Records per group commit and per remove batch.
const BATCH: usize = 256;
/// Records read at reopen.
const REOPEN_READ: usize = 1000;
/// Cycles of the cycle phase.
const CYCLES: u64 = 10;
/// Longest wait for background writes to go quiet after a phase.
const SETTLE_MAX: Duration = Duration::from_secs(30);

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--worker") {
        worker(&args[1..])
    } else {
        driver(&args)
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Value of `--name` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

// ---------------------------------------------------------------------------------------------
// Worker: one phase of one engine in this process. Prints `RESULT name value` lines on stdout.

fn worker(args: &[String]) -> Res<()> {
    let phase = args.first().ok_or("--worker needs a phase")?.clone();
    let engine = flag(args, "--engine").ok_or("--engine missing")?.to_owned();
    let n: u64 = flag(args, "--n").ok_or("--n missing")?.parse()?;
    let dir = PathBuf::from(flag(args, "--dir").ok_or("--dir missing")?);
    let mut out = Out::default();
    out.put("baseline_rss", probe::rss().0);
    match phase.as_str() {
        "fill" => fill_phase(&engine, n, &dir, &mut out),
        "reopen" => reopen_drain_phase(&engine, n, &dir, &mut out),
        "cycle" => cycle_phase(&engine, n, &dir, &mut out),
        other => Err(format!("unknown phase {other:?}").into()),
    }
}

/// Prints results as they come, so a killed worker still reports what it measured.
struct Out {
    /// Whether `progress_*` lines are printed.
    progress: bool,
}

impl Default for Out {
    fn default() -> Self {
        Out { progress: true }
    }
}

impl Out {
    fn put(&mut self, name: &str, value: impl std::fmt::Display) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "RESULT {name} {value}");
        let _ = stdout.flush();
    }

    fn progress(&mut self, name: &str, value: impl std::fmt::Display) {
        if self.progress {
            self.put(name, value);
        }
    }
}

/// Appends seqs `from..to` in batches of [`BATCH`], reporting progress.
fn fill(e: &mut dyn engines::Engine, from: u64, to: u64, rec_len: usize, out: &mut Out) -> Res<()> {
    let total = to - from;
    let step = (total / 10).max(1);
    let mut next_report = from + step;
    let mut seq = from;
    while seq < to {
        let end = (seq + BATCH as u64).min(to);
        let batch: Vec<_> = (seq..end)
            .map(|s| (key(s), raw_value(s, rec_len)))
            .collect();
        e.append_batch(&batch)?;
        seq = end;
        if seq >= next_report {
            out.progress("progress_fill", seq - from);
            next_report += step;
        }
    }
    Ok(())
}

/// Removes every pending record in key order, in batches of [`BATCH`]; returns how many.
fn drain(e: &mut dyn engines::Engine, out: &mut Out) -> Res<u64> {
    let keys = e.keys_in_order()?;
    let step = (keys.len() / 10).max(1);
    for (i, chunk) in keys.chunks(BATCH).enumerate() {
        e.remove_batch(chunk)?;
        let done = (i + 1) * BATCH;
        if done % step < BATCH && done < keys.len() {
            out.progress("progress_drain", done);
        }
    }
    Ok(keys.len() as u64)
}

fn fill_phase(engine: &str, n: u64, dir: &Path, out: &mut Out) -> Res<()> {
    let rec_len = record_len();
    let io0 = probe::io();
    let t_open = Instant::now();
    let mut e = engines::open(engine, dir)?;
    out.put("open_ms", t_open.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    fill(e.as_mut(), 1, n + 1, rec_len, out)?;
    let secs = t.elapsed().as_secs_f64();
    out.put("fill_s", secs);
    out.put("fill_rate", n as f64 / secs);
    out.put("fill_settle_s", probe::settle(SETTLE_MAX).as_secs_f64());
    let io1 = probe::io();
    let (rss, peak) = probe::rss();
    out.put("fill_rss", rss);
    out.put("fill_peak", peak);
    out.put("fill_written", io1.written - io0.written);
    let (apparent, allocated) = probe::dir_size(dir)?;
    out.put("fill_size", apparent);
    out.put("fill_alloc", allocated);
    let t = Instant::now();
    e.close()?;
    out.put("close_ms", t.elapsed().as_secs_f64() * 1e3);
    out.put("close_written", probe::io().written - io1.written);
    let (apparent, allocated) = probe::dir_size(dir)?;
    out.put("closed_size", apparent);
    out.put("closed_alloc", allocated);
    out.put("done", 1);
    Ok(())
}

fn reopen_drain_phase(engine: &str, n: u64, dir: &Path, out: &mut Out) -> Res<()> {
    probe::evict_from_page_cache(dir)?;
    probe::reset_peak_rss();
    let io0 = probe::io();
    let t = Instant::now();
    let mut e = engines::open(engine, dir)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let (read, _) = e.first_k(REOPEN_READ)?;
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    if read as u64 != n.min(REOPEN_READ as u64) {
        return Err(format!("reopen read {read} records, expected {}", n.min(1000)).into());
    }
    let (rss, peak) = probe::rss();
    let io1 = probe::io();
    out.put("reopen_open_ms", open_ms);
    out.put("reopen_ms", reopen_ms);
    out.put("reopen_rss", rss);
    out.put("reopen_peak", peak);
    out.put("reopen_read", io1.read - io0.read);
    out.put("reopen_written", io1.written - io0.written);

    let t = Instant::now();
    let removed = drain(e.as_mut(), out)?;
    let secs = t.elapsed().as_secs_f64();
    if removed != n {
        return Err(format!("drain found {removed} records, expected {n}").into());
    }
    out.put("drain_s", secs);
    out.put("drain_rate", n as f64 / secs);
    out.put("drain_settle_s", probe::settle(SETTLE_MAX).as_secs_f64());
    let io2 = probe::io();
    out.put("drain_written", io2.written - io1.written);
    let (rss, peak) = probe::rss();
    out.put("drain_rss", rss);
    out.put("drain_peak", peak);
    let (apparent, allocated) = probe::dir_size(dir)?;
    out.put("drained_size", apparent);
    out.put("drained_alloc", allocated);
    e.close()?;
    let (apparent, allocated) = probe::dir_size(dir)?;
    out.put("drained_closed_size", apparent);
    out.put("drained_closed_alloc", allocated);
    out.put("done", 1);
    Ok(())
}

fn cycle_phase(engine: &str, n: u64, dir: &Path, out: &mut Out) -> Res<()> {
    let rec_len = record_len();
    let per_cycle = (n / CYCLES).max(1);
    let io0 = probe::io();
    let mut e = engines::open(engine, dir)?;
    let mut seq = 1;
    let mut quiet = Out { progress: false };
    // Bytes written while filling, while draining, and in the background while settling.
    let (mut w_fill, mut w_drain, mut w_idle, mut idle_s) = (0, 0, 0, 0.0);
    let t = Instant::now();
    for c in 1..=CYCLES {
        let w0 = probe::io().written;
        fill(e.as_mut(), seq, seq + per_cycle, rec_len, &mut quiet)?;
        seq += per_cycle;
        let w1 = probe::io().written;
        idle_s += probe::settle(SETTLE_MAX).as_secs_f64();
        let w2 = probe::io().written;
        let (apparent, allocated) = probe::dir_size(dir)?;
        out.put(
            &format!("cycle_{c}_fill"),
            format!("{apparent}/{allocated}"),
        );
        let removed = drain(e.as_mut(), &mut quiet)?;
        if removed != per_cycle {
            return Err(format!("cycle {c}: drained {removed}, expected {per_cycle}").into());
        }
        let w3 = probe::io().written;
        idle_s += probe::settle(SETTLE_MAX).as_secs_f64();
        let w4 = probe::io().written;
        let (apparent, allocated) = probe::dir_size(dir)?;
        out.put(
            &format!("cycle_{c}_drain"),
            format!("{apparent}/{allocated}"),
        );
        w_fill += w1 - w0;
        w_drain += w3 - w2;
        w_idle += (w2 - w1) + (w4 - w3);
    }
    out.put("cycle_s", t.elapsed().as_secs_f64());
    out.put("cycle_written", probe::io().written - io0.written);
    out.put("cycle_fill_written", w_fill);
    out.put("cycle_drain_written", w_drain);
    out.put("cycle_idle_written", w_idle);
    out.put("cycle_idle_s", idle_s);
    let (rss, peak) = probe::rss();
    out.put("cycle_rss", rss);
    out.put("cycle_peak", peak);
    e.close()?;
    let (apparent, allocated) = probe::dir_size(dir)?;
    out.put("cycle_closed", format!("{apparent}/{allocated}"));
    out.put("done", 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver: runs the workers and prints the report.

/// What one worker process reported.
#[derive(Default)]
struct Run {
    values: BTreeMap<String, String>,
    /// Why it did not finish, if it did not.
    failure: Option<String>,
}

impl Run {
    fn num(&self, name: &str) -> Option<f64> {
        self.values.get(name).and_then(|v| v.parse().ok())
    }

    fn pair(&self, name: &str) -> Option<(f64, f64)> {
        let (a, b) = self.values.get(name)?.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }
}

/// Runs `self --worker phase ...` until it exits or `deadline`; kills it after the deadline.
fn run_worker(phase: &str, engine: &str, n: u64, dir: &Path, deadline: Instant) -> Res<Run> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "--worker",
            phase,
            "--engine",
            engine,
            "--n",
            &n.to_string(),
            "--dir",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("worker stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut run = Run::default();
    let handle = |line: String, run: &mut Run| {
        if let Some(rest) = line.strip_prefix("RESULT ") {
            if let Some((name, value)) = rest.split_once(' ') {
                if name.starts_with("progress_") {
                    eprintln!("  {engine} N={n} {phase}: {name} {value}");
                }
                run.values.insert(name.to_owned(), value.to_owned());
            }
        }
    };
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            handle(line, &mut run);
        }
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Our own child, by its handle.
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        handle(line, &mut run);
    }
    match status {
        None => {
            let progress = run
                .values
                .get("progress_drain")
                .map(|d| format!("drain at {d}"))
                .or_else(|| {
                    run.values
                        .get("progress_fill")
                        .map(|f| format!("fill at {f}"))
                })
                .unwrap_or_else(|| "no progress reported".to_owned());
            run.failure = Some(format!("killed at the time limit in {phase} ({progress})"));
        }
        Some(s) if !s.success() || !run.values.contains_key("done") => {
            run.failure = Some(format!("{phase} worker failed ({s})"));
        }
        Some(_) => {}
    }
    Ok(run)
}

struct Options {
    engines: Vec<String>,
    ns: Vec<u64>,
    cycle_n: u64,
    timeout: Duration,
    dir_root: Option<PathBuf>,
}

fn parse_options(args: &[String]) -> Res<Options> {
    let known = ["--engines", "--n", "--cycle", "--timeout-min", "--dir-root"];
    for pair in args.chunks(2) {
        if !known.contains(&pair[0].as_str()) || pair.len() < 2 {
            return Err(format!(
                "usage: [--engines {}] [--n 20000,200000,1000000] [--cycle 200000] \
                 [--timeout-min 15] [--dir-root DIR] (got {:?})",
                ALL_ENGINES.join(","),
                pair[0]
            )
            .into());
        }
    }
    let engines: Vec<String> = flag(args, "--engines")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| ALL_ENGINES.iter().map(|s| (*s).to_owned()).collect());
    for e in &engines {
        if !ALL_ENGINES.contains(&e.as_str()) {
            return Err(format!("unknown engine {e:?} (known: {})", ALL_ENGINES.join(",")).into());
        }
    }
    let ns = match flag(args, "--n") {
        Some("none") => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|v| v.replace('_', "").parse::<u64>())
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![20_000, 200_000, 1_000_000],
    };
    let cycle_n = match flag(args, "--cycle") {
        Some(s) => s.replace('_', "").parse()?,
        None => 200_000,
    };
    let timeout_min: f64 = match flag(args, "--timeout-min") {
        Some(s) => s.parse()?,
        None => 15.0,
    };
    Ok(Options {
        engines,
        ns,
        cycle_n,
        timeout: Duration::from_secs_f64(timeout_min * 60.0),
        dir_root: flag(args, "--dir-root").map(PathBuf::from),
    })
}

/// Results of one (engine, N).
struct Row {
    engine: String,
    n: u64,
    fill: Run,
    reopen: Run,
    load_before: String,
    load_after: String,
}

fn driver(args: &[String]) -> Res<()> {
    let opts = parse_options(args)?;
    let rec_len = record_len();
    let tmp = match &opts.dir_root {
        Some(root) => tempfile::Builder::new()
            .prefix("engines-bench-")
            .tempdir_in(root)?,
        None => tempfile::Builder::new()
            .prefix("engines-bench-")
            .tempdir()?,
    };
    eprintln!(
        "record {rec_len} B, batches of {BATCH}, stores under {}",
        tmp.path().display()
    );
    let load_start = probe::loadavg();
    let mut rows = Vec::new();
    for &n in &opts.ns {
        for engine in &opts.engines {
            let dir = tmp.path().join(format!("{engine}-{n}"));
            let deadline = Instant::now() + opts.timeout;
            let load_before = probe::loadavg();
            eprintln!("== {engine} N={n}: fill (load {load_before})");
            let fill = run_worker("fill", engine, n, &dir, deadline)?;
            let reopen = if fill.failure.is_none() {
                eprintln!("== {engine} N={n}: reopen + drain");
                run_worker("reopen", engine, n, &dir, deadline)?
            } else {
                Run {
                    failure: Some("not run".to_owned()),
                    ..Run::default()
                }
            };
            remove_store(&dir);
            let row = Row {
                engine: engine.clone(),
                n,
                fill,
                reopen,
                load_before,
                load_after: probe::loadavg(),
            };
            eprintln!("{}", main_row(&row, rec_len));
            rows.push(row);
        }
    }
    let mut cycles = Vec::new();
    if opts.cycle_n > 0 {
        for engine in &opts.engines {
            let dir = tmp.path().join(format!("{engine}-cycle"));
            eprintln!("== {engine}: cycle N={}", opts.cycle_n);
            let run = run_worker(
                "cycle",
                engine,
                opts.cycle_n,
                &dir,
                Instant::now() + opts.timeout,
            )?;
            remove_store(&dir);
            cycles.push((engine.clone(), run));
        }
    }
    let load_end = probe::loadavg();
    print_report(&opts, rec_len, &rows, &cycles, &load_start, &load_end);
    Ok(())
}

fn remove_store(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: could not delete {}: {e}", dir.display());
        }
    }
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or("–".to_owned(), |b| format!("{:.1}", b / MIB))
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// `written / (n × record)`.
fn amp(written: Option<f64>, n: u64, rec_len: usize) -> Option<f64> {
    written.map(|w| w / (n as f64 * rec_len as f64))
}

const MAIN_HEADER: &str = "| engine | N | fill rec/s | RSS end MiB | peak MiB | write amp | \
     store B/rec: files / alloc (× record) | reopen ms | RSS after reopen MiB | reopen peak MiB \
     | drain rec/s | drain write amp | size after drain MiB: open / closed |\n\
     |---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|";

fn main_row(row: &Row, rec_len: usize) -> String {
    let (f, r, n) = (&row.fill, &row.reopen, row.n);
    let per_rec = |name: &str| f.num(name).map(|b| b / n as f64);
    let store = match (per_rec("fill_size"), per_rec("fill_alloc")) {
        (Some(s), Some(a)) => format!("{s:.0} / {a:.0} ({:.2}×)", a / rec_len as f64),
        _ => "–".to_owned(),
    };
    let mut line = format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
        row.engine,
        n,
        fixed(f.num("fill_rate"), 0),
        mib(f.num("fill_rss")),
        mib(f.num("fill_peak")),
        fixed(amp(f.num("fill_written"), n, rec_len), 2),
        store,
        fixed(r.num("reopen_ms"), 0),
        mib(r.num("reopen_rss")),
        mib(r.num("reopen_peak")),
        fixed(r.num("drain_rate"), 0),
        fixed(amp(r.num("drain_written"), n, rec_len), 2),
        mib(r.num("drained_alloc")),
        mib(r.num("drained_closed_alloc")),
    );
    for failure in [&f.failure, &r.failure].into_iter().flatten() {
        if failure != "not run" {
            line.push_str(&format!(" **{failure}**"));
        }
    }
    line
}

fn print_report(
    opts: &Options,
    rec_len: usize,
    rows: &[Row],
    cycles: &[(String, Run)],
    load_start: &str,
    load_end: &str,
) {
    println!("## Storage engines: durable alert queue\n");
    println!(
        "Record: {rec_len} B (the framed alertbridge-wal record of a 250-byte JSON payload); \
         key 9 B; group commits and remove batches of {BATCH}; every batch durable. \
         Load average (1 min) {load_start} at start, {load_end} at end. \
         MiB = 2^20 B; sizes after drain are allocated blocks (`du`)."
    );
    println!("\n{MAIN_HEADER}");
    for row in rows {
        println!("{}", main_row(row, rec_len));
    }

    println!("\n### Details per run\n");
    println!(
        "| engine | N | fill s | settle s | close ms | close write MiB | files after close MiB \
         | reopen: open ms | reopen read MiB | reopen write MiB | drain s | RSS end of drain MiB \
         | harness baseline RSS MiB | load before → after |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let (f, r) = (&row.fill, &row.reopen);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            row.engine,
            row.n,
            fixed(f.num("fill_s"), 1),
            fixed(f.num("fill_settle_s"), 1),
            fixed(f.num("close_ms"), 0),
            mib(f.num("close_written")),
            mib(f.num("closed_alloc")),
            fixed(r.num("reopen_open_ms"), 0),
            mib(r.num("reopen_read")),
            mib(r.num("reopen_written")),
            fixed(r.num("drain_s"), 1),
            mib(r.num("drain_rss")),
            mib(f.num("baseline_rss")),
            row.load_before,
            row.load_after,
        );
    }

    if !cycles.is_empty() {
        let per_cycle = (opts.cycle_n / CYCLES).max(1);
        println!(
            "\n### Cycle: {CYCLES} × (fill {per_cycle}, drain all), fresh store; \
             allocated MiB after fill → after drain\n"
        );
        let mut header = "| cycle |".to_owned();
        let mut rule = "|---:|".to_owned();
        for (engine, _) in cycles {
            header.push_str(&format!(" {engine} |"));
            rule.push_str("---|");
        }
        println!("{header}\n{rule}");
        for c in 1..=CYCLES {
            let mut line = format!("| {c} |");
            for (_, run) in cycles {
                let fill = run.pair(&format!("cycle_{c}_fill")).map(|p| p.1);
                let drain = run.pair(&format!("cycle_{c}_drain")).map(|p| p.1);
                line.push_str(&format!(" {} → {} |", mib(fill), mib(drain)));
            }
            println!("{line}");
        }
        let mut closed = "| closed |".to_owned();
        let mut wamp = "| write amp (all cycles) |".to_owned();
        let mut split = "| write amp: filling / draining / background while idle |".to_owned();
        let mut idle = "| idle seconds (settling, max 30 s per step) |".to_owned();
        let mut rss = "| RSS end / peak MiB |".to_owned();
        let mut secs = "| seconds |".to_owned();
        for (_, run) in cycles {
            closed.push_str(&format!(
                " {} |",
                mib(run.pair("cycle_closed").map(|p| p.1))
            ));
            wamp.push_str(&format!(
                " {} |",
                fixed(amp(run.num("cycle_written"), opts.cycle_n, rec_len), 2)
            ));
            split.push_str(&format!(
                " {} / {} / {} |",
                fixed(amp(run.num("cycle_fill_written"), opts.cycle_n, rec_len), 2),
                fixed(
                    amp(run.num("cycle_drain_written"), opts.cycle_n, rec_len),
                    2
                ),
                fixed(amp(run.num("cycle_idle_written"), opts.cycle_n, rec_len), 2),
            ));
            idle.push_str(&format!(" {} |", fixed(run.num("cycle_idle_s"), 0)));
            rss.push_str(&format!(
                " {} / {} |",
                mib(run.num("cycle_rss")),
                mib(run.num("cycle_peak"))
            ));
            secs.push_str(&format!(" {} |", fixed(run.num("cycle_s"), 0)));
        }
        println!("{closed}\n{wamp}\n{split}\n{idle}\n{rss}\n{secs}");
        for (engine, run) in cycles {
            if let Some(f) = &run.failure {
                println!("\n{engine} cycle: **{f}**");
            }
        }
    }
}
