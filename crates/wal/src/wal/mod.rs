//! [`Wal`]: the segment log, the dead-letter log and the receipts behind one writer mutex; group
//! commit, cursors, recovery.
//!
//! Every write appends frames under the `state` mutex and changes the in-memory tables in the
//! same critical section, so the tables always describe exactly the bytes written. fsyncs run
//! after the mutex is released (drain's removals never wait for ingest's fsync); a generation
//! counter tells each caller whether an fsync that started after its write has completed.
//!
//! This file holds the types, open and the shared machinery (poison, store-presence check,
//! stats, flush). The operations live beside it, one concern each: `append` (group commit,
//! re-append, removal, rotation, fsync, checkpoint), `read` (lanes, cursors, lookups), `dead`
//! (dead letters, their budget, replay, receipts), `recover` (open-time replay), `files`
//! (format marker, lock, segment files), `import` (format-1 migration, test backdoors).

mod append;
mod dead;
mod files;
mod import;
mod outbox;
mod read;
mod recover;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::checkpoint::{Checkpoint, SegmentState};
use crate::deadlog::DeadLog;
use crate::dedup::{id_hash, Dedup};
use crate::durability::{sync_dir, Durable, FileSync, SyncTarget};
use crate::error::WalError;
use crate::frame::{self, Item, Kind};
use crate::letters::{
    decode_dead_letter, decode_outbox_entry, decode_receipt, encode_dead_letter,
    encode_outbox_entry, encode_receipt, DeadKind, DeadLetter, DeadReason, OutboxEntry, Receipt,
};
use crate::poison::Poison;
use crate::receipts::Receipts;
use crate::record::{
    decode_record, encode_record, Key, Priority, Record, RecordError, Seq, PRIORITY_CRITICAL,
};
use crate::segment::{self, decode_ack, encode_ack, PutHeader, Segment};

use files::*;
pub use outbox::OutboxItem;
use recover::recover;

/// Newest version of the store layout (file names, frame kinds, lanes, checkpoint) this build
/// reads, kept in `<dir>/FORMAT`. Format 1 was the sled store; [`Wal::open`] migrates it.
/// Format 3 is format 2 plus the receipt outbox lane ([`LANE_OUTBOX`]): a store is marked 3
/// only while [`WalConfig::outbox`] is on, so a store that never queued a receipt stays
/// readable by a format-2 build (see [`Wal::open`]).
pub const STORE_FORMAT: u64 = 3;

/// The format of a store without an outbox lane (also what a format-3 store becomes again when
/// it is opened with [`WalConfig::outbox`] off).
const FORMAT_WITHOUT_OUTBOX: u64 = 2;

/// The reserved lane of receipts waiting to be published ([`OutboxEntry`]). It is not a
/// priority: pending counts, [`Wal::lanes`], [`Wal::pending`] and the dedup window leave it out.
pub const LANE_OUTBOX: Priority = 2;

const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "LOCK";

/// Length of the `SegmentStart` frame every segment begins with.
const SEGMENT_START_LEN: u64 = (frame::HEADER_LEN + 8) as u64;

/// Bytes read per cursor step (more when one frame is larger).
const READ_CHUNK: usize = 256 * 1024;

/// Where and how to open the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Directory of the store (created if missing). One process at a time: `open` locks it.
    pub dir: PathBuf,
    /// A segment file is sealed and a new one started once it holds this many bytes (default
    /// 8 MiB). A segment is deleted when none of its records is pending any more, so this is
    /// also the granularity at which disk space returns.
    pub segment_bytes: u64,
    /// A checkpoint is written after this many bytes of log (default 16 MiB) ...
    pub checkpoint_bytes: u64,
    /// ... or this long after the previous one when anything was written (default 30 s).
    /// Restart replays what was written since the last checkpoint.
    pub checkpoint_interval: Duration,
    /// How many recent alert ids the dedup window remembers at most (default 100 000); 0
    /// disables dedup.
    pub dedup_window: usize,
    /// How long an alert id stays in the dedup window, in ms of `received_at_ms` (default
    /// 600 000 = 10 min); 0 disables dedup.
    pub dedup_window_ms: u64,
    /// How many delivery receipts are kept (default 10 000); 0 keeps none.
    pub delivered_keep: usize,
    /// Most dead letters kept (default 100 000). Beyond it, or beyond
    /// [`WalConfig::dead_max_bytes`], the oldest are handed to the [`DeadLetterSink`] and then
    /// dropped from the store: dead letters never hold up ingest.
    pub dead_max_count: u64,
    /// Most bytes of dead letters kept (default 64 MiB).
    pub dead_max_bytes: u64,
    /// Keep a receipt outbox (default off): [`Wal::remove_and_queue`] and
    /// [`Wal::dead_letter_and_queue`] then queue receipts, and a crash between a dead letter and
    /// its removal still queues one. Off: opening drops any entries left from a run with it on
    /// (logged) and marks the store format 2 again.
    pub outbox: bool,
}

