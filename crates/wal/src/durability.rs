//! The durability point: [`Durable`] proofs and the fsync seam [`SyncTarget`].
//!
//! sled 0.34.7's `flush()` ends in `sync_file_range` on Linux, which neither flushes the device's
//! write cache nor the file's metadata; only its periodic flusher thread calls `sync_all`. So the
//! WAL makes a write durable with `flush()` **followed by** [`SyncTarget::sync_data`], whose
//! default ([`DataFileSync`]) fsyncs sled's data file `<dir>/db` (fsync acts on the inode, so our
//! own descriptor is enough) and any new blob file under `<dir>/blobs/`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Proof that the value was made durable by flush + fsync.
///
/// Only this crate can construct one: ingest may send an MQTT PUBACK only when it holds a
/// `Durable` covering the publish (invariant I1).
#[derive(Debug)]
#[must_use = "a Durable is the permission to acknowledge; dropping it acknowledges nothing"]
pub struct Durable<T>(T);

impl<T> Durable<T> {
    /// Wraps `value`; call only after flush and fsync both returned `Ok`.
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
/// The default ([`DataFileSync`]) fsyncs the sled data file `<dir>/db` and new blob files.
/// An `Err` poisons the WAL: the call is never retried, because after a failed fsync the kernel
/// may have dropped the dirty pages and a second fsync can return `Ok` without the data on disk.
pub trait SyncTarget: Send + Sync + 'static {
    /// Makes everything sled has written so far durable (survives a power cut).
    fn sync_data(&self) -> io::Result<()>;
}

/// Default [`SyncTarget`]: `fdatasync` of sled's files in the WAL directory.
///
/// sled 0.34.7 names its data file `db` (`Config::db_path`) and writes pages larger than
/// `segment_size / 4` (128 KiB with the default 512 KiB segments) to separate files under
/// `blobs/`, which sled never fsyncs itself. Each call therefore syncs blob files not synced yet
/// (usually none: the agent keeps payloads far below that size) and then the data file, so that
/// any blob the log points to is durable before the pointer is.
#[derive(Debug)]
pub struct DataFileSync {
    /// Our own read handle of `<dir>/db`; closing it has no effect on sled.
    db: File,
    /// `<dir>/blobs`.
    blobs_dir: PathBuf,
    /// Blob files already synced; pruned of files sled removed.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DataFileSync {
    /// Name of sled 0.34.7's data file inside the WAL directory.
    pub const DATA_FILE: &'static str = "db";
    /// Name of sled 0.34.7's blob directory inside the WAL directory.
    pub const BLOB_DIR: &'static str = "blobs";

    /// Opens `<dir>/db`; sled must have created it (open the WAL first).
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = File::open(dir.join(Self::DATA_FILE))?;
        Ok(DataFileSync {
            db,
            blobs_dir: dir.join(Self::BLOB_DIR),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    fn sync_new_blobs(&self) -> io::Result<()> {
        let entries = match fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashSet::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    // sled garbage-collects blobs concurrently: a vanished one needs no sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                    Ok(file) => file.sync_data()?,
                }
                synced.insert(name.clone());
                synced_any = true;
            }
            present.insert(name);
        }
        synced.retain(|name| present.contains(name));
        if synced_any {
            // New directory entries must be durable too.
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl SyncTarget for DataFileSync {
    fn sync_data(&self) -> io::Result<()> {
        self.sync_new_blobs()?;
        self.db.sync_data()
    }
}

/// fsyncs a directory so the entries created in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
