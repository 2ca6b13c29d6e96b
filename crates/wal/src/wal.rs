//! [`Wal`]: the segment log, the dead-letter log and the receipts behind one writer mutex; group
//! commit, cursors, recovery.
//!
//! Every write appends frames under the `state` mutex and changes the in-memory tables in the
//! same critical section, so the tables always describe exactly the bytes written. fsyncs run
//! after the mutex is released (drain's removals never wait for ingest's fsync); a generation
//! counter tells each caller whether an fsync that started after its write has completed.

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
    decode_dead_letter, decode_receipt, encode_dead_letter, encode_receipt, DeadKind, DeadLetter,
    DeadReason, Receipt,
};
use crate::poison::Poison;
use crate::receipts::Receipts;
use crate::record::{
    decode_record, encode_record, Key, Priority, Record, RecordError, Seq, PRIORITY_CRITICAL,
};
use crate::segment::{self, decode_ack, encode_ack, PutHeader, Segment};

/// Version of the store layout (file names, frame kinds, checkpoint), kept in `<dir>/FORMAT`.
/// Format 1 was the sled store; [`Wal::open`] migrates it.
pub const STORE_FORMAT: u64 = 2;

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
            all += s.live_total();
            critical += s.lane_live(PRIORITY_CRITICAL);
        }
        (all, critical)
    }

    fn lanes(&self) -> Vec<Priority> {
        let mut lanes: Vec<Priority> = self
            .segments
            .values()
            .flat_map(|s| {
                s.lane_counts()
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
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
        check_format(&dir)?;
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
        wal.reconcile_dead_letters()?;
        wal.delete_empty_segments()?;
        Ok(wal)
    }

    /// Sets where dead letters beyond the budget go; without a sink they are kept over budget
    /// (logged at warn), never dropped.
    pub fn set_dead_letter_sink(&self, sink: Box<dyn DeadLetterSink>) {
        *self
            .inner
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sink);
    }

    /// Appends removals of dead letters `ids` (not fsynced).
    fn remove_dead(&self, st: &mut State, ids: &[u64]) -> Result<(), WalError> {
        let mut frames = Vec::new();
        for id in ids {
            DeadLog::encode_remove(&mut frames, *id);
        }
        self.write_dead(st, &frames)
    }

    /// Deletes the dead letters `matches` selects, durably; returns how many. For the operator's
    /// `dead-letters purge` (the agent stopped or through its admin endpoint).
    pub fn purge_dead_letters(
        &self,
        matches: impl Fn(&DeadLetter) -> bool,
    ) -> Result<u64, WalError> {
        self.check_poison()?;
        let ids: Vec<u64> = self
            .dead_letters()
            .filter_map(|d| d.ok())
            .filter(|d| matches(d))
            .map(|d| d.id)
            .collect();
        let gen = {
            let mut st = self.lock_state();
            self.remove_dead(&mut st, &ids)?;
            st.written_gen
        };
        self.make_durable(gen)?;
        Ok(ids.len() as u64)
    }

    /// Keeps the dead-letter log within its budget: the oldest go to the sink (durably), then
    /// leave the store. Counted and logged at warn by the caller through the returned count.
    fn enforce_dead_budget(&self, st: &mut State) -> Result<u64, WalError> {
        let ids = st
            .dead
            .over_budget(self.inner.cfg.dead_max_count, self.inner.cfg.dead_max_bytes);
        if ids.is_empty() {
            return Ok(0);
        }
        let sink = self
            .inner
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sink) = sink.as_ref() else {
            warn!(
                over = ids.len(),
                "dead-letter budget exceeded and no export configured; keeping them"
            );
            return Ok(0);
        };
        let letters: Vec<DeadLetter> = ids
            .iter()
            .filter_map(|id| st.dead.get(*id).ok().flatten())
            .filter_map(|raw| decode_dead_letter(&raw).ok())
            .collect();
        if let Err(e) = sink.export(&letters) {
            warn!(error = %e, over = ids.len(), "exporting dead letters beyond the budget failed; keeping them");
            return Ok(0);
        }
        self.remove_dead(st, &ids)?;
        warn!(
            evicted = ids.len(),
            first_id = ids[0],
            "dead-letter budget full: the oldest dead letters were exported and removed from the store"
        );
        Ok(ids.len() as u64)
    }

    /// Dead letters exported and removed by the budget since open.
    pub fn dead_letters_evicted(&self) -> u64 {
        self.lock_state().dead_evicted
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Group commit of entries that may all be redeliveries: like [`Wal::append_publishes`] with
    /// every entry checked against the dedup window.
    pub fn append_batch(&self, entries: Vec<Entry>) -> Result<Durable<Vec<Appended>>, WalError> {
        self.append_publishes(entries.into_iter().map(|e| (e, true)).collect())
    }

    /// Group commit (invariant I1) of publishes, each with its MQTT DUP flag.
    ///
    /// **A repeat is a new alert, a redelivery is not.** An entry with `redelivery = false`
    /// (DUP=0: the publisher sent it for the first time) is always stored, even when an identical
    /// one was stored a second ago: a PLC repeating `{"alarm":"HIGH_TEMP"}` every minute raises an
    /// alert every minute. An entry with `redelivery = true` (DUP=1) is a duplicate, not stored,
    /// when its identity (topic, alert id) was stored within the dedup window (time and count
    /// bounded); that is the broker resending a publish we made durable but whose PUBACK it did
    /// not get. Residual case, accepted: a DUP=1 redelivery of a copy that never became durable,
    /// identical to another alert of the same topic stored inside the window, is taken for that
    /// alert (it needs a crash before the fsync *and* an identical alert within minutes).
    ///
    /// Appends every entry (pending records to the active segment, dead letters to the
    /// dead-letter log) in one write per file, then fsyncs the dead-letter log (if written) and
    /// the segment; returns [`Durable`] only after both returned `Ok`. An alert id already in the
    /// dedup window (or earlier in the same batch) yields [`Appended::Duplicate`] and is not
    /// written. Dead-letter entries enter the dedup window too.
    ///
    /// On a write or fsync failure the WAL is poisoned (invariant I5): this call returns the
    /// error, every later write [`WalError::Poisoned`]; the fsync is never retried. Ack nothing
    /// from the batch.
    pub fn append_publishes(
        &self,
        entries: Vec<(Entry, bool)>,
    ) -> Result<Durable<Vec<Appended>>, WalError> {
        self.check_poison()?;
        if entries.is_empty() {
            return Ok(Durable::new(Vec::new()));
        }
        let mut out = Vec::with_capacity(entries.len());
        let gen = {
            let mut st = self.lock_state();
            self.check_store_present(&st)?;
            self.rotate_if_full(&mut st)?;
            let mut main = Vec::new();
            let mut dead = Vec::new();
            let mut puts = Vec::new();
            // Entries enter the window as they are taken (the window is exact per entry); if
            // the batch is then not written (a full disk) they are taken back, so its retry
            // does not find itself in the window.
            let mut inserted = 0;
            // An identity seen earlier in this batch is in the window even if the count bound
            // has pushed it out again within the batch.
            let mut in_batch = std::collections::HashSet::with_capacity(entries.len());
            for (entry, redelivery) in &entries {
                let record = entry.record();
                let hash = id_hash(&record.topic, &record.alert_id);
                let now = record.received_at_ms;
                let repeat = !in_batch.insert(hash) && st.dedup.enabled();
                if *redelivery && (repeat || st.dedup.contains(hash, now)) {
                    out.push(Appended::Duplicate {
                        alert_id: record.alert_id.clone(),
                    });
                    continue;
                }
                match entry {
                    Entry::Pending(record) => {
                        let key = Key {
                            priority: record.priority,
                            seq: st.next_seq,
                        };
                        st.next_seq += 1;
                        let framed = encode_record(record).map_err(encode_err)?;
                        PutHeader {
                            seq: key.seq,
                            lane: key.priority,
                            received_at_ms: now,
                            id_hash: hash,
                            replaces: None,
                        }
                        .encode(&mut main, &framed);
                        puts.push(key);
                        out.push(Appended::Pending(key));
                    }
                    Entry::DeadLetter(record, reason) => {
                        let id = st.dead.next_id;
                        st.dead.next_id += 1;
                        let letter = DeadLetter {
                            id,
                            key: None,
                            record: Some(record.clone()),
                            raw: None,
                            reason: reason.clone(),
                            dead_at_ms: record.received_at_ms,
                        };
                        let framed = encode_dead_letter(&letter).map_err(encode_err)?;
                        DeadLog::encode_add(&mut dead, id, &framed);
                        let mut seen = hash.to_le_bytes().to_vec();
                        seen.extend_from_slice(&now.to_le_bytes());
                        frame::encode(&mut main, Kind::Seen, &seen);
                        out.push(Appended::DeadLettered(id));
                    }
                }
                if st.dedup.enabled() {
                    st.dedup.insert(hash, now);
                    inserted += 1;
                }
            }
            let dead_len = st.dead.len();
            if let Err(e) = self.write_dead(&mut st, &dead) {
                st.dedup.undo_last(inserted);
                return Err(e);
            }
            if let Err(e) = self.write_main(&mut st, &main) {
                st.dedup.undo_last(inserted);
                if !dead.is_empty() {
                    // All or nothing: the batch is not acked, so its dead letters go too.
                    let dir = self.inner.dir.clone();
                    if let Err(source) = st.dead.cut_to(&dir, dead_len) {
                        return Err(self.poisoned_by(WalError::Io {
                            op: "cutting back the dead-letter log",
                            path: dir.join(crate::deadlog::FILE),
                            source,
                        }));
                    }
                }
                return Err(e);
            }

            let active = st.active_mut();
            for key in puts {
                active.set_live(key.seq, key.priority);
            }
            if !dead.is_empty() {
                let evicted = self.enforce_dead_budget(&mut st)?;
                st.dead_evicted += evicted;
            }
            st.written_gen
        };
        self.make_durable(gen)?;
        Ok(Durable::new(out))
    }

    /// The lanes that have pending records, most urgent first.
    pub fn lanes(&self) -> Vec<Priority> {
        self.lock_state().lanes()
    }

    /// A cursor at the start of `lane`.
    pub fn cursor(&self, lane: Priority) -> Cursor {
        Cursor {
            lane,
            segment: 0,
            offset: 0,
            min_seq: 0,
            last_seq: None,
        }
    }

    /// Up to `max` pending records of the cursor's lane, in seq order, from the cursor on; the
    /// cursor advances past them. Empty when the cursor has caught up with what is durable.
    ///
    /// A record that does not decode, or a damaged region of a segment whose records are still
    /// pending, comes back as `Err(CorruptPending)` (never a panic, never a stuck cursor):
    /// dead-letter it with [`Wal::dead_letter_corrupt`]. Reads take the writer mutex only
    /// briefly, never during file I/O.
    pub fn read(&self, cursor: &mut Cursor, max: usize) -> Result<Vec<PendingItem>, WalError> {
        let mut out = Vec::new();
        while out.len() < max {
            let (file, end, end_seq) = {
                let st = self.lock_state();
                let Some((&id, seg)) = st.segments.range(cursor.segment..).next() else {
                    break;
                };
                if id != cursor.segment {
                    cursor.segment = id;
                    cursor.offset = 0;
                    cursor.last_seq = None;
                }
                let sealed = id != st.active;
                // Readers see what was written, fsynced or not: a record delivered before its
                // fsync completed is at worst delivered again after a crash, never lost.
                let end = seg.len;
                let nothing_for_us =
                    seg.lane_live(cursor.lane) == 0 || seg.end_seq <= cursor.min_seq;
                if sealed && (cursor.offset >= end || nothing_for_us) {
                    cursor.segment = id + 1;
                    cursor.offset = 0;
                    cursor.last_seq = None;
                    continue;
                }
                if cursor.offset >= end {
                    break;
                }
                (Arc::clone(&seg.file), end, seg.end_seq)
            };
            let want = (end - cursor.offset) as usize;
            let mut len = want.min(READ_CHUNK);
            let (buf, items, used) = loop {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, cursor.offset).map_err(io_err(
                    "reading a segment",
                    &segment::path(&self.inner.dir, cursor.segment),
                ))?;
                let complete = len == want;
                let (items, used) = frame::scan(&buf, complete);
                // Items borrow `buf`: keep only owned summaries.
                let items: Vec<Found> = items.into_iter().map(Found::from).collect();
                let gap_needs_more = !complete
                    && items.iter().any(|i| matches!(i, Found::Garbage { .. }))
                    && !items
                        .iter()
                        .skip_while(|i| !matches!(i, Found::Garbage { .. }))
                        .any(|i| matches!(i, Found::Put { .. }));
                if (used == 0 || gap_needs_more) && !complete {
                    len = want.min(len.saturating_mul(4).max(READ_CHUNK));
                    continue;
                }
                break (buf, items, used);
            };
            // Decide what is pending under the lock, decode outside it.
            let mut take: Vec<(usize, Found)> = Vec::new();
            {
                let st = self.lock_state();
                let seg = st.segments.get(&cursor.segment);
                let live = |seq: Seq| seg.is_some_and(|s| s.is_live(seq));
                let mut last_seq = cursor.last_seq;
                for (i, item) in items.iter().enumerate() {
                    match *item {
                        Found::Put { seq, lane, .. } => {
                            last_seq = Some(seq);
                            if lane == cursor.lane && seq >= cursor.min_seq && live(seq) {
                                take.push((i, item.clone()));
                            }
                        }
                        Found::Garbage { .. } => {
                            // Seqs between the last put before it and the next put after it.
                            let from = last_seq.map_or(seg.map_or(0, |s| s.first_seq), |s| s + 1);
                            let to = items[i + 1..]
                                .iter()
                                .find_map(|n| match n {
                                    Found::Put { seq, .. } => Some(*seq),
                                    _ => None,
                                })
                                .unwrap_or(end_seq);
                            let lost: Vec<Seq> = (from..to)
                                .filter(|&s| s >= cursor.min_seq && live(s))
                                .collect();
                            if !lost.is_empty() {
                                take.push((i, Found::Lost(lost)));
                            }
                        }
                        Found::Other { .. } | Found::Lost(_) => {}
                    }
                }
            }
            // Emit in order, stopping at `max`; the cursor moves past what was emitted.
            let mut consumed_to = cursor.offset + used as u64;
            let mut last_seq = cursor.last_seq;
            let mut next_take = take.into_iter().peekable();
            for (i, item) in items.iter().enumerate() {
                if out.len() >= max {
                    consumed_to = cursor.offset + item.offset() as u64;
                    break;
                }
                if let Found::Put { seq, .. } = item {
                    last_seq = Some(*seq);
                }
                while let Some((j, found)) = next_take.next_if(|(j, _)| *j == i) {
                    let _ = j;
                    match found {
                        Found::Put {
                            seq,
                            lane,
                            record_at,
                            record_len,
                            ..
                        } => {
                            let raw = &buf[record_at..record_at + record_len];
                            let key = Key {
                                priority: lane,
                                seq,
                            };
                            out.push(match decode_record(raw) {
                                Ok(record) => Ok((key, record)),
                                Err(error) => {
                                    warn!(key = %key, error = %error, "corrupt pending record");
                                    Err(CorruptPending {
                                        key,
                                        raw: raw[..raw.len().min(64 << 10)].to_vec(),
                                        error,
                                    })
                                }
                            });
                        }
                        Found::Lost(seqs) => {
                            let (offset, len) = match item {
                                Found::Garbage { offset, len } => (*offset, *len),
                                _ => (0, 0),
                            };
                            let raw = buf[offset..offset + len.min(64 << 10)].to_vec();
                            error!(
                                segment = cursor.segment,
                                offset = cursor.offset + offset as u64,
                                bytes = len,
                                records = seqs.len(),
                                "damaged region in a segment holds pending records; reporting them as corrupt"
                            );
                            for seq in seqs {
                                out.push(Err(CorruptPending {
                                    key: Key {
                                        priority: cursor.lane,
                                        seq,
                                    },
                                    raw: raw.clone(),
                                    error: RecordError::Unreadable {
                                        segment: cursor.segment,
                                        offset: cursor.offset + offset as u64,
                                    },
                                }));
                            }
                        }
                        _ => {}
                    }
                }
            }
            cursor.last_seq = last_seq;
            cursor.offset = consumed_to;
        }
        Ok(out)
    }

    /// Pending records, lane by lane (critical first), each lane in seq order.
    ///
    /// An undecodable value comes back as `Err(CorruptPending)` (never a panic) so the caller can
    /// dead-letter it. A read error ends the iteration early (logged at error level). The
    /// iterator sees records appended while it runs. Memory: one page of records at a time.
    pub fn pending(&self) -> impl Iterator<Item = Result<(Key, Record), CorruptPending>> + '_ {
        self.pending_from(Key {
            priority: 0,
            seq: 0,
        })
    }

    /// Like [`Wal::pending`], starting at `start` (inclusive).
    pub fn pending_from(
        &self,
        start: Key,
    ) -> impl Iterator<Item = Result<(Key, Record), CorruptPending>> + '_ {
        let lanes: VecDeque<Priority> = self
            .lock_state()
            .lanes()
            .into_iter()
            .filter(|&l| l >= start.priority)
            .collect();
        PendingIter {
            wal: self,
            start,
            lanes,
            cursor: None,
            page: VecDeque::new(),
        }
    }

    /// The pending record under `key`, if any. [`WalError::CorruptRecord`] if it does not decode.
    ///
    /// Reads the key's segment from its start: for the CLI and tests, not for a hot path (the
    /// drain reads through a [`Cursor`]).
    pub fn get(&self, key: Key) -> Result<Option<Record>, WalError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(raw) => decode_record(&raw)
                .map(Some)
                .map_err(|error| WalError::CorruptRecord { key, error }),
        }
    }

    /// The stored (framed) bytes of the pending record under `key`.
    fn get_raw(&self, key: Key) -> Result<Option<Vec<u8>>, WalError> {
        let (file, end, id) = {
            let st = self.lock_state();
            let Some(seg) = st.segment_of(key.seq).filter(|s| s.is_live(key.seq)) else {
                return Ok(None);
            };
            (Arc::clone(&seg.file), seg.len, seg.id)
        };
        let mut buf = vec![0u8; end as usize];
        file.read_exact_at(&mut buf, 0).map_err(io_err(
            "reading a segment",
            &segment::path(&self.inner.dir, id),
        ))?;
        let (items, _) = frame::scan(&buf, true);
        for item in items {
            if let Item::Frame {
                kind: Kind::Put,
                body,
                ..
            } = item
            {
                if let Some((h, raw)) = PutHeader::decode(body) {
                    if h.seq == key.seq {
                        return Ok(Some(raw.to_vec()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Stores a pending record again with its new attempt fields (attempts, next_attempt_ms ...)
    /// and returns its new key: the record is re-appended at the head of the log and the old key
    /// removed in the same frame, so a record that keeps failing never pins an old segment.
    ///
    /// Not fsynced: losing it in a crash only repeats an attempt. [`WalError::NotPending`] if the
    /// key is no longer pending (it is not re-created).
    pub fn update(&self, key: Key, record: &Record) -> Result<Key, WalError> {
        self.check_poison()?;
        let framed = encode_record(record).map_err(encode_err)?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        let new = self.put_one(&mut st, key.priority, record, &framed, Some(key))?;
        st.clear(key);
        Ok(new)
    }

    /// Appends one record (`framed`) under a new key in `lane`, optionally replacing `replaces`
    /// in the same frame (W1), and marks it pending. The caller clears `replaces`.
    fn put_one(
        &self,
        st: &mut State,
        lane: Priority,
        record: &Record,
        framed: &[u8],
        replaces: Option<Key>,
    ) -> Result<Key, WalError> {
        self.rotate_if_full(st)?;
        let key = Key {
            priority: lane,
            seq: st.next_seq,
        };
        st.next_seq += 1;
        let mut main = Vec::new();
        PutHeader {
            seq: key.seq,
            lane,
            received_at_ms: record.received_at_ms,
            id_hash: id_hash(&record.topic, &record.alert_id),
            replaces,
        }
        .encode(&mut main, framed);
        self.write_main(st, &main)?;
        st.active_mut().set_live(key.seq, key.priority);
        Ok(key)
    }

    /// Delivered (invariant I3): removes `key` from pending and keeps the receipt (bounded to
    /// `delivered_keep`, oldest dropped).
    ///
    /// Not fsynced: losing it in a crash means one redelivery (a duplicate), never a loss. Call
    /// [`Wal::flush`] periodically to bound that. [`WalError::NotPending`] if the key is not
    /// pending; nothing changes then.
    pub fn remove(&self, key: Key, receipt: Receipt) -> Result<(), WalError> {
        self.check_poison()?;
        let framed = encode_receipt(&receipt).map_err(encode_err)?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        let mut main = Vec::new();
        encode_ack(&mut main, &[key]);
        match self.write_main(&mut st, &main) {
            Ok(()) => {}
            // Delivered all the same: the removal waits in memory and goes with the next write
            // that finds space. A crash before that delivers the alert again (a duplicate,
            // never a loss), exactly like a removal not yet fsynced.
            Err(WalError::NoSpace { .. }) => {
                st.unwritten_acks.push(key);
                if st.unwritten_acks.len() == 1 {
                    warn!("filesystem full: removals of delivered alerts are kept in memory until space returns");
                }
            }
            Err(e) => return Err(e),
        }
        st.clear(key);
        // A receipt is proof for the operator, not part of any guarantee: failing to keep one
        // (a full disk) must not stop delivery.
        if let Err(e) = st.receipts.push(&framed) {
            warn!(alert_id = %receipt.alert_id, error = %e, "could not keep a delivery receipt");
        }
        Ok(())
    }

    /// Atomic move pending → dead letters (invariant I3), reading the record from the log first
    /// (slow path: the drain uses [`Wal::dead_letter_record`] with the record it holds). Returns
    /// the dead-letter id. A record that does not decode is kept raw as [`DeadKind::Corrupt`].
    pub fn dead_letter(&self, key: Key, reason: DeadReason, now_ms: u64) -> Result<u64, WalError> {
        self.check_poison()?;
        let Some(raw) = self.get_raw(key)? else {
            return Err(WalError::NotPending { key });
        };
        match decode_record(&raw) {
            Ok(record) => self.dead_letter_record(key, &record, reason, now_ms),
            Err(error) => self.move_to_dead(
                key,
                None,
                Some(raw),
                corrupt_reason(&reason, &error),
                now_ms,
            ),
        }
    }

    /// Atomic move of `key` with its `record` (attempt fields as the caller last set them)
    /// from pending to dead letters (invariant I3). Returns the dead-letter id.
    ///
    /// The dead letter is written and fsynced before the removal from pending is written, so no
    /// crash or power cut can keep the removal without the dead letter; a crash between the two
    /// keeps both, and the next open removes the pending copy. [`WalError::NotPending`] if the
    /// key is not pending; nothing changes then.
    pub fn dead_letter_record(
        &self,
        key: Key,
        record: &Record,
        reason: DeadReason,
        now_ms: u64,
    ) -> Result<u64, WalError> {
        self.move_to_dead(key, Some(record.clone()), None, reason, now_ms)
    }

    /// Moves a corrupt pending record (as a cursor reported it) to dead letters with its bytes
    /// kept; the kind becomes [`DeadKind::Corrupt`].
    pub fn dead_letter_corrupt(
        &self,
        corrupt: &CorruptPending,
        reason: DeadReason,
        now_ms: u64,
    ) -> Result<u64, WalError> {
        self.move_to_dead(
            corrupt.key,
            None,
            Some(corrupt.raw.clone()),
            corrupt_reason(&reason, &corrupt.error),
            now_ms,
        )
    }

    fn move_to_dead(
        &self,
        key: Key,
        record: Option<Record>,
        raw: Option<Vec<u8>>,
        reason: DeadReason,
        now_ms: u64,
    ) -> Result<u64, WalError> {
        self.check_poison()?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        let id = st.dead.next_id;
        st.dead.next_id += 1;
        let letter = DeadLetter {
            id,
            key: Some(key),
            record,
            raw,
            reason,
            dead_at_ms: now_ms,
        };
        let framed = encode_dead_letter(&letter).map_err(encode_err)?;
        let mut dead = Vec::new();
        DeadLog::encode_add(&mut dead, id, &framed);
        self.write_dead(&mut st, &dead)?;
        let evicted = self.enforce_dead_budget(&mut st)?;
        st.dead_evicted += evicted;
        // The dead letter must be on disk before the removal can be (page write-back order is
        // not write order). Under the mutex: dead letters are rare, correctness first.
        if let Err(source) = self.inner.sync.sync_data(st.dead.file()) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        let mut main = Vec::new();
        encode_ack(&mut main, &[key]);
        self.write_main(&mut st, &main)?;
        st.clear(key);
        Ok(id)
    }

    /// Dead letters, oldest id first. A corrupt one comes back as
    /// [`WalError::CorruptDeadLetter`] and the iteration goes on.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<DeadLetter, WalError>> + '_ {
        let ids = self.lock_state().dead.ids();
        ids.into_iter()
            .filter_map(move |id| self.get_dead_letter(id).transpose())
    }

    /// The dead letter with this id, if any.
    pub fn get_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, WalError> {
        let raw = self
            .lock_state()
            .dead
            .get(id)
            .map_err(io_err("reading the dead-letter log", &self.inner.dir))?;
        match raw {
            None => Ok(None),
            Some(raw) => decode_dead_letter(&raw)
                .map(Some)
                .map_err(|error| WalError::CorruptDeadLetter { id, error }),
        }
    }

    /// Moves a dead letter back to pending under a new key (attempt fields reset,
    /// `next_attempt_ms` 0): the record is appended and fsynced, then the dead letter removed
    /// and fsynced, so an operator's replay sticks (a crash between the two keeps both; replaying
    /// again is harmless).
    ///
    /// Bypasses the dedup window. Errors: [`WalError::NoSuchDeadLetter`],
    /// [`WalError::CorruptDeadLetter`], [`WalError::NotReplayable`] (no record: it was corrupt);
    /// nothing changes then.
    pub fn replay(&self, dead_id: u64) -> Result<Key, WalError> {
        self.check_poison()?;
        let Some(dead) = self.get_dead_letter(dead_id)? else {
            return Err(WalError::NoSuchDeadLetter { id: dead_id });
        };
        let Some(mut record) = dead.record else {
            return Err(WalError::NotReplayable {
                id: dead_id,
                kind: dead.reason.kind,
            });
        };
        record.attempts = 0;
        record.first_attempt_ms = None;
        record.last_attempt_ms = None;
        record.next_attempt_ms = 0;
        record.last_error = None;
        let framed = encode_record(&record).map_err(encode_err)?;
        let (key, gen) = {
            let mut st = self.lock_state();
            if !st.dead.contains(dead_id) {
                return Err(WalError::NoSuchDeadLetter { id: dead_id });
            }
            let key = self.put_one(&mut st, record.priority, &record, &framed, None)?;
            (key, st.written_gen)
        };
        self.make_durable(gen)?;
        let gen = {
            let mut st = self.lock_state();
            let mut dead = Vec::new();
            DeadLog::encode_remove(&mut dead, dead_id);
            self.write_dead(&mut st, &dead)?;
            st.written_gen
        };
        self.make_durable(gen)?;
        info!(dead_id, key = %key, "dead letter replayed");
        Ok(key)
    }

    /// Delivery receipts kept, oldest first. A corrupt one comes back as
    /// [`WalError::CorruptReceipt`] and the iteration goes on.
    pub fn delivered(&self) -> impl Iterator<Item = Result<Receipt, WalError>> + '_ {
        let all = self
            .lock_state()
            .receipts
            .read_all()
            .map_err(io_err("reading receipts", &self.inner.dir));
        let items: Vec<Result<Receipt, WalError>> = match all {
            Err(e) => vec![Err(e)],
            Ok(all) => all
                .into_iter()
                .enumerate()
                .map(|(index, raw)| {
                    decode_receipt(&raw).map_err(|error| WalError::CorruptReceipt {
                        index: index as u64,
                        error,
                    })
                })
                .collect(),
        };
        items.into_iter()
    }

    /// Counts (kept in memory), oldest pending receive time (cached for a second) and sizes.
    pub fn stats(&self) -> Result<WalStats, WalError> {
        let (pending, pending_critical, dead_letters, delivered_kept, data_bytes) = {
            let st = self.lock_state();
            let (all, critical) = st.lane_totals();
            (
                all,
                critical,
                st.dead.count(),
                st.receipts.count(),
                data_bytes_of(&st),
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

    /// Appends `frames` to the active segment. A failed write poisons: the file may now end in a
    /// partial frame, and nothing after it could be trusted.
    ///
    /// A full filesystem is not a failure of the log: the partial write is cut off again (a
    /// truncation needs no space) and [`WalError::NoSpace`] returned, the WAL stays usable.
    /// Removals that could not be written before are written first (see [`Wal::remove`]).
    fn write_main(&self, st: &mut State, frames: &[u8]) -> Result<(), WalError> {
        if frames.is_empty() && st.unwritten_acks.is_empty() {
            return Ok(());
        }
        let owned;
        let frames = if st.unwritten_acks.is_empty() {
            frames
        } else {
            let mut buf = Vec::new();
            encode_ack(&mut buf, &st.unwritten_acks);
            buf.extend_from_slice(frames);
            owned = buf;
            &owned[..]
        };
        let active = st.active_mut();
        let at = active.len;
        if let Err(source) = active.file.write_all_at(frames, at) {
            let path = segment::path(&self.inner.dir, active.id);
            if is_no_space(&source) && active.file.set_len(at).is_ok() {
                return Err(WalError::NoSpace {
                    op: "appending to a segment",
                });
            }
            return Err(self.poisoned_by(WalError::Io {
                op: "appending to a segment",
                path,
                source,
            }));
        }
        st.unwritten_acks.clear();
        let active = st.active_mut();
        active.len += frames.len() as u64;
        st.segment_bytes += frames.len() as u64;
        st.since_checkpoint += frames.len() as u64;
        st.written_gen += 1;
        Ok(())
    }

    fn write_dead(&self, st: &mut State, frames: &[u8]) -> Result<(), WalError> {
        if frames.is_empty() {
            return Ok(());
        }
        if let Err(source) = st.dead.write(frames) {
            if is_no_space(&source) {
                return Err(WalError::NoSpace {
                    op: "appending to the dead-letter log",
                });
            }
            return Err(self.poisoned_by(WalError::Io {
                op: "appending to the dead-letter log",
                path: self.inner.dir.join(crate::deadlog::FILE),
                source,
            }));
        }
        st.written_gen += 1;
        Ok(())
    }

    /// Seals the active segment when full. On a full filesystem the new segment cannot be
    /// created: the active one grows past its size instead (the write may then meet
    /// [`WalError::NoSpace`] itself).
    fn rotate_if_full(&self, st: &mut State) -> Result<(), WalError> {
        if st.segments[&st.active].len >= self.inner.cfg.segment_bytes.max(1) {
            match self.rotate(st) {
                Err(WalError::NoSpace { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Seals the active segment: fsync it, start the next one, fsync the directory.
    fn rotate(&self, st: &mut State) -> Result<(), WalError> {
        let old = Arc::clone(&st.active_mut().file);
        if let Err(source) = self.inner.sync.sync_data(&old) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        let id = st.active + 1;
        let (file, len) = match create_segment(&self.inner.dir, id, st.next_seq) {
            Ok(created) => created,
            Err(WalError::Io { source, .. }) if is_no_space(&source) => {
                let _ = fs::remove_file(segment::path(&self.inner.dir, id));
                return Err(WalError::NoSpace {
                    op: "starting a segment",
                });
            }
            Err(e) => return Err(self.poisoned_by(e)),
        };
        st.segments
            .insert(id, Segment::new(id, st.next_seq, len, Arc::new(file)));
        st.segment_bytes += len;
        st.active = id;
        debug!(segment = id, first_seq = st.next_seq, "segment started");
        Ok(())
    }

    /// fsync (dead-letter log first, then the active segment) unless a completed fsync already
    /// covers write generation `gen`; then housekeeping. Never retries a failed fsync.
    fn make_durable(&self, gen: u64) -> Result<(), WalError> {
        self.check_poison()?;
        let (dead, main, now_gen) = {
            let mut st = self.lock_state();
            if st.synced_gen >= gen {
                return Ok(());
            }
            let dead = if st.dead.dirty {
                st.dead.dirty = false;
                Some(st.dead.file().try_clone().map_err(|source| {
                    self.poisoned_by(WalError::Io {
                        op: "duplicating the dead-letter log handle",
                        path: self.inner.dir.join(crate::deadlog::FILE),
                        source,
                    })
                })?)
            } else {
                None
            };
            let seg = st.active_mut();
            (dead, Arc::clone(&seg.file), st.written_gen)
        };
        if let Some(dead) = dead {
            if let Err(source) = self.inner.sync.sync_data(&dead) {
                return Err(self.poisoned_by(WalError::SyncFailed { source }));
            }
        }
        if let Err(source) = self.inner.sync.sync_data(&main) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        // Another thread's failed fsync in the meantime may have dropped our pages too.
        self.check_poison()?;
        {
            let mut st = self.lock_state();
            st.synced_gen = st.synced_gen.max(now_gen);
        }
        self.delete_empty_segments()?;
        self.checkpoint(false)
    }

    /// Deletes sealed segments with nothing pending. Their removals are durable (the caller just
    /// fsynced, and sealing fsynced the segment), so a segment file missing at open always means
    /// a segment that had emptied.
    ///
    /// An active segment with nothing pending is sealed first (when it holds anything), so the
    /// space of a fully delivered log returns at once: otherwise a small disk budget reached in
    /// the active segment would never be left again.
    fn delete_empty_segments(&self) -> Result<(), WalError> {
        let empty: Vec<u64> = {
            let mut st = self.lock_state();
            let active = &st.segments[&st.active];
            if active.live_total() == 0 && active.len > SEGMENT_START_LEN {
                match self.rotate(&mut st) {
                    // No room for a new segment: the emptied one stays active for now.
                    Err(WalError::NoSpace { .. }) => {}
                    other => other?,
                }
            }
            st.segments
                .values()
                .filter(|s| s.id != st.active && s.live_total() == 0 && s.id < st.active)
                .map(|s| s.id)
                .collect()
        };
        if empty.is_empty() {
            return Ok(());
        }
        // The removals that emptied them must be durable first.
        let gen = self.lock_state().written_gen;
        {
            let main = Arc::clone(&self.lock_state().active_mut().file);
            if let Err(source) = self.inner.sync.sync_data(&main) {
                return Err(self.poisoned_by(WalError::SyncFailed { source }));
            }
            let mut st = self.lock_state();
            st.synced_gen = st.synced_gen.max(gen);
        }
        for id in &empty {
            let path = segment::path(&self.inner.dir, *id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    warn!(path = %path.display(), error = %source, "could not delete an empty segment; will retry");
                    continue;
                }
            }
            let mut st = self.lock_state();
            if let Some(seg) = st.segments.remove(id) {
                st.segment_bytes = st.segment_bytes.saturating_sub(seg.len);
            }
            debug!(segment = id, "empty segment deleted");
        }
        sync_dir(&self.inner.dir).map_err(io_err("syncing the store directory", &self.inner.dir))
    }

    /// Writes a checkpoint when one is due (or `force` and anything changed since the last).
    fn checkpoint(&self, force: bool) -> Result<(), WalError> {
        let Ok(_one) = self.inner.checkpointing.try_lock() else {
            return Ok(());
        };
        let (cp, main) = {
            let mut st = self.lock_state();
            let due = st.since_checkpoint >= self.inner.cfg.checkpoint_bytes
                || (st.since_checkpoint > 0
                    && st.last_checkpoint.elapsed() >= self.inner.cfg.checkpoint_interval);
            if !(due || (force && st.since_checkpoint > 0)) {
                return Ok(());
            }
            st.since_checkpoint = 0;
            st.last_checkpoint = Instant::now();
            let segments = st
                .segments
                .values()
                .map(|s| SegmentState {
                    id: s.id,
                    first_seq: s.first_seq,
                    end_seq: s.end_seq,
                    len: s.len,
                    live: s.bitmap().to_vec(),
                    lane_live: s.lane_counts().to_vec(),
                })
                .collect();
            let position = (st.active, st.segments[&st.active].len);
            let cp = Checkpoint::new(st.next_seq, position, segments, st.dedup.entries());
            (cp, Arc::clone(&st.active_mut().file))
        };
        // The log up to the checkpoint's position must be durable before the checkpoint is.
        if let Err(source) = self.inner.sync.sync_data(&main) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        // A checkpoint and a compaction only save work at the next open: failing one (a full
        // disk, say) loses nothing, so it is logged and the next one is tried later.
        if let Err(e) = cp.store(&self.inner.dir) {
            warn!(error = %e, "writing the checkpoint failed; the next open replays more");
            let tmp = format!("{}.tmp", crate::checkpoint::FILE);
            let _ = fs::remove_file(self.inner.dir.join(tmp));
        }
        let compacted = self.lock_state().dead.compact_if_worth_it(&self.inner.dir);
        if let Err(e) = compacted {
            warn!(error = %e, "compacting the dead-letter log failed; it stays as it is");
        }
        Ok(())
    }

    fn oldest_pending_received_ms(&self) -> Result<Option<u64>, WalError> {
        let mut cache = self
            .inner
            .oldest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, value)) = *cache {
            if at.elapsed() < Duration::from_secs(1) {
                return Ok(value);
            }
        }
        let lanes = self.lock_state().lanes();
        let mut oldest: Option<u64> = None;
        for lane in lanes {
            let mut cursor = self.cursor(lane);
            if let Some(Ok((_, record))) = self.read(&mut cursor, 1)?.into_iter().next() {
                oldest =
                    Some(oldest.map_or(record.received_at_ms, |o| o.min(record.received_at_ms)));
            }
        }
        *cache = Some((Instant::now(), oldest));
        Ok(oldest)
    }
}

/// Migration from format 1: writes values with their old seqs and ids.
impl Wal {
    /// Appends `(key, framed record)` pairs with their seqs kept (ascending), durably.
    pub(crate) fn import_pending(&self, batch: &[(Key, Vec<u8>)]) -> Result<(), WalError> {
        let gen = {
            let mut st = self.lock_state();
            self.rotate_if_full(&mut st)?;
            let mut main = Vec::new();
            for (key, raw) in batch {
                let (received_at_ms, id_hash) = match decode_record(raw) {
                    Ok(r) => (r.received_at_ms, id_hash(&r.topic, &r.alert_id)),
                    Err(_) => (0, 0),
                };
                PutHeader {
                    seq: key.seq,
                    lane: key.priority,
                    received_at_ms,
                    id_hash,
                    replaces: None,
                }
                .encode(&mut main, raw);
                st.next_seq = st.next_seq.max(key.seq + 1);
            }
            self.write_main(&mut st, &main)?;
            let active = st.active_mut();
            for (key, _) in batch {
                active.set_live(key.seq, key.priority);
            }
            st.written_gen
        };
        self.make_durable(gen)
    }

    /// Appends dead letters with their ids kept; ids continue at `next_id` or above.
    pub(crate) fn import_dead(
        &self,
        dead: &[(u64, Vec<u8>)],
        next_id: u64,
    ) -> Result<(), WalError> {
        let gen = {
            let mut st = self.lock_state();
            let mut frames = Vec::new();
            for (id, raw) in dead {
                DeadLog::encode_add(&mut frames, *id, raw);
            }
            self.write_dead(&mut st, &frames)?;
            st.dead.next_id = st.dead.next_id.max(next_id);
            // Kept across compactions by the DeadNextId frame; written now in case none remain.
            let mut marker = Vec::new();
            frame::encode(
                &mut marker,
                Kind::DeadNextId,
                &st.dead.next_id.to_le_bytes(),
            );
            self.write_dead(&mut st, &marker)?;
            st.written_gen
        };
        self.make_durable(gen)
    }

    /// Keeps a framed receipt.
    pub(crate) fn import_receipt(&self, raw: &[u8]) -> Result<(), WalError> {
        let dir = self.inner.dir.clone();
        self.lock_state()
            .receipts
            .push(raw)
            .map_err(io_err("writing a receipt", &dir))
    }

    /// Seqs continue at `next_seq` or above (invariant W2).
    pub(crate) fn import_next_seq(&self, next_seq: Seq) -> Result<(), WalError> {
        let mut st = self.lock_state();
        st.next_seq = st.next_seq.max(next_seq);
        // Recorded by the checkpoint that `close` writes.
        st.since_checkpoint = st.since_checkpoint.max(1);
        Ok(())
    }

    /// A crash between a dead letter's fsync and the removal of its pending copy keeps both:
    /// remove the pending copy (the dead letter names its key).
    fn reconcile_dead_letters(&self) -> Result<(), WalError> {
        let ids = self.lock_state().dead.ids();
        let mut stale = Vec::new();
        for id in ids {
            if let Ok(Some(letter)) = self.get_dead_letter(id) {
                if let Some(key) = letter.key {
                    if self.lock_state().is_pending(key) {
                        stale.push(key);
                    }
                }
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        warn!(records = stale.len(), "removing pending copies of records already dead-lettered (a crash interrupted the move)");
        let gen = {
            let mut st = self.lock_state();
            let mut main = Vec::new();
            encode_ack(&mut main, &stale);
            self.write_main(&mut st, &main)?;
            for key in stale {
                st.clear(key);
            }
            st.written_gen
        };
        self.make_durable(gen)
    }
}

/// Test-only backdoors: write raw bytes where the WAL would write framed values.
#[cfg(test)]
impl Wal {
    /// Appends a `Put` whose record bytes are `raw` (need not decode) under `key`'s lane; returns
    /// the key it got.
    pub(crate) fn put_raw_pending(&self, priority: Priority, raw: &[u8]) -> Key {
        let gen = {
            let mut st = self.lock_state();
            let key = Key {
                priority,
                seq: st.next_seq,
            };
            st.next_seq += 1;
            let mut main = Vec::new();
            PutHeader {
                seq: key.seq,
                lane: priority,
                received_at_ms: 0,
                id_hash: 0,
                replaces: None,
            }
            .encode(&mut main, raw);
            self.write_main(&mut st, &main).expect("test write");
            st.active_mut().set_live(key.seq, priority);
            (st.written_gen, key)
        };
        self.make_durable(gen.0).expect("test fsync");
        gen.1
    }

    pub(crate) fn put_raw_dead(&self, id: u64, raw: &[u8]) {
        let mut st = self.lock_state();
        let mut dead = Vec::new();
        DeadLog::encode_add(&mut dead, id, raw);
        self.write_dead(&mut st, &dead).expect("test write");
    }

    /// Drops the handle as a crash would: no flush, no checkpoint.
    pub(crate) fn abandon(self) {
        self.inner.poison.poison();
    }

    /// Asserts the in-memory tables match a fresh recovery of the files.
    pub(crate) fn assert_counters_consistent(&self) {
        self.flush().expect("flush");
        let st = self.lock_state();
        let fresh = recover(&self.inner.dir, &self.inner.cfg, &FileSync).expect("recover");
        assert_eq!(st.lane_totals(), fresh.lane_totals(), "pending counts");
        assert_eq!(st.dead.count(), fresh.dead.count(), "dead letters");
        assert_eq!(st.next_seq, fresh.next_seq, "next seq");
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

/// One frame of a segment, as a cursor sees it (owned: no borrow of the read buffer).
#[derive(Clone, Debug)]
enum Found {
    Put {
        offset: usize,
        seq: Seq,
        lane: Priority,
        record_at: usize,
        record_len: usize,
    },
    Garbage {
        offset: usize,
        len: usize,
    },
    Other {
        offset: usize,
    },
    /// Pending seqs in a damaged region (made from a `Garbage` under the lock).
    Lost(Vec<Seq>),
}

impl Found {
    fn offset(&self) -> usize {
        match self {
            Found::Put { offset, .. } | Found::Garbage { offset, .. } | Found::Other { offset } => {
                *offset
            }
            Found::Lost(_) => 0,
        }
    }
}

impl From<Item<'_>> for Found {
    fn from(item: Item<'_>) -> Found {
        match item {
            Item::Frame {
                offset,
                kind: Kind::Put,
                body,
                len,
            } => match PutHeader::decode(body) {
                Some((h, record)) => Found::Put {
                    offset,
                    seq: h.seq,
                    lane: h.lane,
                    record_at: offset + len - record.len(),
                    record_len: record.len(),
                },
                None => Found::Garbage { offset, len },
            },
            Item::Frame { offset, .. } => Found::Other { offset },
            Item::Garbage { offset, len } => Found::Garbage { offset, len },
        }
    }
}

/// Pages through the lanes with a cursor each.
struct PendingIter<'a> {
    wal: &'a Wal,
    start: Key,
    lanes: VecDeque<Priority>,
    cursor: Option<Cursor>,
    page: VecDeque<Result<(Key, Record), CorruptPending>>,
}

impl Iterator for PendingIter<'_> {
    type Item = Result<(Key, Record), CorruptPending>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.page.pop_front() {
                return Some(item);
            }
            let cursor = match self.cursor.as_mut() {
                Some(c) => c,
                None => {
                    let lane = self.lanes.pop_front()?;
                    let mut c = self.wal.cursor(lane);
                    if lane == self.start.priority {
                        c.min_seq = self.start.seq;
                    }
                    self.cursor.insert(c)
                }
            };
            match self.wal.read(cursor, 256) {
                Ok(page) if page.is_empty() => self.cursor = None,
                Ok(page) => self.page = page.into(),
                Err(e) => {
                    error!(error = %e, "reading pending records failed; ending this scan");
                    self.lanes.clear();
                    self.cursor = None;
                }
            }
        }
    }
}

/// ENOSPC or EDQUOT: the filesystem (or the quota) is full.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122))
}

fn encode_err(error: RecordError) -> WalError {
    WalError::Encode { error }
}

/// The reason stored when the record turned out undecodable at dead-letter time.
fn corrupt_reason(reason: &DeadReason, error: &RecordError) -> DeadReason {
    if reason.kind == DeadKind::Corrupt {
        return reason.clone();
    }
    DeadReason {
        kind: DeadKind::Corrupt,
        message: format!(
            "{} (as {:?}); stored record undecodable: {error}",
            reason.message, reason.kind
        ),
        status: reason.status,
        api_message: reason.api_message.clone(),
    }
}

/// The segments: what grows with undelivered alerts. Dead letters have their own budget
/// (`dead_max_*`, enforced by export), receipts are bounded by `delivered_keep`: counting either
/// would let a flood of bad payloads, or proof of deliveries, fill the budget and stop ingest of
/// every device for good.
fn data_bytes_of(st: &State) -> u64 {
    st.segment_bytes
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Creates segment `id`, starting with its `SegmentStart` frame; returns it and its length.
fn create_segment(dir: &Path, id: u64, first_seq: Seq) -> Result<(File, u64), WalError> {
    let path = segment::path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("creating a segment", &path))?;
    let mut start = Vec::new();
    frame::encode(&mut start, Kind::SegmentStart, &first_seq.to_le_bytes());
    file.write_all_at(&start, 0)
        .map_err(io_err("writing a segment header", &path))?;
    // The new file's directory entry must survive a power cut before anything in it counts.
    sync_dir(dir).map_err(io_err("syncing the store directory", dir))?;
    Ok((file, start.len() as u64))
}

/// Takes the directory lock (`flock` on `<dir>/LOCK`), waiting up to 3 s for a previous holder in
/// this process (a `Wal` being dropped) to let go.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("opening the lock file", &path))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(WalError::Locked {
                    dir: dir.to_path_buf(),
                    source: io::Error::from(e),
                })
            }
        }
    }
}

/// Checks `<dir>/FORMAT`, writing it (durably) in a new store.
fn check_format(dir: &Path) -> Result<(), WalError> {
    let path = dir.join(FORMAT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found = text
                .trim()
                .strip_prefix("alertbridge-wal ")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| WalError::CorruptMeta {
                    name: "FORMAT",
                    raw: text.as_bytes().to_vec(),
                })?;
            if found != STORE_FORMAT {
                return Err(WalError::UnsupportedStoreFormat {
                    found,
                    supported: STORE_FORMAT,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_format(dir).map_err(io_err("writing the store format", &path))
        }
        Err(e) => Err(io_err("reading the store format", &path)(e)),
    }
}

/// Writes `<dir>/FORMAT` atomically.
pub(crate) fn write_format(dir: &Path) -> io::Result<()> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        writeln!(f, "alertbridge-wal {STORE_FORMAT}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(FORMAT_FILE))?;
    sync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Segment ids found in `dir`, ascending.
fn segment_ids(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing the store directory", dir))? {
        let entry = entry.map_err(io_err("listing the store directory", dir))?;
        if let Some(id) = entry.file_name().to_str().and_then(segment::parse_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Rebuilds the state from the checkpoint and the frames written after it; truncates a torn tail
/// of the last segment; starts a segment when there is none.
fn recover(dir: &Path, cfg: &WalConfig, sync: &dyn SyncTarget) -> Result<State, WalError> {
    let dead = DeadLog::open(dir).map_err(io_err("opening the dead-letter log", dir))?;
    let receipts = Receipts::open(dir, cfg.delivered_keep as u64)
        .map_err(io_err("opening the receipts", dir))?;
    let cp = Checkpoint::load(dir).map_err(io_err("reading the checkpoint", dir))?;
    let ids = segment_ids(dir)?;
    let mut dedup = Dedup::new(cfg.dedup_window, cfg.dedup_window_ms);
    let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
    let mut next_seq: Seq = 1;
    let mut position = (0u64, 0u64);
    let open_seg = |id: u64| -> Result<Arc<File>, WalError> {
        let path = segment::path(dir, id);
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map(Arc::new)
            .map_err(io_err("opening a segment", &path))
    };
    if let Some(cp) = cp {
        next_seq = cp.next_seq;
        position = cp.position;
        for (h, at) in cp.dedup {
            dedup.insert(h, at);
        }
        for s in cp.segments {
            if ids.binary_search(&s.id).is_err() {
                // Deleted after the checkpoint: it had emptied (see delete_empty_segments).
                continue;
            }
            let file = open_seg(s.id)?;
            let seg = Segment::restore(
                s.id,
                s.first_seq,
                s.end_seq,
                s.live,
                s.lane_live,
                s.len,
                file,
            );
            segments.insert(s.id, seg);
        }
    }
    let last_id = ids.last().copied();
    let mut cleared: Vec<Key> = Vec::new();
    for &id in &ids {
        let from = match id.cmp(&position.0) {
            std::cmp::Ordering::Less => {
                if !segments.contains_key(&id) {
                    // Older than the checkpoint and not in it: it had emptied and a crash cut its
                    // deletion short.
                    let path = segment::path(dir, id);
                    info!(path = %path.display(), "removing a segment that had emptied");
                    fs::remove_file(&path).map_err(io_err("removing an empty segment", &path))?;
                }
                continue;
            }
            std::cmp::Ordering::Equal => position.1,
            std::cmp::Ordering::Greater => 0,
        };
        if let std::collections::btree_map::Entry::Vacant(slot) = segments.entry(id) {
            slot.insert(Segment::new(id, next_seq, 0, open_seg(id)?));
        }
        let seg = segments.get_mut(&id).expect("inserted above");
        let path = segment::path(dir, id);
        let file_len = seg
            .file
            .metadata()
            .map_err(io_err("reading a segment's size", &path))?
            .len();
        let mut buf = vec![0u8; file_len.saturating_sub(from) as usize];
        seg.file
            .read_exact_at(&mut buf, from)
            .map_err(io_err("reading a segment", &path))?;
        let (items, _) = frame::scan(&buf, true);
        let mut last_put: Option<Seq> = None;
        let mut gap_from: Option<Seq> = None;
        let mut truncate_at: Option<u64> = None;
        let n = items.len();
        for (i, item) in items.iter().enumerate() {
            match *item {
                Item::Frame {
                    kind: Kind::Put,
                    body,
                    ..
                } => {
                    let Some((h, _)) = PutHeader::decode(body) else {
                        continue;
                    };
                    if let Some(start) = gap_from.take() {
                        mark_gap(seg, start, h.seq);
                    }
                    cleared.extend(h.replaces);
                    seg.set_live(h.seq, h.lane);
                    dedup.insert(h.id_hash, h.received_at_ms);
                    last_put = Some(h.seq);
                }
                Item::Frame {
                    kind: Kind::Ack,
                    body,
                    ..
                } => cleared.extend(decode_ack(body).unwrap_or_default()),
                Item::Frame {
                    kind: Kind::Seen,
                    body,
                    ..
                } => {
                    if let (Some(h), Some(at)) = (
                        body.get(..16)
                            .and_then(|b| b.try_into().ok())
                            .map(u128::from_le_bytes),
                        body.get(16..24)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes),
                    ) {
                        dedup.insert(h, at);
                    }
                }
                Item::Frame {
                    kind: Kind::SegmentStart,
                    body,
                    ..
                } => {
                    if let Some(first) = body.try_into().ok().map(u64::from_le_bytes) {
                        if seg.live_total() == 0 && seg.bitmap().is_empty() {
                            seg.first_seq = first;
                            seg.end_seq = seg.end_seq.max(first);
                        }
                    }
                }
                Item::Frame { .. } => {}
                Item::Garbage { offset, len } => {
                    if i + 1 == n && Some(id) == last_id {
                        truncate_at = Some(from + offset as u64);
                        warn!(
                            segment = id,
                            at = from + offset as u64,
                            bytes = len,
                            "truncating a torn tail of the last segment"
                        );
                    } else {
                        error!(segment = id, offset = from + offset as u64, bytes = len, "damaged region in a segment; its pending records will be reported as corrupt");
                        gap_from = Some(last_put.map_or(seg.first_seq, |s| s + 1));
                    }
                }
            }
        }
        if let Some(start) = gap_from {
            let end = seg.end_seq;
            mark_gap(seg, start, end);
        }
        seg.len = match truncate_at {
            Some(cut) => {
                seg.file
                    .set_len(cut)
                    .map_err(io_err("truncating a torn tail", &path))?;
                cut
            }
            None => file_len,
        };
        next_seq = next_seq.max(seg.end_seq);
    }
    for key in cleared {
        if let Some(seg) = segments.values_mut().rev().find(|s| s.first_seq <= key.seq) {
            seg.clear(key);
        }
    }
    let active = match segments.keys().next_back() {
        Some(&id) => id,
        None => {
            let id = 1;
            let (file, len) = create_segment(dir, id, next_seq)?;
            segments.insert(id, Segment::new(id, next_seq, len, Arc::new(file)));
            id
        }
    };
    // Whatever a crashed process left in the page cache is made durable before it counts.
    if let Err(source) = sync.sync_data(&segments[&active].file) {
        return Err(WalError::SyncFailed { source });
    }
    let segment_bytes = segments.values().map(|s| s.len).sum();
    Ok(State {
        segments,
        active,
        next_seq,
        dedup,
        dead,
        receipts,
        segment_bytes,
        written_gen: 0,
        synced_gen: 0,
        since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        dead_evicted: 0,
        unwritten_acks: Vec::new(),
    })
}

/// Marks the seqs of a damaged region pending (lane unknown: critical), so cursors report them
/// as corrupt instead of losing them silently; later acks in the log clear those that had left.
fn mark_gap(seg: &mut Segment, from: Seq, to: Seq) {
    for seq in from..to {
        seg.set_live(seq, PRIORITY_CRITICAL);
    }
}