/// Where dead letters go when the dead-letter budget is full (the agent writes JSON lines beside
/// the store). `export` must have made them durable when it returns `Ok`: only then are they
/// removed from the store. An `Err` keeps them (over budget) and is logged; nothing is lost.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Keeps `letters` somewhere a person can read and replay them.
    fn export(&self, letters: &[DeadLetter]) -> io::Result<()>;
}

impl WalConfig {
    /// Defaults with the store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            ..WalConfig::default()
        }
    }
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            dir: PathBuf::from("alertbridge-data"),
            segment_bytes: 8 << 20,
            checkpoint_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(30),
            dedup_window: 100_000,
            dedup_window_ms: 600_000,
            delivered_keep: 10_000,
            dead_max_count: 100_000,
            dead_max_bytes: 64 << 20,
            outbox: false,
        }
    }
}

/// What to append in one group commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A record to deliver: goes to pending under a new [`Key`].
    Pending(Record),
    /// A record that cannot be delivered (malformed or oversize payload): persisted straight into
    /// dead letters, with `dead_at_ms` = the record's `received_at_ms`.
    DeadLetter(Record, DeadReason),
}

impl Entry {
    /// The record either way.
    pub fn record(&self) -> &Record {
        match self {
            Entry::Pending(record) | Entry::DeadLetter(record, _) => record,
        }
    }
}

/// Per-entry result of [`Wal::append_batch`], same order as the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored in pending under this key.
    Pending(Key),
    /// Stored as the dead letter with this id.
    DeadLettered(u64),
    /// Its alert id is in the dedup window (or earlier in the same batch): not written. The
    /// publish may be acked all the same: the first copy is durable.
    Duplicate {
        /// The duplicated alert id.
        alert_id: String,
    },
}

/// Counts and size of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records in pending (all lanes).
    pub pending: u64,
    /// Records in the critical lane.
    pub pending_critical: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Delivery receipts kept.
    pub delivered_kept: u64,
    /// Smallest `received_at_ms` among the head records of each lane (exact unless replayed
    /// records, which keep their original receive time, sit behind newer ones).
    pub oldest_pending_received_ms: Option<u64>,
    /// Bytes of the files that hold undelivered data: segments and the dead-letter log. It falls
    /// when a segment empties and is deleted; what a disk budget compares against. Receipts
    /// (bounded by `delivered_keep`) are not counted.
    pub data_bytes: u64,
    /// Bytes of every file of the store (data plus receipts and checkpoint).
    pub size_on_disk: u64,
    /// Bytes of the dead letters kept (their own budget, `dead_max_bytes`).
    pub dead_bytes: u64,
    /// Receipts waiting in the outbox lane (not counted in `pending`).
    pub outbox_pending: u64,
}

/// A pending value that does not decode (invariant I4). Dead-letter it with
/// [`Wal::dead_letter_corrupt`]; the WAL keeps `raw` in the dead letter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pending record {key} is corrupt")]
pub struct CorruptPending {
    /// Its key.
    pub key: Key,
    /// The stored bytes (at most 64 KiB of them).
    pub raw: Vec<u8>,
    /// Why they do not decode.
    #[source]
    pub error: RecordError,
}

/// One pending record as a cursor returns it: decoded, or corrupt (dead-letter it).
pub type PendingItem = Result<(Key, Record), CorruptPending>;

/// Position of a reader in one lane of the log: [`Wal::read`] returns that lane's pending
/// records in seq order from here. Records appended later are found by later reads; records
/// removed meanwhile are skipped. Holds no file and no lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    lane: Priority,
    /// Segment id and byte offset of the next frame to read.
    segment: u64,
    offset: u64,
    /// Only seqs at or above this are returned (a scan resumed at a key).
    min_seq: Seq,
    /// The last seq of any lane passed in the current segment (bounds a damaged region).
    last_seq: Option<Seq>,
}

impl Cursor {
    /// The lane it reads.
    pub fn lane(&self) -> Priority {
        self.lane
    }
}

/// The durable write-ahead log. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cfg: WalConfig,
    state: Mutex<State>,
    poison: Poison,
    /// fsync seam: every fsync of a data file goes through it.
    sync: Box<dyn SyncTarget>,
    /// Held for the life of the process: the directory lock (`flock` on `LOCK`).
    _lock: File,
    /// Only one checkpoint is written at a time.
    checkpointing: Mutex<()>,
    /// Takes the oldest dead letters when the dead-letter budget is full.
    sink: Mutex<Option<Box<dyn DeadLetterSink>>>,
    /// (device, inode) of the store directory at open: checked before every group commit.
    dir_id: (u64, u64),
    /// `oldest_pending_received_ms`, recomputed at most once a second.
    oldest: Mutex<Option<(Instant, Option<u64>)>>,
}

