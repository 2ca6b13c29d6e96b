//! Builders and seams shared by the WAL tests.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{
    Appended, DeadKind, DeadReason, Entry, Key, Priority, Receipt, Record, SyncTarget, Wal,
    WalConfig,
};

/// Config for tests: small segments (so tests cross segment boundaries), checkpoints only when
/// the test closes the WAL.
pub(crate) fn config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_bytes: 64 * 1024,
        checkpoint_bytes: u64::MAX,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..WalConfig::new(dir)
    }
}

/// Opens with the real fsync ([`crate::FileSync`]).
pub(crate) fn open(dir: &Path) -> Wal {
    Wal::open(config(dir)).expect("open WAL")
}

pub(crate) fn record(alert_id: &str, priority: Priority) -> Record {
    Record::new(
        alert_id.to_owned(),
        format!("devices/{alert_id}/alerts"),
        format!("{{\"id\":\"{alert_id}\"}}").into_bytes(),
        priority,
        1_700_000_000_000,
    )
}

pub(crate) fn reason(kind: DeadKind) -> DeadReason {
    DeadReason {
        kind,
        message: format!("{kind:?} in test"),
        status: Some(422),
        api_message: Some("bad input".to_owned()),
    }
}

pub(crate) fn receipt(record: &Record, key: Key) -> Receipt {
    Receipt {
        alert_id: record.alert_id.clone(),
        seq: key.seq,
        delivered_at_ms: record.received_at_ms + 10,
        status: 202,
        execution_id: Some(format!("exec-{}", key.seq)),
        correlation_id: None,
        attempts: record.attempts + 1,
        received_at_ms: record.received_at_ms,
    }
}

/// Appends and unwraps the durable result.
pub(crate) fn append(wal: &Wal, entries: Vec<Entry>) -> Vec<Appended> {
    wal.append_batch(entries)
        .expect("append_batch")
        .into_inner()
}

/// Appends one pending record and returns its key.
pub(crate) fn append_one(wal: &Wal, record: Record) -> Key {
    match append(wal, vec![Entry::Pending(record)]).as_slice() {
        [Appended::Pending(key)] => *key,
        other => panic!("expected one pending key, got {other:?}"),
    }
}

pub(crate) fn pending_ids(wal: &Wal) -> Vec<String> {
    wal.pending()
        .map(|item| item.expect("decodable").1.alert_id)
        .collect()
}

/// Scripted fsync: succeeds `ok_calls` times, then fails every time. Counts calls.
#[derive(Clone, Debug)]
pub(crate) struct ScriptedSync {
    ok_calls: usize,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl ScriptedSync {
    pub(crate) fn failing_after(ok_calls: usize) -> Self {
        ScriptedSync {
            ok_calls,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn never_failing() -> Self {
        Self::failing_after(usize::MAX)
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl SyncTarget for ScriptedSync {
    fn sync_data(&self, _file: &std::fs::File) -> io::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.ok_calls {
            Ok(())
        } else {
            Err(io::Error::other("injected fsync failure (EIO)"))
        }
    }
}

/// The sizes of the segment files (what the disk budget counts), read from the directory.
pub(crate) fn store_data_bytes(wal: &Wal) -> u64 {
    std::fs::read_dir(wal.dir())
        .expect("list store")
        .map(|e| e.expect("entry"))
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("seg-")
        })
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

/// Segment files in the store.
pub(crate) fn segment_files(wal: &Wal) -> usize {
    std::fs::read_dir(wal.dir())
        .expect("list store")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        })
        .count()
}
