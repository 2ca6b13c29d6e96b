//! The receipt outbox (invariant RC1): a receipt is queued in the same frame as the state change
//! it reports, survives every crash its state change survives, leaves only when marked done,
//! and never hides, removes or delays an alert.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::crash::newest_segment;
use super::support::{append, append_one, config, pending_ids, reason, receipt, record};
use crate::{
    encode_dead_letter, Appended, DeadKind, DeadLetter, Entry, Key, OutboxEntry, ReceiptState,
    Record, Wal, WalConfig, LANE_OUTBOX, PRIORITY_CRITICAL, PRIORITY_NORMAL,
};

const CHILD_ENV: &str = "ALERTBRIDGE_WAL_OUTBOX_CHILD_DIR";

fn outbox_config(dir: &std::path::Path) -> WalConfig {
    WalConfig {
        outbox: true,
        ..config(dir)
    }
}

fn open_outbox(dir: &std::path::Path) -> Wal {
    Wal::open(outbox_config(dir)).expect("open WAL with outbox")
}

fn delivered(record: &Record) -> OutboxEntry {
    OutboxEntry {
        alert_id: record.alert_id.clone(),
        topic: record.topic.clone(),
        state: ReceiptState::Delivered,
        at_ms: record.received_at_ms + 10,
        received_at_ms: record.received_at_ms,
        attempts: record.attempts + 1,
        status: Some(202),
        execution_id: Some(format!("exec-{}", record.alert_id)),
        correlation_id: None,
        dead: None,
        reply: None,
    }
}

/// Every queued receipt, oldest first.
fn outbox(wal: &Wal) -> Vec<(Key, OutboxEntry)> {
    let mut cursor = wal.outbox_cursor();
    let mut all = Vec::new();
    loop {
        let page = wal.read_outbox(&mut cursor, 100).expect("read outbox");
        if page.is_empty() {
            return all;
        }
        all.extend(page.into_iter().map(|i| i.expect("decodable entry")));
    }
}

fn format_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("FORMAT"))
        .expect("FORMAT")
        .trim()
        .to_owned()
}

#[test]
fn a_delivery_queues_its_receipt_and_the_alert_leaves_pending() {
    let dir = TempDir::new().unwrap();
    let wal = open_outbox(dir.path());
    let r = record("a1", PRIORITY_NORMAL);
    let key = append_one(&wal, r.clone());
    wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
        .expect("remove and queue");
    assert!(pending_ids(&wal).is_empty());
    let queued = outbox(&wal);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.priority, LANE_OUTBOX);
    assert_eq!(queued[0].1, delivered(&r));
    assert_eq!(wal.outbox_len(), 1);
    assert_eq!(
        wal.delivered().count(),
        1,
        "the forensic receipt is kept too"
    );
}

#[test]
fn a_delivery_and_its_receipt_are_one_frame_at_every_cut_offset() {
    let dir = TempDir::new().unwrap();
    let seg = {
        let wal = open_outbox(dir.path());
        for i in 0..5 {
            append_one(&wal, record(&format!("keep-{i}"), PRIORITY_NORMAL));
        }
        let r = record("cut", PRIORITY_NORMAL);
        let key = append_one(&wal, r.clone());
        wal.flush().unwrap();
        let seg = newest_segment(&wal);
        let before = std::fs::metadata(&seg).unwrap().len();
        wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
            .unwrap();
        let after = std::fs::metadata(&seg).unwrap().len();
        wal.abandon();
        (seg, before, after)
    };
    let (seg, before, after) = seg;
    let original = std::fs::read(&seg).unwrap();
    for cut in before..=after {
        std::fs::write(&seg, &original[..cut as usize]).unwrap();
        let wal = open_outbox(dir.path());
        let pending = pending_ids(&wal).contains(&"cut".to_owned());
        let queued = outbox(&wal).iter().any(|(_, e)| e.alert_id == "cut");
        assert!(
            pending != queued,
            "cut at {cut}: pending {pending}, receipt queued {queued}: exactly one must hold"
        );
        assert_eq!(queued, cut == after, "cut at {cut}");
        assert_eq!(pending_ids(&wal).len(), if queued { 5 } else { 6 });
        wal.abandon();
        std::fs::write(&seg, &original).unwrap();
    }
}