/// Everything the writer mutex guards.
struct State {
    segments: BTreeMap<u64, Segment>,
    /// Id of the segment appended to.
    active: u64,
    next_seq: Seq,
    dedup: Dedup,
    dead: DeadLog,
    receipts: Receipts,
    /// Sum of the segments' lengths.
    segment_bytes: u64,
    /// Generation of the latest write / of the latest write covered by a completed fsync.
    written_gen: u64,
    synced_gen: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// Dead letters exported and removed by the budget since open.
    dead_evicted: u64,
    /// Removals that met a full filesystem: written before the next frames that fit.
    unwritten_acks: Vec<Key>,
}

impl State {
    fn segment_of(&self, seq: Seq) -> Option<&Segment> {
        self.segments
            .values()
            .rev()
            .find(|s| s.first_seq <= seq)
            .filter(|s| s.holds(seq))
    }

    fn segment_of_mut(&mut self, seq: Seq) -> Option<&mut Segment> {
        self.segments
            .values_mut()
            .rev()
            .find(|s| s.first_seq <= seq)
            .filter(|s| s.holds(seq))
    }

    fn is_pending(&self, key: Key) -> bool {
        self.segment_of(key.seq).is_some_and(|s| s.is_live(key.seq))
    }

    fn clear(&mut self, key: Key) -> bool {
        self.segment_of_mut(key.seq).is_some_and(|s| s.clear(key))
    }

    fn active_mut(&mut self) -> &mut Segment {
        let id = self.active;
        self.segments
            .get_mut(&id)
            .expect("the active segment is always in the table")
    }

    fn lane_totals(&self) -> (u64, u64) {
        let mut all = 0;
        let mut critical = 0;
        for s in self.segments.values() {
            all += s.live_total() - s.lane_live(LANE_OUTBOX);
            critical += s.lane_live(PRIORITY_CRITICAL);
        }
        (all, critical)
    }

    /// Receipts in the outbox lane.
    fn outbox_len(&self) -> u64 {
        self.segments
            .values()
            .map(|s| s.lane_live(LANE_OUTBOX))
            .sum()
    }

    fn lanes(&self) -> Vec<Priority> {
        let mut lanes: Vec<Priority> = self
            .segments
            .values()
            .flat_map(|s| {
                s.lane_counts()
                    .iter()
                    .enumerate()
                    .filter(|(lane, n)| **n > 0 && *lane != LANE_OUTBOX as usize)
                    .map(|(lane, _)| lane as Priority)
            })
            .collect();
        lanes.sort_unstable();
        lanes.dedup();
        lanes
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.dir)
            .field("poisoned", &self.inner.poison.is_poisoned())
            .finish_non_exhaustive()
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { op, path, source }
}

impl Wal {
    /// Opens (or creates) the WAL in `cfg.dir`, fsyncing with `fdatasync`. A format-1 (sled)
    /// store found there is migrated first (see [`crate::migrate`]).
    pub fn open(cfg: WalConfig) -> Result<Wal, WalError> {
        Self::open_with_sync(cfg, Box::new(FileSync))
    }

