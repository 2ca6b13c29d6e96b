//! Builders and seams shared by the WAL tests.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{
    encode_dead_letter, encode_record, Appended, DeadKind, DeadReason, Entry, Key, Priority,
    Receipt, Record, SyncTarget, Wal, WalConfig,
};

/// Config for tests: small cache, no background flusher (tests decide when to flush).
pub(crate) fn config(dir: &Path) -> WalConfig {
    WalConfig {
        cache_capacity_bytes: 1024 * 1024,
        flush_every_ms: None,
        ..WalConfig::new(dir)
    }
}

/// Opens with the real fsync ([`crate::DataFileSync`]).
pub(crate) fn open(dir: &Path) -> Wal {
    Wal::open(config(dir)).expect("open WAL")
}

pub(crate) fn record(alert_id: &str, priority: Priority) -> Record {
    Record {
        alert_id: alert_id.to_owned(),
        topic: format!("devices/{alert_id}/alerts"),
        payload: format!("{{\"id\":\"{alert_id}\"}}").into_bytes(),
        priority,
        received_at_ms: 1_700_000_000_000,
        attempts: 0,
        first_attempt_ms: None,
        last_attempt_ms: None,
        next_attempt_ms: 0,
        last_error: None,
    }
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
    fn sync_data(&self) -> io::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.ok_calls {
            Ok(())
        } else {
            Err(io::Error::other("injected fsync failure (EIO)"))
        }
    }
}

/// The encoded lengths of everything in pending and dead letters, read back from the trees.
pub(crate) fn encoded_data_bytes(wal: &Wal) -> u64 {
    let pending: usize = wal
        .pending()
        .map(|item| encode_record(&item.expect("decodable").1).unwrap().len())
        .sum();
    let dead: usize = wal
        .dead_letters()
        .map(|item| encode_dead_letter(&item.expect("decodable")).unwrap().len())
        .sum();
    (pending + dead) as u64
}
