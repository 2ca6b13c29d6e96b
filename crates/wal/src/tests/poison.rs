//! Invariant I5: a failed fsync poisons the WAL; no `Durable` comes back, nothing is retried,
//! every later write fails with `Poisoned`. And I1's order: flush first, then fsync.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tempfile::TempDir;

use super::support::{config, reason, receipt, record, ScriptedSync};
use crate::{DeadKind, Entry, Key, SyncTarget, Wal, WalError, PRIORITY_NORMAL};

fn open_scripted(dir: &TempDir, sync: &ScriptedSync) -> Wal {
    Wal::open_with_sync(config(dir.path()), Box::new(sync.clone())).expect("open WAL")
}

#[test]
fn failing_fsync_poisons_the_wal_and_returns_no_durable() {
    let dir = TempDir::new().unwrap();
    // Open's own sync succeeds, the first append's fails.
    let sync = ScriptedSync::failing_after(1);
    let wal = open_scripted(&dir, &sync);
    let ok_key = Key {
        priority: PRIORITY_NORMAL,
        seq: 1,
    };

    let err = wal
        .append_batch(vec![Entry::Pending(record("a", PRIORITY_NORMAL))])
        .expect_err("no Durable after a failed fsync");
    assert!(matches!(err, WalError::SyncFailed { .. }), "{err:?}");
    assert!(wal.is_poisoned());
    assert!(wal.clone().is_poisoned(), "clones share the poison");

    let again = wal.append_batch(vec![Entry::Pending(record("b", PRIORITY_NORMAL))]);
    assert!(matches!(again, Err(WalError::Poisoned)), "{again:?}");
    assert!(matches!(wal.append_batch(vec![]), Err(WalError::Poisoned)));
    assert!(matches!(wal.flush(), Err(WalError::Poisoned)));
    assert!(matches!(
        wal.update(ok_key, &record("a", PRIORITY_NORMAL)),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(
        wal.remove(ok_key, receipt(&record("a", PRIORITY_NORMAL), ok_key)),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(
        wal.dead_letter(ok_key, reason(DeadKind::Rejected), 1),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(wal.replay(1), Err(WalError::Poisoned)));
    assert_eq!(sync.calls(), 2, "the failed fsync was retried");

    // Reads still work, for the operator.
    assert!(wal.stats().is_ok());
    assert!(wal.pending().all(|item| item.is_ok()));
}

#[test]
fn failing_fsync_at_open_fails_the_open() {
    let dir = TempDir::new().unwrap();
    let sync = ScriptedSync::failing_after(0);
    let err = Wal::open_with_sync(config(dir.path()), Box::new(sync)).unwrap_err();
    assert!(matches!(err, WalError::SyncFailed { .. }), "{err:?}");
}

#[test]
fn poisoned_process_can_reopen_after_restart() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open_scripted(&dir, &ScriptedSync::failing_after(1));
        assert!(wal
            .append_batch(vec![Entry::Pending(record("x", PRIORITY_NORMAL))])
            .is_err());
        assert!(wal.is_poisoned());
    }
    let wal = open_scripted(&dir, &ScriptedSync::never_failing());
    assert!(!wal.is_poisoned());
    let _ = wal
        .append_batch(vec![Entry::Pending(record("a", PRIORITY_NORMAL))])
        .unwrap();
}

#[test]
fn every_durable_append_is_fsynced_once() {
    let dir = TempDir::new().unwrap();
    let sync = ScriptedSync::never_failing();
    let wal = open_scripted(&dir, &sync);
    let at_open = sync.calls();
    for id in ["a", "b", "c"] {
        let _ = wal
            .append_batch(vec![Entry::Pending(record(id, PRIORITY_NORMAL))])
            .unwrap();
    }
    assert_eq!(sync.calls() - at_open, 3);
}

/// Checks, at each fsync, whether the marker bytes are already in the file being synced.
struct FlushedBeforeSync {
    marker: Vec<u8>,
    seen: Arc<AtomicBool>,
}

impl SyncTarget for FlushedBeforeSync {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; file.metadata()?.len() as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let found = bytes.windows(self.marker.len()).any(|w| w == self.marker);
        self.seen.store(found, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn batch_reaches_the_data_file_before_the_fsync() {
    let dir = TempDir::new().unwrap();
    let marker = b"unmistakable-marker-4711".to_vec();
    let seen = Arc::new(AtomicBool::new(false));
    let wal = Wal::open_with_sync(
        config(dir.path()),
        Box::new(FlushedBeforeSync {
            marker: marker.clone(),
            seen: seen.clone(),
        }),
    )
    .unwrap();
    assert!(!seen.load(Ordering::SeqCst));
    let mut rec = record("a", PRIORITY_NORMAL);
    rec.payload = marker;
    let _ = wal.append_batch(vec![Entry::Pending(rec)]).unwrap();
    assert!(
        seen.load(Ordering::SeqCst),
        "fsync ran before the batch was written"
    );
}

/// Issue 9, point 6: deleting the store while the agent ran let it ack alerts into deleted
/// files; they were gone after a restart.
#[test]
fn a_deleted_store_directory_stops_group_commits() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("store");
    let wal = open_scripted_at(&dir);
    let _ = wal
        .append_batch(vec![Entry::Pending(record("before", PRIORITY_NORMAL))])
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = wal
        .append_batch(vec![Entry::Pending(record("after", PRIORITY_NORMAL))])
        .expect_err("no Durable into a deleted store");
    assert!(matches!(err, WalError::StoreVanished { .. }), "{err:?}");
    assert!(wal.is_poisoned());
}

#[test]
fn a_replaced_store_directory_stops_group_commits() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("store");
    let wal = open_scripted_at(&dir);
    std::fs::rename(&dir, parent.path().join("moved")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let err = wal
        .append_batch(vec![Entry::Pending(record("x", PRIORITY_NORMAL))])
        .expect_err("no Durable into a replaced store");
    assert!(matches!(err, WalError::StoreVanished { .. }), "{err:?}");
}

fn open_scripted_at(dir: &std::path::Path) -> Wal {
    Wal::open_with_sync(config(dir), Box::new(ScriptedSync::never_failing())).expect("open WAL")
}