    /// Opens (or creates) the WAL with a custom fsync seam (tests inject failures).
    pub fn open_with_sync(cfg: WalConfig, sync: Box<dyn SyncTarget>) -> Result<Wal, WalError> {
        let dir = cfg.dir.clone();
        crate::migrate::finish_interrupted(&dir)?;
        if crate::migrate::is_legacy(&dir) {
            crate::migrate::migrate(&cfg)?;
        }
        fs::create_dir_all(&dir).map_err(io_err("creating the store directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let format = check_format(&dir, cfg.outbox)?;
        let started = Instant::now();
        let state = recover(&dir, &cfg, sync.as_ref())?;
        let (pending, pending_critical) = state.lane_totals();
        info!(
            dir = %dir.display(),
            pending,
            pending_critical,
            dead_letters = state.dead.count(),
            segments = state.segments.len(),
            next_seq = state.next_seq,
            open_ms = started.elapsed().as_millis() as u64,
            "WAL opened"
        );
        let dir_id = fs::metadata(&dir)
            .map(|m| (m.dev(), m.ino()))
            .map_err(io_err("reading the store directory", &dir))?;
        let wal = Wal {
            inner: Arc::new(Inner {
                dir_id,
                dir,
                cfg,
                state: Mutex::new(state),
                poison: Poison::default(),
                sync,
                _lock: lock,
                checkpointing: Mutex::new(()),
                sink: Mutex::new(None),
                oldest: Mutex::new(None),
            }),
        };
        wal.settle_outbox_format(format)?;
        wal.reconcile_dead_letters()?;
        wal.delete_empty_segments()?;
        Ok(wal)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Counts (kept in memory), oldest pending receive time (cached for a second) and sizes.
    pub fn stats(&self) -> Result<WalStats, WalError> {
        let (pending, pending_critical, dead_letters, delivered_kept, data_bytes, outbox_pending) = {
            let st = self.lock_state();
            let (all, critical) = st.lane_totals();
            (
                all,
                critical,
                st.dead.count(),
                st.receipts.count(),
                data_bytes_of(&st),
                st.outbox_len(),
            )
        };
        Ok(WalStats {
            pending,
            pending_critical,
            dead_letters,
            delivered_kept,
            oldest_pending_received_ms: self.oldest_pending_received_ms()?,
            data_bytes,
            size_on_disk: self.size_on_disk()?,
            dead_bytes: self.lock_state().dead.live_bytes(),
            outbox_pending,
        })
    }

    /// Bytes of the files holding undelivered data (segments, dead letters): the figure to
    /// compare a disk budget against. Kept in memory: no I/O.
    pub fn data_bytes(&self) -> u64 {
        data_bytes_of(&self.lock_state())
    }

    /// Bytes of every file of the store.
    pub fn size_on_disk(&self) -> Result<u64, WalError> {
        let (dead, receipts) = {
            let st = self.lock_state();
            (st.dead.len(), st.receipts.len())
        };
        Ok(self.data_bytes()
            + dead
            + receipts
            + file_len(&self.inner.dir.join(crate::checkpoint::FILE)))
    }

    /// Makes everything written so far durable (fsync), deletes segments that emptied and writes
    /// a checkpoint when one is due. Cheap when nothing was written since the last fsync. The
    /// drain calls it periodically to bound what a power cut can undo of its removals; shutdown
    /// calls [`Wal::close`]. Poisons the WAL on failure, like [`Wal::append_batch`].
    pub fn flush(&self) -> Result<(), WalError> {
        let gen = {
            let mut st = self.lock_state();
            if !st.unwritten_acks.is_empty() {
                // Still no space: they keep waiting, nothing is lost.
                match self.write_main(&mut st, &[]) {
                    Ok(()) | Err(WalError::NoSpace { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            st.written_gen
        };
        self.make_durable(gen)
    }

    /// Final flush with a checkpoint, so the next open replays nothing.
    pub fn close(&self) -> Result<(), WalError> {
        self.flush()?;
        self.checkpoint(true)
    }

    /// Whether a write or fsync has failed (invariant I5); if so every write fails.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poison.is_poisoned()
    }

    fn check_poison(&self) -> Result<(), WalError> {
        if self.inner.poison.is_poisoned() {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Invariant I10: a group commit (and so an ack) happens only into the store this process
    /// opened. Deleting or unmounting the directory leaves our descriptors writing into files
    /// nobody will read: compare the directory's (device, inode) and the active segment's inode
    /// on disk with ours, two `stat`s per group commit.
    fn check_store_present(&self, st: &State) -> Result<(), WalError> {
        let vanished = |what: String| {
            self.poisoned_by(WalError::StoreVanished {
                dir: self.inner.dir.clone(),
                what,
            })
        };
        match fs::metadata(&self.inner.dir) {
            Ok(m) if (m.dev(), m.ino()) == self.inner.dir_id => {}
            Ok(_) => return Err(vanished("another directory is at its path".into())),
            Err(e) => return Err(vanished(format!("directory: {e}"))),
        }
        let seg = &st.segments[&st.active];
        let ours = seg.file.metadata().map(|m| m.ino()).ok();
        match fs::metadata(segment::path(&self.inner.dir, seg.id)) {
            Ok(m) if Some(m.ino()) == ours => Ok(()),
            Ok(_) => Err(vanished("the active segment was replaced".into())),
            Err(e) => Err(vanished(format!("active segment: {e}"))),
        }
    }

    fn poisoned_by(&self, error: WalError) -> WalError {
        self.inner.poison.poison();
        error!(error = %error, "WAL poisoned");
        error
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Every change to State completes inside one critical section without I/O that can
        // panic half-way, so a panicking holder cannot leave it half-updated.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Wal {
    /// The last handle closes the store (flush and checkpoint), so the next open replays
    /// nothing. Errors are logged: a drop cannot report them, and nothing is lost by a missing
    /// checkpoint (open then replays more).
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) == 1 && !self.is_poisoned() {
            if let Err(e) = self.close() {
                warn!(error = %e, "closing the WAL on drop failed");
            }
        }
    }
}