#[test]
fn receipts_survive_reopen_from_a_checkpoint_and_from_replay() {
    for checkpointed in [true, false] {
        let dir = TempDir::new().unwrap();
        {
            let wal = open_outbox(dir.path());
            for i in 0..30 {
                let r = record(&format!("a{i}"), PRIORITY_NORMAL);
                let key = append_one(&wal, r.clone());
                if i % 2 == 0 {
                    wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
                        .unwrap();
                }
            }
            if checkpointed {
                wal.close().unwrap();
            } else {
                wal.abandon();
            }
        }
        let wal = open_outbox(dir.path());
        let queued: Vec<String> = outbox(&wal).into_iter().map(|(_, e)| e.alert_id).collect();
        let want: Vec<String> = (0..30).step_by(2).map(|i| format!("a{i}")).collect();
        assert_eq!(queued, want, "checkpointed: {checkpointed}");
        assert_eq!(pending_ids(&wal).len(), 15);
        wal.assert_counters_consistent();
    }
}

#[test]
fn done_receipts_stay_done_after_a_flush_and_a_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open_outbox(dir.path());
        for i in 0..4 {
            let r = record(&format!("a{i}"), PRIORITY_NORMAL);
            let key = append_one(&wal, r.clone());
            wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
                .unwrap();
        }
        let queued = outbox(&wal);
        wal.outbox_done(&[queued[0].0, queued[2].0]).unwrap();
        assert_eq!(wal.outbox_len(), 2);
        wal.flush().unwrap();
        wal.abandon();
    }
    let wal = open_outbox(dir.path());
    let left: Vec<String> = outbox(&wal).into_iter().map(|(_, e)| e.alert_id).collect();
    assert_eq!(left, ["a1", "a3"]);
}

#[test]
fn the_outbox_lane_is_invisible_to_pending_counts_lanes_and_the_oldest() {
    let dir = TempDir::new().unwrap();
    let wal = open_outbox(dir.path());
    let mut old = record("old", PRIORITY_CRITICAL);
    old.received_at_ms = 1_000;
    let key = append_one(&wal, old.clone());
    wal.remove_and_queue(key, receipt(&old, key), &delivered(&old))
        .unwrap();
    let mut young = record("young", PRIORITY_NORMAL);
    young.received_at_ms = 5_000;
    append_one(&wal, young.clone());
    let stats = wal.stats().unwrap();
    assert_eq!(
        (stats.pending, stats.pending_critical, stats.outbox_pending),
        (1, 0, 1)
    );
    assert_eq!(stats.oldest_pending_received_ms, Some(5_000));
    assert_eq!(wal.lanes(), vec![PRIORITY_NORMAL]);
    assert_eq!(pending_ids(&wal), ["young"]);
}

#[test]
fn outbox_done_never_removes_an_alert() {
    let dir = TempDir::new().unwrap();
    let wal = open_outbox(dir.path());
    let key = append_one(&wal, record("alert", PRIORITY_NORMAL));
    wal.outbox_done(&[key]).unwrap();
    assert_eq!(pending_ids(&wal), ["alert"]);
}

#[test]
fn a_dead_letter_queues_its_receipt_with_kind_and_reason() {
    let dir = TempDir::new().unwrap();
    let wal = open_outbox(dir.path());
    let r = record("bad", PRIORITY_NORMAL);
    let key = append_one(&wal, r.clone());
    let id = wal
        .dead_letter_record(key, &r, reason(DeadKind::Rejected), 42)
        .unwrap();
    let e = r.clone();
    let key2 = append_one(&wal, record("late", PRIORITY_NORMAL));
    wal.dead_letter_record(key2, &e, reason(DeadKind::Expired), 43)
        .unwrap();
    let queued = outbox(&wal);
    assert_eq!(queued.len(), 2);
    let first = &queued[0].1;
    assert_eq!(first.state, ReceiptState::DeadLettered);
    let dead = first.dead.as_ref().expect("dead part");
    assert_eq!((dead.id, dead.kind), (id, DeadKind::Rejected));
    assert_eq!(dead.reason, "Rejected in test");
    assert_eq!(first.status, Some(422));
    assert_eq!(queued[1].1.state, ReceiptState::Expired);
    assert!(pending_ids(&wal).is_empty());
}

