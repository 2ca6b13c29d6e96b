//! [`WalError`]: what went wrong in a WAL operation, and what the caller does next.

use std::io;
use std::path::PathBuf;

use crate::letters::DeadKind;
use crate::record::{Key, RecordError};

/// Errors of [`Wal`](crate::Wal) operations. Each variant says when it happens and what the
/// caller does next.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An earlier flush or fsync failed (invariant I5); nothing more is written. Stop acking,
    /// exit non-zero and let systemd restart the agent.
    #[error("the WAL is poisoned by an earlier failed flush or fsync; restart the process")]
    Poisoned,
    /// fsync of the store failed in this call; the WAL is now poisoned. Do not ack; exit non-zero.
    #[error("fsync of the WAL failed (the WAL is now poisoned)")]
    SyncFailed {
        /// The I/O error of `sync_data`.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a file of the store failed. A failed write poisons the WAL (invariant
    /// I5): exit non-zero and let systemd restart the agent. A failed read: retry later or
    /// report.
    #[error("{op} ({path}) failed")]
    Io {
        /// What the WAL was doing.
        op: &'static str,
        /// File or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Converting a format-1 (sled) store failed; the old store is untouched. Fix the cause
    /// (space, permissions) and start again, or run the previous release.
    #[error("migrating the sled store at {dir} to format 2: {message}")]
    Migrate {
        /// The store directory.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
    /// The store directory or the active segment is no longer the one this process opened
    /// (deleted, unmounted, replaced): writing on would ack alerts into files nobody will read.
    /// The WAL is poisoned; exit non-zero, the broker keeps every unacked alert.
    #[error("the store at {dir} vanished or was replaced while running ({what}); stopping before acking anything more")]
    StoreVanished {
        /// The store directory.
        dir: PathBuf,
        /// What was found instead.
        what: String,
    },
    /// The filesystem is full: nothing of this call was written (a partial write was cut off
    /// again) and the WAL is **not** poisoned. Ingest holds back (the broker keeps the alerts),
    /// the drain retries later; removals are kept in memory and written when space returns.
    #[error("no space left on the store's filesystem ({op})")]
    NoSpace {
        /// What the WAL was doing.
        op: &'static str,
    },
    /// Creating or syncing the WAL directory or its files at open failed. Fix the path or the
    /// permissions; the agent exits.
    #[error("opening the WAL at {path}")]
    Open {
        /// File or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the WAL directory (the `flock` on `<dir>/LOCK`): the agent is already
    /// running, or the CLI was started next to it. Stop the other process or use another `dir`.
    #[error("the WAL at {dir} is locked by another process (is the agent already running?)")]
    Locked {
        /// The WAL directory.
        dir: PathBuf,
        /// The lock error.
        #[source]
        source: io::Error,
    },
    /// The store was written by an incompatible release of this crate. Run that release, or
    /// migrate; nothing was changed.
    #[error("WAL store format {found} is not supported (this build reads {supported})")]
    UnsupportedStoreFormat {
        /// Format version found in the store.
        found: u64,
        /// Format version this build reads and writes.
        supported: u64,
    },
    /// No pending record has this key (already removed, dead-lettered, or never written).
    /// Nothing was changed; drain logs it and moves on.
    #[error("no pending record with key {key}")]
    NotPending {
        /// The key asked for.
        key: Key,
    },
    /// No dead letter has this id. Nothing was changed; check the id (`dead-letters` list).
    #[error("no dead letter with id {id}")]
    NoSuchDeadLetter {
        /// The id asked for.
        id: u64,
    },
    /// The dead letter has no decodable record (it was corrupt), so there is nothing to replay.
    /// Nothing was changed; its raw bytes stay for forensics.
    #[error("dead letter {id} ({kind:?}) holds no decodable record and cannot be replayed")]
    NotReplayable {
        /// The dead letter's id.
        id: u64,
        /// Its kind (normally `Corrupt`).
        kind: DeadKind,
    },
    /// The pending value under `key` is undecodable (invariant I4). Dead-letter it with
    /// [`Wal::dead_letter`](crate::Wal::dead_letter), which keeps the raw bytes.
    #[error("pending record {key} is corrupt")]
    CorruptRecord {
        /// Its key.
        key: Key,
        /// Why it does not decode.
        #[source]
        error: RecordError,
    },
    /// The stored dead letter `id` is undecodable. It stays where it is; report it.
    #[error("dead letter {id} is corrupt")]
    CorruptDeadLetter {
        /// Its id.
        id: u64,
        /// Why it does not decode.
        #[source]
        error: RecordError,
    },
    /// A stored delivery receipt is undecodable. It stays until evicted; report it.
    #[error("delivery receipt #{index} is corrupt")]
    CorruptReceipt {
        /// Its position in the delivered tree.
        index: u64,
        /// Why it does not decode.
        #[source]
        error: RecordError,
    },
    /// A key in one of a format-1 store's trees has the wrong shape (found while migrating).
    /// Report it; the entry is skipped.
    #[error("malformed key in tree {tree}: {raw:02x?}")]
    CorruptKey {
        /// Tree name.
        tree: &'static str,
        /// The key bytes.
        raw: Vec<u8>,
    },
    /// The store's format marker (or a format-1 meta entry) has the wrong shape. The store is
    /// damaged; the agent exits.
    #[error("malformed meta entry {name}: {raw:02x?}")]
    CorruptMeta {
        /// Meta key.
        name: &'static str,
        /// The value bytes.
        raw: Vec<u8>,
    },
    /// A value could not be encoded; nothing was written (should not happen for these types).
    #[error("encoding a value for the WAL failed")]
    Encode {
        /// Why.
        #[source]
        error: RecordError,
    },
}
