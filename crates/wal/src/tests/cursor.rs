//! Cursors page through a lane in seq order with memory bounded by the page, across segments,
//! skipping what was removed and finding what was appended since; a damaged region of a sealed
//! segment comes back as corrupt items, and the rest of the lane still drains. A checkpoint
//! makes reopening read nothing, and a store without one reopens to the same state.

use tempfile::TempDir;

use super::support::{append_one, open, pending_ids, receipt, record, segment_files};
use crate::{RecordError, PRIORITY_CRITICAL, PRIORITY_NORMAL};

#[test]
fn a_cursor_pages_a_lane_in_order_across_segments_skipping_removed_records() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let mut keys = Vec::new();
    for i in 0..3000 {
        let lane = if i % 10 == 0 {
            PRIORITY_CRITICAL
        } else {
            PRIORITY_NORMAL
        };
        keys.push(append_one(&wal, record(&format!("a{i:05}"), lane)));
    }
    assert!(segment_files(&wal) > 5);
    let mut cursor = wal.cursor(PRIORITY_NORMAL);
    let mut seen = Vec::new();
    loop {
        let page = wal.read(&mut cursor, 100).unwrap();
        assert!(page.len() <= 100);
        if page.is_empty() {
            break;
        }
        for item in page {
            let (key, rec) = item.unwrap();
            assert_eq!(key.priority, PRIORITY_NORMAL);
            // Remove every other record read so far and one not read yet.
            if key.seq % 2 == 0 {
                wal.remove(key, receipt(&rec, key)).unwrap();
            }
            seen.push(key.seq);
        }
        let ahead = keys[(seen.len() * 10 / 9 + 50).min(keys.len() - 1)];
        if ahead.priority == PRIORITY_NORMAL && !seen.contains(&ahead.seq) {
            let _ = wal.remove(ahead, receipt(&record("x", PRIORITY_NORMAL), ahead));
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "seq order");
    assert!(
        seen.len() > 2000 && seen.len() < 2700,
        "{} read",
        seen.len()
    );
    // Appended after the cursor caught up: found by the next read.
    let later = append_one(&wal, record("later", PRIORITY_NORMAL));
    let page = wal.read(&mut cursor, 10).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].as_ref().unwrap().0, later);
}

#[test]
fn a_damaged_region_in_a_sealed_segment_is_reported_and_the_rest_drains() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    for i in 0..600 {
        append_one(&wal, record(&format!("d{i:04}"), PRIORITY_NORMAL));
    }
    wal.close().unwrap();
    drop(wal);
    let first = dir.path().join("seg-0000000001.log");
    let mut bytes = std::fs::read(&first).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 40] {
        *b ^= 0x5a;
    }
    std::fs::write(&first, &bytes).unwrap();
    let wal = open(dir.path());
    let items: Vec<_> = wal.pending().collect();
    let corrupt: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
    let good = items.iter().filter(|i| i.is_ok()).count();
    assert!(
        !corrupt.is_empty() && corrupt.len() <= 2,
        "{} corrupt",
        corrupt.len()
    );
    assert!(corrupt
        .iter()
        .all(|c| matches!(c.error, RecordError::Unreadable { .. }) || c.raw.len() <= 64 << 10));
    assert_eq!(
        good + corrupt.len(),
        600,
        "every record is either read or reported"
    );
    for c in &corrupt {
        wal.dead_letter_corrupt(c, super::support::reason(crate::DeadKind::Corrupt), 1)
            .unwrap();
    }
    assert_eq!(wal.stats().unwrap().pending as usize, good);
    assert_eq!(wal.stats().unwrap().dead_letters as usize, corrupt.len());
}

#[test]
fn reopening_with_or_without_a_checkpoint_gives_the_same_state() {
    let dir = TempDir::new().unwrap();
    let expected = {
        let wal = open(dir.path());
        let mut keys = Vec::new();
        for i in 0..1500 {
            keys.push(append_one(&wal, record(&format!("c{i}"), PRIORITY_NORMAL)));
        }
        for k in keys.iter().step_by(3) {
            wal.remove(*k, receipt(&record("c", PRIORITY_NORMAL), *k))
                .unwrap();
        }
        let ids = pending_ids(&wal);
        wal.close().unwrap();
        ids
    };
    assert!(dir.path().join("checkpoint").exists());
    let wal = open(dir.path());
    assert_eq!(pending_ids(&wal), expected);
    drop(wal);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let wal = open(dir.path());
    assert_eq!(pending_ids(&wal), expected, "a full replay agrees");
    wal.assert_counters_consistent();
}
