//! Crash consistency of the segment log (issue: the log at edge scale): a writer process is
//! killed with SIGKILL at random points of its group commits, again and again on the same store;
//! after each kill the store must reopen with every acknowledged record still pending (or
//! removed, if the writer reported the removal), and no record that does not decode.
//!
//! Also: a torn tail (the last frame cut at any byte) is cut off at open, nothing before it lost.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::support::{append_one, config, open, pending_ids, receipt, record};
use crate::{Appended, Entry, Wal, PRIORITY_CRITICAL, PRIORITY_NORMAL};

const CHILD_ENV: &str = "ALERTBRIDGE_WAL_CRASH_CHILD_DIR";

/// The writer run in a child process by `kill9_at_random_points_loses_no_acked_record`. Does
/// nothing in a normal test run.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let wal = Wal::open(config(std::path::Path::new(&dir))).expect("child open");
    let mut n = 0u64;
    loop {
        let entries: Vec<Entry> = (0..(1 + n % 40))
            .map(|i| {
                let lane = if (n + i) % 5 == 0 {
                    PRIORITY_CRITICAL
                } else {
                    PRIORITY_NORMAL
                };
                let mut r = record(&format!("r{round}-b{n}-{i}"), lane);
                r.payload = vec![b'x'; 100 + ((n * 7 + i) % 400) as usize];
                Entry::Pending(r)
            })
            .collect();
        let out = wal
            .append_batch(entries.clone())
            .expect("append")
            .into_inner();
        let mut line = String::from("acked");
        let mut keys = Vec::new();
        for (e, a) in entries.iter().zip(&out) {
            if let Appended::Pending(k) = a {
                line.push(' ');
                line.push_str(&e.record().alert_id);
                keys.push((*k, e.record().clone()));
            }
        }
        println!("{line}");
        // Deliver every third, retry every seventh (re-append), like the drain does.
        for (k, r) in keys {
            if k.seq % 3 == 0 {
                // Said before it happens: a kill in between leaves it pending, which is fine.
                println!("removed {}", r.alert_id);
                wal.remove(k, receipt(&r, k)).expect("remove");
            } else if k.seq % 7 == 0 {
                let mut again = r.clone();
                again.attempts += 1;
                wal.update(k, &again).expect("update");
            }
        }
        n += 1;
    }
}

#[test]
fn kill9_at_random_points_loses_no_acked_record() {
    let dir = TempDir::new().unwrap();
    // argv[0], not current_exe(): under qemu-user /proc/self/exe may name the emulator.
    let exe = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| std::env::current_exe().expect("test binary"));
    let mut acked: HashSet<String> = HashSet::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(40 + seed % 250);
        let mut child = spawn_writer(&exe, dir.path(), round);
        let stdout = child.stdout.take().expect("stdout");
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if l.starts_with("acked") {
                            let _ = first_tx.send(());
                        }
                        lines.push(l)
                    }
                    Err(_) => break,
                }
            }
            lines
        });
        // The random part starts once the writer runs (under qemu its start takes a while).
        let _ = first_rx.recv_timeout(Duration::from_secs(60));
        let started = Instant::now();
        while started.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        for line in reader.join().expect("reader") {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("acked") => acked.extend(words.map(str::to_owned)),
                Some("removed") => removed.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        let wal = open(dir.path());
        let mut present = HashSet::new();
        for item in wal.pending() {
            let (_, r) = item.expect("no corrupt record after a kill -9");
            assert!(
                present.insert(r.alert_id.clone()),
                "{} pending twice",
                r.alert_id
            );
        }
        for id in &acked {
            assert!(
                present.contains(id) || removed.contains(id),
                "round {round}: acked record {id} lost"
            );
        }
        wal.assert_counters_consistent();
    }
    assert!(
        acked.len() > 100,
        "the writer made progress ({} acked)",
        acked.len()
    );
}

/// Starts the writer: this test binary again. Under qemu-user (the ARM test run in CI, without
/// binfmt) the kernel cannot exec it directly: `ALERTBRIDGE_TEST_RUNNER` (e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`, set by `.ci/run`) is put in front of it.
fn spawn_writer(exe: &std::path::Path, dir: &std::path::Path, round: u64) -> std::process::Child {
    let args = [
        "--exact",
        "tests::crash::crash_child_writer",
        "--nocapture",
        "--test-threads=1",
    ];
    let runner = std::env::var("ALERTBRIDGE_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    let mut cmd = match parts.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(parts).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args)
        .env(CHILD_ENV, dir)
        .env("ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer")
}

#[test]
fn a_torn_tail_is_cut_off_at_open_and_everything_before_it_kept() {
    let dir = TempDir::new().unwrap();
    let (seg, last_len) = {
        let wal = open(dir.path());
        for i in 0..20 {
            append_one(&wal, record(&format!("keep-{i}"), PRIORITY_NORMAL));
        }
        let seg = newest_segment(&wal);
        let before = std::fs::metadata(&seg).unwrap().len();
        append_one(&wal, record("torn", PRIORITY_NORMAL));
        let after = std::fs::metadata(&seg).unwrap().len();
        wal.abandon(); // a crash: no close, no checkpoint
        (seg, (before, after))
    };
    let original = std::fs::read(&seg).unwrap();
    let (before, after) = last_len;
    for cut in before + 1..after {
        std::fs::write(&seg, &original[..cut as usize]).unwrap();
        let wal = open(dir.path());
        let ids = pending_ids(&wal);
        assert_eq!(ids.len(), 20, "cut at {cut}: {ids:?}");
        assert!(!ids.contains(&"torn".to_owned()));
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            before,
            "tail truncated"
        );
        drop(wal);
        std::fs::write(&seg, &original).unwrap();
        let _ = std::fs::remove_file(dir.path().join("checkpoint"));
    }
    // And the store takes appends after a cut.
    std::fs::write(&seg, &original[..(before + 5) as usize]).unwrap();
    let wal = open(dir.path());
    append_one(&wal, record("after-cut", PRIORITY_NORMAL));
    drop(wal);
    let wal = open(dir.path());
    assert_eq!(pending_ids(&wal).len(), 21);
}

pub(crate) fn newest_segment(wal: &Wal) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(wal.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}
