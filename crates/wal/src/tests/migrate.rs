//! Migration of a store written by format 1 (sled, the last release before the segment log):
//! the fixture `tests/fixtures/sled-v1-store` was written through that release's public API
//! (see its README). Nothing may be lost: every pending record with its attempt fields, every
//! dead letter with its id, the receipts, and seqs that keep increasing.

use std::path::Path;

use tempfile::TempDir;

use super::support::{append_one, config, open, record};
use crate::{DeadKind, Wal, PRIORITY_NORMAL};

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sled-v1-store");
    std::fs::create_dir_all(to).unwrap();
    for name in ["conf", "db"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

#[test]
fn a_sled_store_is_migrated_at_open_losing_nothing() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("store");
    copy_fixture(&dir);
    let wal = Wal::open(config(&dir)).expect("open migrates");
    let stats = wal.stats().unwrap();
    assert_eq!((stats.pending, stats.pending_critical), (28, 7));
    assert_eq!(stats.dead_letters, 3);
    assert_eq!(stats.delivered_kept, 10);
    let pending: Vec<_> = wal.pending().map(|r| r.expect("decodes")).collect();
    assert_eq!(pending.len(), 28);
    let retried: Vec<_> = pending.iter().filter(|(_, r)| r.attempts == 3).collect();
    assert_eq!(retried.len(), 3, "attempt fields kept");
    assert!(retried
        .iter()
        .all(|(_, r)| r.next_attempt_ms == 1_760_000_200_000
            && r.last_error.as_deref() == Some("503")));
    let kinds: Vec<_> = wal
        .dead_letters()
        .map(|d| d.expect("decodes").reason.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == DeadKind::Rejected).count(),
        2
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == DeadKind::Malformed).count(),
        1
    );
    let receipts: Vec<_> = wal.delivered().map(|r| r.expect("decodes")).collect();
    assert_eq!(receipts.len(), 10);
    // Seqs keep increasing past the old store's.
    let max_old = pending.iter().map(|(k, _)| k.seq).max().unwrap();
    let new = append_one(&wal, record("after-migration", PRIORITY_NORMAL));
    assert!(new.seq > max_old);
    // The sled store is kept beside it, untouched, until an operator removes it.
    let backups: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store.sled-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    drop(wal);
    // A second open is a plain open.
    let wal = open(&dir);
    assert_eq!(wal.stats().unwrap().pending, 29);
}

#[test]
fn an_interrupted_migration_is_finished_or_redone_at_the_next_open() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("store");
    copy_fixture(&dir);
    // Crash after the new store was built, before it was moved into place: redone from the
    // untouched old store (the incomplete copy is removed).
    std::fs::create_dir_all(parent.path().join("store.v2-migrating")).unwrap();
    std::fs::write(
        parent.path().join("store.v2-migrating/seg-0000000001.log"),
        b"partial",
    )
    .unwrap();
    let wal = Wal::open(config(&dir)).expect("open");
    assert_eq!(wal.stats().unwrap().pending, 28);
    assert!(!parent.path().join("store.v2-migrating").exists());
}
