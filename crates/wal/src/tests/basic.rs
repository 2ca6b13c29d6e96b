//! Everyday behaviour: append, pending order, update, remove, dead letters, replay, receipts,
//! dedup window, stats.

use tempfile::TempDir;

use super::support::{
    append, append_one, config, open, pending_ids, reason, receipt, record, segment_files,
    store_data_bytes,
};
use crate::{
    Appended, DeadKind, Entry, Key, Wal, WalConfig, WalError, PRIORITY_CRITICAL, PRIORITY_NORMAL,
};

fn open_with(dir: &TempDir, f: impl FnOnce(&mut WalConfig)) -> Wal {
    let mut cfg = config(dir.path());
    f(&mut cfg);
    Wal::open(cfg).expect("open WAL")
}

#[test]
fn wal_is_a_cheap_send_sync_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Wal>();
}

#[test]
fn append_returns_keys_in_input_order_and_pending_lists_critical_lane_first() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let out = append(
        &wal,
        vec![
            Entry::Pending(record("n1", PRIORITY_NORMAL)),
            Entry::Pending(record("c1", PRIORITY_CRITICAL)),
            Entry::Pending(record("n2", PRIORITY_NORMAL)),
        ],
    );
    let keys: Vec<Key> = out
        .iter()
        .map(|a| match a {
            Appended::Pending(k) => *k,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(keys[0].priority, PRIORITY_NORMAL);
    assert_eq!(keys[1].priority, PRIORITY_CRITICAL);
    assert!(keys[0].seq < keys[1].seq && keys[1].seq < keys[2].seq);

    append_one(&wal, record("c2", PRIORITY_CRITICAL));
    assert_eq!(pending_ids(&wal), ["c1", "c2", "n1", "n2"]);
    assert_eq!(
        wal.get(keys[2]).unwrap(),
        Some(record("n2", PRIORITY_NORMAL))
    );
    wal.assert_counters_consistent();
}

#[test]
fn empty_batch_is_durable_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    assert!(append(&wal, vec![]).is_empty());
    assert_eq!(wal.stats().unwrap().pending, 0);
}

#[test]
fn pending_from_resumes_a_scan_at_the_given_key() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let _a = append_one(&wal, record("a", PRIORITY_NORMAL));
    let b = append_one(&wal, record("b", PRIORITY_NORMAL));
    let _c = append_one(&wal, record("c", PRIORITY_NORMAL));
    let ids: Vec<String> = wal.pending_from(b).map(|r| r.unwrap().1.alert_id).collect();
    assert_eq!(ids, ["b", "c"]);
}

#[test]
fn update_re_appends_the_record_under_a_new_key_and_removes_the_old() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let key = append_one(&wal, record("a", PRIORITY_NORMAL));
    let mut updated = record("a", PRIORITY_NORMAL);
    updated.attempts = 3;
    updated.next_attempt_ms = 42;
    updated.last_error = Some("503".to_owned());
    let new = wal.update(key, &updated).unwrap();
    assert!(new.seq > key.seq, "re-appended under a new seq");
    assert_eq!(new.priority, key.priority);
    assert_eq!(wal.get(key).unwrap(), None, "the old copy is gone");
    assert_eq!(wal.get(new).unwrap(), Some(updated));
    assert_eq!(wal.stats().unwrap().pending, 1);
}

#[test]
fn update_of_a_key_no_longer_pending_fails_and_does_not_recreate_it() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let key = append_one(&wal, record("a", PRIORITY_NORMAL));
    wal.remove(key, receipt(&record("a", PRIORITY_NORMAL), key))
        .unwrap();
    let err = wal.update(key, &record("a", PRIORITY_NORMAL)).unwrap_err();
    assert!(
        matches!(err, WalError::NotPending { key: k } if k == key),
        "{err:?}"
    );
    assert_eq!(wal.get(key).unwrap(), None);
}

#[test]
fn remove_takes_the_record_out_of_pending_and_keeps_its_receipt() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let rec = record("a", PRIORITY_CRITICAL);
    let key = append_one(&wal, rec.clone());
    wal.remove(key, receipt(&rec, key)).unwrap();
    assert_eq!(wal.pending().count(), 0);
    let receipts: Vec<_> = wal.delivered().map(Result::unwrap).collect();
    assert_eq!(receipts, [receipt(&rec, key)]);
    let stats = wal.stats().unwrap();
    assert_eq!(
        (stats.pending, stats.pending_critical, stats.delivered_kept),
        (0, 0, 1)
    );
}

