//! Reopening: everything written is still there, ids keep increasing, bounds still hold.

use tempfile::TempDir;

use super::support::{
    append, append_one, config, open, pending_ids, reason, receipt, record, store_data_bytes,
};
use crate::{
    Appended, DeadKind, Entry, Wal, WalError, PRIORITY_CRITICAL, PRIORITY_NORMAL, STORE_FORMAT,
};

#[test]
fn reopen_after_drop_keeps_pending_dead_letters_and_receipts() {
    let dir = TempDir::new().unwrap();
    let (updated_key, updated, dead_id) = {
        let wal = open(dir.path());
        let keys: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| append_one(&wal, record(id, PRIORITY_NORMAL)))
            .collect();
        let mut updated = record("a", PRIORITY_NORMAL);
        updated.attempts = 2;
        updated.next_attempt_ms = 1234;
        let updated_key = wal.update(keys[0], &updated).unwrap();
        wal.remove(keys[1], receipt(&record("b", PRIORITY_NORMAL), keys[1]))
            .unwrap();
        let dead_id = wal
            .dead_letter(keys[2], reason(DeadKind::Rejected), 7)
            .unwrap();
        (updated_key, updated, dead_id)
    };
    let wal = open(dir.path());
    // The update re-appended "a" behind "d".
    assert_eq!(pending_ids(&wal), ["d", "a"]);
    assert_eq!(wal.get(updated_key).unwrap(), Some(updated));
    let dead: Vec<_> = wal.dead_letters().map(Result::unwrap).collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, dead_id);
    let receipts: Vec<_> = wal.delivered().map(|r| r.unwrap().alert_id).collect();
    assert_eq!(receipts, ["b"]);
    let stats = wal.stats().unwrap();
    assert_eq!(
        (stats.pending, stats.dead_letters, stats.delivered_kept),
        (2, 1, 1)
    );
    wal.assert_counters_consistent();
}

#[test]
fn data_bytes_are_recomputed_at_open() {
    let dir = TempDir::new().unwrap();
    let before = {
        let wal = open(dir.path());
        let keys: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| append_one(&wal, record(id, PRIORITY_CRITICAL)))
            .collect();
        append(
            &wal,
            vec![Entry::DeadLetter(
                record("bad", PRIORITY_NORMAL),
                reason(DeadKind::Malformed),
            )],
        );
        wal.remove(keys[0], receipt(&record("a", PRIORITY_CRITICAL), keys[0]))
            .unwrap();
        wal.dead_letter(keys[1], reason(DeadKind::Rejected), 7)
            .unwrap();
        wal.flush().unwrap();
        let bytes = wal.data_bytes();
        assert!(bytes > 0);
        bytes
    };
    let wal = open(dir.path());
    assert_eq!(wal.data_bytes(), before);
    assert_eq!(wal.stats().unwrap().data_bytes, before);
    assert_eq!(wal.data_bytes(), store_data_bytes(&wal));
    wal.assert_counters_consistent();
}

#[test]
fn seq_keeps_increasing_across_reopen_even_after_pending_emptied() {
    let dir = TempDir::new().unwrap();
    let last = {
        let wal = open(dir.path());
        let mut last = None;
        for id in ["a", "b", "c"] {
            let rec = record(id, PRIORITY_CRITICAL);
            let key = append_one(&wal, rec.clone());
            wal.remove(key, receipt(&rec, key)).unwrap();
            last = Some(key);
        }
        last.unwrap()
    };
    let wal = open(dir.path());
    assert_eq!(wal.pending().count(), 0);
    let next = append_one(&wal, record("d", PRIORITY_NORMAL));
    assert!(next.seq > last.seq, "{next:?} after {last:?}");
}