#[test]
fn a_dead_letter_crash_before_its_removal_still_queues_its_receipt() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open_outbox(dir.path());
        let mut r = record("half-moved", PRIORITY_NORMAL);
        r.mqtt = Some(Box::new(crate::MqttProps {
            response_topic: Some("hmi/answers/9".into()),
            correlation: Some(vec![9]),
            ..Default::default()
        }));
        let key = append_one(&wal, r.clone());
        // The dead letter is durable, the frame that removes the pending copy never written.
        let letter = DeadLetter {
            id: 900,
            key: Some(key),
            record: Some(r),
            raw: None,
            reason: reason(DeadKind::Exhausted),
            dead_at_ms: 77,
        };
        wal.put_raw_dead(900, &encode_dead_letter(&letter).unwrap());
        wal.flush().unwrap();
        wal.abandon();
    }
    let wal = open_outbox(dir.path());
    assert!(pending_ids(&wal).is_empty(), "the pending copy is removed");
    let queued = outbox(&wal);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.alert_id, "half-moved");
    assert_eq!(queued[0].1.dead.as_ref().map(|d| d.id), Some(900));
    assert_eq!(
        queued[0].1.reply,
        Some(crate::Reply {
            topic: "hmi/answers/9".into(),
            correlation: Some(vec![9]),
        }),
        "the publisher's response topic, from the pending copy (a dead letter keeps none)"
    );
    wal.assert_counters_consistent();
}

#[test]
fn a_payload_dead_lettered_at_ingest_gets_its_receipt_in_the_same_group_commit() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open_outbox(dir.path());
        let out = append(
            &wal,
            vec![Entry::DeadLetter(
                record("malformed", PRIORITY_NORMAL),
                reason(DeadKind::Malformed),
            )],
        );
        assert!(matches!(out.as_slice(), [Appended::DeadLettered(_)]));
        wal.abandon();
    }
    let wal = open_outbox(dir.path());
    let queued = outbox(&wal);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.state, ReceiptState::DeadLettered);
    assert_eq!(
        queued[0].1.dead.as_ref().map(|d| d.kind),
        Some(DeadKind::Malformed)
    );
}

#[test]
fn a_segment_pinned_by_a_receipt_is_deleted_once_the_receipt_is_done() {
    let dir = TempDir::new().unwrap();
    let wal = open_outbox(dir.path());
    let r = record("pin", PRIORITY_NORMAL);
    let key = append_one(&wal, r.clone());
    wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
        .unwrap();
    // Fill past a few segments with alerts that are delivered without receipts queued.
    for i in 0..400 {
        let mut x = record(&format!("fill-{i}"), PRIORITY_NORMAL);
        x.payload = vec![b'x'; 600];
        let k = append_one(&wal, x.clone());
        wal.remove(k, receipt(&x, k)).unwrap();
    }
    wal.flush().unwrap();
    let first_segment = dir.path().join("seg-0000000001.log");
    assert!(
        first_segment.exists(),
        "the unpublished receipt keeps its segment"
    );
    let queued = outbox(&wal);
    wal.outbox_done(&[queued[0].0]).unwrap();
    wal.flush().unwrap();
    assert!(!first_segment.exists(), "done: the segment is freed");
    assert_eq!(wal.stats().unwrap().outbox_pending, 0);
}

#[test]
fn a_format_2_store_opens_as_3_with_the_outbox_and_back_as_2_without_it() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(config(dir.path())).unwrap();
        append_one(&wal, record("kept", PRIORITY_NORMAL));
        wal.close().unwrap();
    }
    assert_eq!(
        format_of(dir.path()),
        "alertbridge-wal 2",
        "no outbox: format 2"
    );
    {
        let wal = open_outbox(dir.path());
        assert_eq!(format_of(dir.path()), "alertbridge-wal 3");
        let r = record("delivered", PRIORITY_NORMAL);
        let key = append_one(&wal, r.clone());
        wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
            .unwrap();
        wal.close().unwrap();
    }
    let wal = Wal::open(config(dir.path())).unwrap();
    assert_eq!(format_of(dir.path()), "alertbridge-wal 2");
    assert_eq!(
        wal.outbox_len(),
        0,
        "receipts off: left-over receipts dropped"
    );
    assert_eq!(pending_ids(&wal), ["kept"], "alerts untouched");
    wal.assert_counters_consistent();
}

#[test]
fn with_the_outbox_off_remove_and_queue_is_a_plain_removal() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(config(dir.path())).unwrap();
    let r = record("a", PRIORITY_NORMAL);
    let key = append_one(&wal, r.clone());
    wal.remove_and_queue(key, receipt(&r, key), &delivered(&r))
        .unwrap();
    assert!(pending_ids(&wal).is_empty());
    assert_eq!(wal.outbox_len(), 0);
}