#[test]
fn remove_of_a_missing_key_fails_and_keeps_no_receipt() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let key = Key {
        priority: 1,
        seq: 77,
    };
    let err = wal
        .remove(key, receipt(&record("x", PRIORITY_NORMAL), key))
        .unwrap_err();
    assert!(matches!(err, WalError::NotPending { .. }), "{err:?}");
    assert_eq!(wal.delivered().count(), 0);
}

#[test]
fn delivered_receipts_are_bounded_and_the_oldest_are_evicted() {
    let dir = TempDir::new().unwrap();
    let wal = open_with(&dir, |c| c.delivered_keep = 3);
    for i in 0..5 {
        let rec = record(&format!("a{i}"), PRIORITY_NORMAL);
        let key = append_one(&wal, rec.clone());
        wal.remove(key, receipt(&rec, key)).unwrap();
    }
    let ids: Vec<String> = wal.delivered().map(|r| r.unwrap().alert_id).collect();
    assert_eq!(ids, ["a2", "a3", "a4"]);
    assert_eq!(wal.stats().unwrap().delivered_kept, 3);
    wal.assert_counters_consistent();
}

#[test]
fn delivered_keep_zero_keeps_no_receipts() {
    let dir = TempDir::new().unwrap();
    let wal = open_with(&dir, |c| c.delivered_keep = 0);
    let rec = record("a", PRIORITY_NORMAL);
    let key = append_one(&wal, rec.clone());
    wal.remove(key, receipt(&rec, key)).unwrap();
    assert_eq!(wal.delivered().count(), 0);
    assert_eq!(wal.pending().count(), 0);
}

#[test]
fn dead_letter_moves_the_record_out_of_pending_with_its_reason() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let rec = record("a", PRIORITY_NORMAL);
    let key = append_one(&wal, rec.clone());
    let id = wal
        .dead_letter(key, reason(DeadKind::Rejected), 99)
        .unwrap();
    assert_eq!(wal.pending().count(), 0);
    let dead: Vec<_> = wal.dead_letters().map(Result::unwrap).collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].key, Some(key));
    assert_eq!(dead[0].record.as_ref(), Some(&rec));
    assert_eq!(dead[0].raw, None);
    assert_eq!(dead[0].reason, reason(DeadKind::Rejected));
    assert_eq!(dead[0].dead_at_ms, 99);
    assert_eq!(wal.get_dead_letter(id).unwrap(), Some(dead[0].clone()));
    assert_eq!(wal.stats().unwrap().dead_letters, 1);
    assert!(matches!(
        wal.dead_letter(key, reason(DeadKind::Rejected), 100),
        Err(WalError::NotPending { .. })
    ));
}

#[test]
fn dead_letter_entries_in_a_batch_go_straight_to_dead_letters() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let bad = record("bad", PRIORITY_NORMAL);
    let out = append(
        &wal,
        vec![
            Entry::DeadLetter(bad.clone(), reason(DeadKind::Malformed)),
            Entry::Pending(record("good", PRIORITY_NORMAL)),
        ],
    );
    let Appended::DeadLettered(id) = out[0] else {
        panic!("expected a dead letter, got {out:?}");
    };
    assert!(matches!(out[1], Appended::Pending(_)));
    let dead = wal.get_dead_letter(id).unwrap().expect("stored");
    assert_eq!(dead.key, None);
    assert_eq!(dead.record, Some(bad.clone()));
    assert_eq!(dead.reason.kind, DeadKind::Malformed);
    assert_eq!(dead.dead_at_ms, bad.received_at_ms);
    assert_eq!(pending_ids(&wal), ["good"]);
    // The dead-lettered id is in the dedup window: its redelivery is a duplicate.
    assert_eq!(
        append(
            &wal,
            vec![Entry::DeadLetter(bad, reason(DeadKind::Malformed))]
        ),
        [Appended::Duplicate {
            alert_id: "bad".to_owned()
        }]
    );
}

#[test]
fn replay_moves_a_dead_letter_back_to_pending_with_attempts_reset() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let mut rec = record("a", PRIORITY_CRITICAL);
    let key = append_one(&wal, rec.clone());
    rec.attempts = 7;
    rec.first_attempt_ms = Some(1);
    rec.last_attempt_ms = Some(2);
    rec.next_attempt_ms = 3;
    rec.last_error = Some("boom".to_owned());
    let key = wal.update(key, &rec).unwrap();
    let id = wal
        .dead_letter(key, reason(DeadKind::Exhausted), 5)
        .unwrap();

    let new_key = wal.replay(id).unwrap();
    assert_eq!(new_key.priority, PRIORITY_CRITICAL);
    assert!(new_key.seq > key.seq);
    assert_eq!(
        wal.get(new_key).unwrap(),
        Some(record("a", PRIORITY_CRITICAL))
    );
    assert_eq!(wal.dead_letters().count(), 0);
    assert!(matches!(wal.replay(id), Err(WalError::NoSuchDeadLetter { id: i }) if i == id));
    let stats = wal.stats().unwrap();
    assert_eq!(
        (stats.pending, stats.pending_critical, stats.dead_letters),
        (1, 1, 0)
    );
    wal.assert_counters_consistent();
}