#[test]
fn dead_letter_ids_stay_unique_across_reopen_even_after_replay() {
    let dir = TempDir::new().unwrap();
    let first = {
        let wal = open(dir.path());
        let key = append_one(&wal, record("a", PRIORITY_NORMAL));
        let id = wal.dead_letter(key, reason(DeadKind::Expired), 1).unwrap();
        wal.replay(id).unwrap();
        assert_eq!(wal.dead_letters().count(), 0);
        id
    };
    let wal = open(dir.path());
    let out = append(
        &wal,
        vec![Entry::DeadLetter(
            record("m", PRIORITY_NORMAL),
            reason(DeadKind::Malformed),
        )],
    );
    let Appended::DeadLettered(second) = out[0] else {
        panic!("{out:?}");
    };
    assert!(
        second > first,
        "dead-letter id {second} reused or went back ({first})"
    );
}

#[test]
fn dedup_window_survives_reopen_and_keeps_evicting_in_order() {
    let dir = TempDir::new().unwrap();
    let mut cfg = config(dir.path());
    cfg.dedup_window = 2;
    {
        let wal = Wal::open(cfg.clone()).unwrap();
        append_one(&wal, record("a", PRIORITY_NORMAL));
        append_one(&wal, record("b", PRIORITY_NORMAL));
    }
    let wal = Wal::open(cfg).unwrap();
    assert!(matches!(
        append(&wal, vec![Entry::Pending(record("b", PRIORITY_NORMAL))])[0],
        Appended::Duplicate { .. }
    ));
    // "c" evicts "a", the oldest.
    append_one(&wal, record("c", PRIORITY_NORMAL));
    assert!(matches!(
        append(&wal, vec![Entry::Pending(record("a", PRIORITY_NORMAL))])[0],
        Appended::Pending(_)
    ));
    wal.assert_counters_consistent();
}

#[test]
fn smaller_bounds_after_reopen_are_applied_at_the_next_write() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(dir.path());
        for i in 0..4 {
            let rec = record(&format!("r{i}"), PRIORITY_NORMAL);
            let key = append_one(&wal, rec.clone());
            wal.remove(key, receipt(&rec, key)).unwrap();
        }
    }
    let mut cfg = config(dir.path());
    cfg.delivered_keep = 2;
    cfg.dedup_window = 1;
    let wal = Wal::open(cfg).unwrap();
    let rec = record("r4", PRIORITY_NORMAL);
    let key = append_one(&wal, rec.clone());
    wal.remove(key, receipt(&rec, key)).unwrap();
    let ids: Vec<_> = wal.delivered().map(|r| r.unwrap().alert_id).collect();
    assert_eq!(ids, ["r3", "r4"]);
    // Only "r4" is remembered now.
    assert!(matches!(
        append(&wal, vec![Entry::Pending(record("r0", PRIORITY_NORMAL))])[0],
        Appended::Pending(_)
    ));
    wal.assert_counters_consistent();
}

#[test]
fn record_larger_than_a_segment_survives_reopen() {
    // 300 KiB is over the tests' 64 KiB segment size: one frame may overfill a segment.
    let dir = TempDir::new().unwrap();
    let mut big = record("big", PRIORITY_NORMAL);
    big.payload = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    {
        let wal = open(dir.path());
        append_one(&wal, big.clone());
    }
    let wal = open(dir.path());
    let all: Vec<_> = wal.pending().map(|r| r.unwrap().1).collect();
    assert_eq!(all, [big]);
}

#[test]
fn store_of_another_format_is_refused_at_open() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    std::fs::write(
        dir.path().join("FORMAT"),
        format!("alertbridge-wal {}\n", STORE_FORMAT + 1),
    )
    .unwrap();
    let err = Wal::open(config(dir.path())).unwrap_err();
    assert!(
        matches!(err, WalError::UnsupportedStoreFormat { found, .. } if found == STORE_FORMAT + 1),
        "{err:?}"
    );
}

#[test]
fn second_open_of_a_live_wal_reports_it_locked() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path());
    let err = Wal::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err:?}");
}
