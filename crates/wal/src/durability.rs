//! The durability point: [`Durable`] proofs and the fsync seam [`SyncTarget`].
//!
//! The WAL owns its files (segments, dead-letter log, checkpoint) and makes a write durable with
//! `fdatasync` of the file it wrote ([`FileSync`]), preceded by an fsync of the directory whenever
//! a file was created, renamed or deleted. No other library's files are synced by name.

use std::fs::File;
use std::io;
use std::path::Path;

/// Proof that the value was made durable by write + fsync.
///
/// Only this crate can construct one: ingest may send an MQTT PUBACK only when it holds a
/// `Durable` covering the publish (invariant I1).
#[derive(Debug)]
#[must_use = "a Durable is the permission to acknowledge; dropping it acknowledges nothing"]
pub struct Durable<T>(T);

impl<T> Durable<T> {
    /// Wraps `value`; call only after the write and its fsync both returned `Ok`.
    pub(crate) fn new(value: T) -> Self {
        Durable(value)
    }

    /// The durable value.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// Unwraps the value (the proof is gone afterwards).
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// fsync seam: tests inject failures (like redb's `StorageBackend`).
///
/// An `Err` poisons the WAL: the call is never retried, because after a failed fsync the kernel
/// may have dropped the dirty pages and a second fsync can return `Ok` without the data on disk.
pub trait SyncTarget: Send + Sync + 'static {
    /// Makes everything written to `file` so far durable (survives a power cut).
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// Default [`SyncTarget`]: `fdatasync(2)` of the file.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileSync;

impl SyncTarget for FileSync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// fsyncs a directory so the entries created, renamed or removed in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