#[test]
fn replay_bypasses_the_dedup_window() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let key = append_one(&wal, record("a", PRIORITY_NORMAL));
    let id = wal.dead_letter(key, reason(DeadKind::Expired), 5).unwrap();
    // "a" is still in the window, yet replay brings it back.
    let new_key = wal.replay(id).unwrap();
    assert_eq!(pending_ids(&wal), ["a"]);
    // And the window still stops a broker redelivery of "a".
    assert!(matches!(
        append(&wal, vec![Entry::Pending(record("a", PRIORITY_NORMAL))])[0],
        Appended::Duplicate { .. }
    ));
    assert!(wal.get(new_key).unwrap().is_some());
}

#[test]
fn alert_id_in_the_dedup_window_is_a_duplicate_and_not_written() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    append_one(&wal, record("a", PRIORITY_NORMAL));
    let out = append(
        &wal,
        vec![
            Entry::Pending(record("a", PRIORITY_NORMAL)),
            Entry::Pending(record("b", PRIORITY_NORMAL)),
        ],
    );
    assert_eq!(
        out[0],
        Appended::Duplicate {
            alert_id: "a".to_owned()
        }
    );
    assert!(matches!(out[1], Appended::Pending(_)));
    assert_eq!(pending_ids(&wal), ["a", "b"]);
}

#[test]
fn alert_id_repeated_within_one_batch_is_written_once() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let out = append(
        &wal,
        vec![
            Entry::Pending(record("a", PRIORITY_NORMAL)),
            Entry::Pending(record("a", PRIORITY_CRITICAL)),
        ],
    );
    assert!(matches!(out[0], Appended::Pending(_)));
    assert_eq!(
        out[1],
        Appended::Duplicate {
            alert_id: "a".to_owned()
        }
    );
    assert_eq!(wal.stats().unwrap().pending, 1);
}

#[test]
fn duplicate_of_a_delivered_alert_inside_the_window_is_not_redelivered() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let rec = record("a", PRIORITY_NORMAL);
    let key = append_one(&wal, rec.clone());
    wal.remove(key, receipt(&rec, key)).unwrap();
    assert!(matches!(
        append(&wal, vec![Entry::Pending(rec)])[0],
        Appended::Duplicate { .. }
    ));
    assert_eq!(wal.pending().count(), 0);
}

#[test]
fn dedup_window_forgets_the_oldest_ids_beyond_its_size() {
    let dir = TempDir::new().unwrap();
    let wal = open_with(&dir, |c| c.dedup_window = 3);
    for id in ["a", "b", "c", "d"] {
        append_one(&wal, record(id, PRIORITY_NORMAL));
    }
    // "a" was evicted by "d"; "b".."d" are remembered.
    let out = append(
        &wal,
        vec![
            Entry::Pending(record("b", PRIORITY_NORMAL)),
            Entry::Pending(record("a", PRIORITY_NORMAL)),
        ],
    );
    assert_eq!(
        out[0],
        Appended::Duplicate {
            alert_id: "b".to_owned()
        }
    );
    assert!(matches!(out[1], Appended::Pending(_)), "{out:?}");
    // Re-adding "a" evicted "b".
    assert!(matches!(
        append(&wal, vec![Entry::Pending(record("b", PRIORITY_NORMAL))])[0],
        Appended::Pending(_)
    ));
    wal.assert_counters_consistent();
}

#[test]
fn dedup_window_of_zero_disables_dedup_even_for_redeliveries_in_one_batch() {
    let dir = TempDir::new().unwrap();
    let wal = open_with(&dir, |c| c.dedup_window = 0);
    append_one(&wal, record("a", PRIORITY_NORMAL));
    append_one(&wal, record("a", PRIORITY_NORMAL));
    let out = wal
        .append_publishes(vec![
            (Entry::Pending(record("b", PRIORITY_NORMAL)), true),
            (Entry::Pending(record("b", PRIORITY_NORMAL)), true),
        ])
        .unwrap()
        .into_inner();
    assert!(
        out.iter().all(|a| matches!(a, Appended::Pending(_))),
        "{out:?}"
    );
    assert_eq!(pending_ids(&wal), ["a", "a", "b", "b"]);
    let dir2 = TempDir::new().unwrap();
    let wal2 = open_with(&dir2, |c| c.dedup_window_ms = 0);
    append_one(&wal2, record("c", PRIORITY_NORMAL));
    append_one(&wal2, record("c", PRIORITY_NORMAL));
    assert_eq!(
        pending_ids(&wal2),
        ["c", "c"],
        "a zero time window disables it too"
    );
}