/// The writer run in a child process by
/// `kill9_at_random_points_never_loses_a_receipt_nor_an_alert`. Does nothing in a normal run.
#[test]
fn outbox_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let wal = open_outbox(std::path::Path::new(&dir));
    let mut cursor = wal.outbox_cursor();
    let mut n = 0u64;
    loop {
        let entries: Vec<Entry> = (0..(1 + n % 20))
            .map(|i| Entry::Pending(record(&format!("r{round}-b{n}-{i}"), PRIORITY_NORMAL)))
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
        for (k, r) in keys {
            match k.seq % 4 {
                0 | 1 => wal
                    .remove_and_queue(k, receipt(&r, k), &delivered(&r))
                    .expect("remove and queue"),
                2 => {
                    wal.dead_letter_record(k, &r, reason(DeadKind::Rejected), 1)
                        .expect("dead letter");
                }
                _ => {}
            }
        }
        // The publisher: says what it publishes before marking it done (a kill in between
        // leaves it queued, which only publishes it again).
        let page = wal.read_outbox(&mut cursor, 8).expect("read outbox");
        let mut line = String::from("published");
        let mut done = Vec::new();
        for item in page {
            let (k, e) = item.expect("decodable");
            line.push(' ');
            line.push_str(&e.alert_id);
            done.push(k);
        }
        println!("{line}");
        wal.outbox_done(&done).expect("done");
        if n % 10 == 0 {
            wal.flush().expect("flush");
        }
        n += 1;
    }
}

#[test]
fn kill9_at_random_points_never_loses_a_receipt_nor_an_alert() {
    let dir = TempDir::new().unwrap();
    let exe = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| std::env::current_exe().expect("test binary"));
    let mut acked: HashSet<String> = HashSet::new();
    let mut published: HashMap<String, u32> = HashMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(40 + seed % 250);
        let mut child = spawn(&exe, dir.path(), round);
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
                Some("published") => {
                    for w in words {
                        *published.entry(w.to_owned()).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        let wal = open_outbox(dir.path());
        let pending: HashSet<String> = pending_ids(&wal).into_iter().collect();
        let queued: HashSet<String> = outbox(&wal).into_iter().map(|(_, e)| e.alert_id).collect();
        for id in &acked {
            assert!(
                !(pending.contains(id) && queued.contains(id)),
                "round {round}: {id} both pending and with a receipt queued"
            );
            assert!(
                pending.contains(id) || queued.contains(id) || published.contains_key(id),
                "round {round}: {id} lost: neither pending, nor queued, nor published"
            );
        }
        wal.assert_counters_consistent();
    }
    assert!(acked.len() > 100, "the writer made progress");
    assert!(!published.is_empty(), "the publisher made progress");
}

fn spawn(exe: &std::path::Path, dir: &std::path::Path, round: u64) -> std::process::Child {
    let args = [
        "--exact",
        "tests::outbox::outbox_child_writer",
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
fn a_damaged_region_of_alerts_is_never_reported_by_the_outbox_so_it_cannot_remove_one() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open_outbox(dir.path());
        for i in 0..600 {
            append_one(&wal, record(&format!("d{i:04}"), PRIORITY_NORMAL));
        }
        wal.close().unwrap();
    }
    let first = dir.path().join("seg-0000000001.log");
    let mut bytes = std::fs::read(&first).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 40] {
        *b ^= 0x5a;
    }
    std::fs::write(&first, &bytes).unwrap();
    let wal = open_outbox(dir.path());
    let mut cursor = wal.outbox_cursor();
    let page = wal.read_outbox(&mut cursor, 1000).unwrap();
    assert!(page.is_empty(), "the outbox reports nothing: {page:?}");
    let corrupt = wal.pending().filter(|i| i.is_err()).count();
    assert!(corrupt > 0, "the alert lanes still report the damage (I4)");
    assert_eq!(wal.pending().count(), 600);
}

#[test]
fn an_entry_with_a_reply_is_framed_as_outbox_version_2_which_the_previous_release_refuses() {
    let plain = delivered(&record("a", PRIORITY_NORMAL));
    let bytes = crate::encode_outbox_entry(&plain).unwrap();
    assert_eq!(bytes[0], crate::OUTBOX_VERSION);
    let mut with = plain.clone();
    with.reply = Some(crate::Reply {
        topic: "hmi/answers/1".into(),
        correlation: Some(vec![1, 2, 3]),
    });
    let bytes = crate::encode_outbox_entry(&with).unwrap();
    assert_eq!(bytes[0], crate::OUTBOX_VERSION_REPLY);
    assert_eq!(
        crate::decode_outbox_entry(&bytes).unwrap(),
        with,
        "round trip"
    );
    // The previous release decoded only version 1: it drops this entry as undecodable instead
    // of publishing it to the response topic without the checks.
    assert!(matches!(
        crate::record::unframe::<OutboxEntry>(crate::OUTBOX_VERSION, &bytes),
        Err(crate::RecordError::UnknownVersion { version: 2, .. })
    ));
}