/// Issue 9, point 1: a device that repeats a persisting alarm with a byte-identical payload
/// (no timestamp) got every repeat acked and never delivered. A first publish (DUP=0) is always
/// a new alert; only a redelivery (DUP=1) inside the window is a duplicate.
#[test]
fn a_repeat_is_a_new_alert_and_only_a_redelivery_inside_the_window_is_a_duplicate() {
    let dir = TempDir::new().unwrap();
    let wal = open_with(&dir, |c| c.dedup_window_ms = 60_000);
    let at = |ms: u64| {
        let mut r = record("pump-3-HIGH_TEMP", PRIORITY_NORMAL);
        r.received_at_ms = 1_700_000_000_000 + ms;
        Entry::Pending(r)
    };
    let out = |v: Vec<(Entry, bool)>| wal.append_publishes(v).unwrap().into_inner();
    // Two first publishes, identical: two alerts.
    let first = out(vec![(at(0), false)]);
    let repeat = out(vec![(at(10_000), false)]);
    assert!(matches!(first[0], Appended::Pending(_)) && matches!(repeat[0], Appended::Pending(_)));
    // The broker redelivers the second (DUP=1) 5 s later: a duplicate.
    let redelivered = out(vec![(at(15_000), true)]);
    assert!(
        matches!(redelivered[0], Appended::Duplicate { .. }),
        "{redelivered:?}"
    );
    // A DUP=1 publish long after the window: stored (it cannot be a redelivery of ours).
    let late = out(vec![(at(10_000 + 60_001), true)]);
    assert!(matches!(late[0], Appended::Pending(_)), "{late:?}");
    assert_eq!(wal.stats().unwrap().pending, 3);
}

#[test]
fn the_same_alert_id_on_two_topics_is_two_alerts() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let mut a = record("1", PRIORITY_NORMAL);
    a.topic = "plant/pump-1/alerts".into();
    let mut b = record("1", PRIORITY_NORMAL);
    b.topic = "plant/pump-2/alerts".into();
    let out = wal
        .append_publishes(vec![
            (Entry::Pending(a.clone()), true),
            (Entry::Pending(b), true),
        ])
        .unwrap()
        .into_inner();
    assert!(
        out.iter().all(|x| matches!(x, Appended::Pending(_))),
        "{out:?}"
    );
    // ... while a redelivery on the first topic is still recognised.
    let again = wal
        .append_publishes(vec![(Entry::Pending(a), true)])
        .unwrap()
        .into_inner();
    assert!(matches!(again[0], Appended::Duplicate { .. }));
}

#[test]
fn stats_count_lanes_dead_letters_receipts_and_the_oldest_pending() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let mut old_normal = record("n-old", PRIORITY_NORMAL);
    old_normal.received_at_ms = 100;
    let mut crit = record("c", PRIORITY_CRITICAL);
    crit.received_at_ms = 200;
    let mut dead = record("d", PRIORITY_NORMAL);
    dead.received_at_ms = 50;
    let out = append(
        &wal,
        vec![
            Entry::Pending(old_normal),
            Entry::Pending(crit),
            Entry::Pending(record("n-new", PRIORITY_NORMAL)),
            Entry::Pending(dead),
        ],
    );
    let Appended::Pending(dead_key) = out[3] else {
        panic!()
    };
    wal.dead_letter(dead_key, reason(DeadKind::Rejected), 1)
        .unwrap();
    let stats = wal.stats().unwrap();
    assert_eq!(stats.pending, 3);
    assert_eq!(stats.pending_critical, 1);
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(stats.delivered_kept, 0);
    assert_eq!(stats.oldest_pending_received_ms, Some(100));
    assert!(stats.size_on_disk > 0);
}

#[test]
fn data_bytes_are_the_data_files_and_fall_when_emptied_segments_are_deleted() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    assert_eq!(
        wal.data_bytes(),
        store_data_bytes(&wal),
        "an empty segment header"
    );
    let out = append(
        &wal,
        vec![
            Entry::Pending(record("a", PRIORITY_NORMAL)),
            Entry::DeadLetter(record("bad", PRIORITY_NORMAL), reason(DeadKind::Malformed)),
        ],
    );
    let Appended::Pending(a) = out[0] else {
        panic!("unexpected {out:?}")
    };
    assert!(wal.data_bytes() > 0);
    assert_eq!(
        wal.data_bytes(),
        store_data_bytes(&wal),
        "the dead letter is not counted"
    );
    assert_eq!(wal.stats().unwrap().data_bytes, wal.data_bytes());

    // Fill several 64 KiB segments, deliver everything: the sealed segments are deleted and the
    // data bytes fall back to about one segment plus the dead letter and the receipts.
    let mut keys = vec![a];
    for i in 0..2_000 {
        keys.push(append_one(
            &wal,
            record(&format!("fill-{i}"), PRIORITY_NORMAL),
        ));
    }
    let full = wal.data_bytes();
    assert!(segment_files(&wal) > 3, "the fill spans segments");
    for key in keys {
        let rec = wal.get(key).unwrap().unwrap();
        wal.remove(key, receipt(&rec, key)).unwrap();
    }
    // The next durable write rotates away from the last full segment and cleans up.
    append_one(&wal, record("after", PRIORITY_NORMAL));
    wal.flush().unwrap();
    assert!(
        segment_files(&wal) <= 2,
        "{} segments left",
        segment_files(&wal)
    );
    assert!(
        wal.data_bytes() < full / 2,
        "{} of {full}",
        wal.data_bytes()
    );
    assert_eq!(wal.data_bytes(), store_data_bytes(&wal));
    wal.assert_counters_consistent();
}

#[test]
fn stats_of_an_empty_wal_have_no_oldest_pending() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let stats = wal.stats().unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.oldest_pending_received_ms, None);
    assert!(
        stats.data_bytes < 64,
        "only an empty segment: {}",
        stats.data_bytes
    );
}

#[test]
fn flush_succeeds_on_a_healthy_wal() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    append_one(&wal, record("a", PRIORITY_NORMAL));
    wal.flush().unwrap();
    assert!(!wal.is_poisoned());
}

/// Issue 9, point 3: dead letters counted against the store budget, never evicted, could not be
/// purged: a device flooding bad payloads stopped ingest of every device for good.
#[test]
fn dead_letters_over_their_budget_are_exported_oldest_first_then_removed() {
    use std::sync::{Arc, Mutex};
    #[derive(Default, Clone)]
    struct Collect(Arc<Mutex<Vec<u64>>>);
    impl crate::DeadLetterSink for Collect {
        fn export(&self, letters: &[crate::DeadLetter]) -> std::io::Result<()> {
            self.0.lock().unwrap().extend(letters.iter().map(|d| d.id));
            Ok(())
        }
    }
    let dir = TempDir::new().unwrap();
    let wal = open_with(&dir, |c| c.dead_max_count = 3);
    let sink = Collect::default();
    wal.set_dead_letter_sink(Box::new(sink.clone()));
    let before = wal.data_bytes();
    for i in 0..5 {
        append(
            &wal,
            vec![Entry::DeadLetter(
                record(&format!("bad-{i}"), PRIORITY_NORMAL),
                reason(DeadKind::Malformed),
            )],
        );
    }
    assert_eq!(
        *sink.0.lock().unwrap(),
        vec![1, 2],
        "the two oldest exported"
    );
    let kept: Vec<u64> = wal.dead_letters().map(|d| d.unwrap().id).collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert_eq!(wal.dead_letters_evicted(), 2);
    assert_eq!(
        wal.data_bytes(),
        before,
        "dead letters never count toward the ingest budget"
    );
    // Kept across reopen.
    drop(wal);
    let wal = open_with(&dir, |c| c.dead_max_count = 3);
    assert_eq!(wal.stats().unwrap().dead_letters, 3);
}

#[test]
fn purge_removes_the_selected_dead_letters_durably() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    append(
        &wal,
        vec![
            Entry::DeadLetter(record("m", PRIORITY_NORMAL), reason(DeadKind::Malformed)),
            Entry::DeadLetter(record("o", PRIORITY_NORMAL), reason(DeadKind::Oversize)),
            Entry::DeadLetter(record("m2", PRIORITY_NORMAL), reason(DeadKind::Malformed)),
        ],
    );
    let n = wal
        .purge_dead_letters(|d| d.reason.kind == DeadKind::Malformed)
        .unwrap();
    assert_eq!(n, 2);
    wal.abandon();
    let wal = open(dir.path());
    let left: Vec<_> = wal.dead_letters().map(|d| d.unwrap().reason.kind).collect();
    assert_eq!(left, vec![DeadKind::Oversize]);
}
