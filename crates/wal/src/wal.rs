//! [`Wal`]: the sled store, its trees, group commit and the moves between trees.
//!
//! Every write that touches more than one tree, or a counter, runs in one sled transaction across
//! all six trees, under the `state` mutex, so the in-memory counters change only after a commit
//! and always match what sled holds. Reads (iterators, `get`) take no lock of ours.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};
use sled::{IVec, Tree};
use tracing::{debug, error, info, warn};

use crate::durability::{sync_dir, DataFileSync, Durable, SyncTarget};
use crate::error::WalError;
use crate::letters::{
    decode_dead_letter, decode_receipt, encode_dead_letter, encode_receipt, DeadKind, DeadLetter,
    DeadReason, Receipt,
};
use crate::poison::Poison;
use crate::record::{
    decode_record, encode_record, Key, Record, RecordError, Seq, PRIORITY_CRITICAL,
};

/// Version of the store layout (tree names, key shapes, meta entries), kept in the meta tree.
/// Bump it when that layout changes incompatibly.
pub const STORE_FORMAT: u64 = 1;

/// Tree names: part of the on-disk format.
const TREE_PENDING: &str = "pending";
const TREE_DEAD: &str = "dead";
const TREE_DELIVERED: &str = "delivered";
const TREE_DEDUP: &str = "dedup";
const TREE_DEDUP_ORDER: &str = "dedup_order";
const TREE_META: &str = "meta";

/// Meta keys (values: u64 big-endian).
const META_FORMAT: &str = "format";
const META_NEXT_SEQ: &str = "next_seq";
const META_NEXT_DEAD_ID: &str = "next_dead_id";

/// Where and how to open the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Directory of the sled store (created if missing). One process at a time: sled locks it.
    pub dir: PathBuf,
    /// sled page cache size in bytes (default 16 MiB; sled's own default of 1 GiB is far too much
    /// for a Raspberry Pi).
    pub cache_capacity_bytes: u64,
    /// Period of sled's background flusher, which also `sync_all`s the data file; bounds what
    /// un-fsynced writes (`update`, `remove`, `dead_letter`) a crash can undo. `None` disables it.
    /// Default `Some(500)`.
    pub flush_every_ms: Option<u64>,
    /// How many recent alert ids the dedup window remembers (default 100 000); 0 disables dedup.
    pub dedup_window: usize,
    /// How many delivery receipts are kept, oldest evicted first (default 10 000); 0 keeps none.
    pub delivered_keep: usize,
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
            cache_capacity_bytes: 16 * 1024 * 1024,
            flush_every_ms: Some(500),
            dedup_window: 100_000,
            delivered_keep: 10_000,
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
    /// Live data bytes: the framed (encoded) value lengths of every pending record plus every
    /// dead letter, i.e. the data an operator must keep. This is what a disk budget should
    /// compare against: sled reuses freed space but never shrinks its files, so
    /// [`WalStats::size_on_disk`] does not fall when records leave. Excluded: keys, sled's own
    /// overhead, and receipts and dedup entries (bounded by count: `delivered_keep`,
    /// `dedup_window`). Same as [`Wal::data_bytes`].
    pub data_bytes: u64,
    /// Bytes used by the sled files. Never shrinks (sled reuses freed space internally); budget
    /// with [`WalStats::data_bytes`] instead.
    pub size_on_disk: u64,
}

/// A pending value that does not decode (invariant I4). Dead-letter it with
/// [`Wal::dead_letter`]; the WAL keeps `raw` in the dead letter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pending record {key} is corrupt")]
pub struct CorruptPending {
    /// Its key.
    pub key: Key,
    /// The stored bytes.
    pub raw: Vec<u8>,
    /// Why they do not decode.
    #[source]
    pub error: RecordError,
}

/// The durable write-ahead log. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    /// The sled database; dropping the last `Wal` clone flushes and closes it.
    db: sled::Db,
    trees: Trees,
    /// Counters and positions, changed only after a committed transaction (held across it).
    state: Mutex<State>,
    poison: Poison,
    /// fsync seam; called after every successful `db.flush()` of a durable operation.
    sync: Box<dyn SyncTarget>,
    dedup_window: u64,
    delivered_keep: u64,
    dir: PathBuf,
}

/// The WAL's trees; names and key shapes are part of the on-disk format.
struct Trees {
    /// `Key` bytes → framed `Record`.
    pending: Tree,
    /// dead-letter id (u64 BE) → framed `DeadLetter`.
    dead: Tree,
    /// delivery position (u64 BE) → framed `Receipt`; bounded FIFO.
    delivered: Tree,
    /// alert id bytes → its dedup position (u64 BE).
    dedup: Tree,
    /// dedup position (u64 BE) → alert id bytes; bounded FIFO, the eviction order of `dedup`.
    dedup_order: Tree,
    /// `format`, `next_seq`, `next_dead_id` → u64 BE.
    meta: Tree,
}

/// The transactional view of [`Trees`] inside one transaction.
struct Tx<'a> {
    pending: &'a TransactionalTree,
    dead: &'a TransactionalTree,
    delivered: &'a TransactionalTree,
    dedup: &'a TransactionalTree,
    dedup_order: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

type TxResult<A> = ConflictableTransactionResult<A, WalError>;

fn abort<A>(error: WalError) -> TxResult<A> {
    Err(ConflictableTransactionError::Abort(error))
}

/// Counters and FIFO positions. Cloned into each transaction, written back after commit.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    next_seq: Seq,
    next_dead_id: u64,
    pending: u64,
    pending_critical: u64,
    dead: u64,
    /// Sum of the stored value lengths in `pending` and `dead` ([`WalStats::data_bytes`]).
    data_bytes: u64,
    /// Oldest live position of `dedup_order`.
    dedup_head: u64,
    /// Next position of `dedup_order`.
    dedup_tail: u64,
    dedup_len: u64,
    delivered_head: u64,
    delivered_tail: u64,
    delivered_len: u64,
}

impl State {
    fn add_pending(&mut self, key: Key) {
        self.pending += 1;
        if key.priority == PRIORITY_CRITICAL {
            self.pending_critical += 1;
        }
    }

    fn sub_pending(&mut self, key: Key) {
        self.pending = self.pending.saturating_sub(1);
        if key.priority == PRIORITY_CRITICAL {
            self.pending_critical = self.pending_critical.saturating_sub(1);
        }
    }

    /// A value of `len` bytes was stored in `pending` or `dead`.
    fn add_bytes(&mut self, len: usize) {
        self.data_bytes = self.data_bytes.saturating_add(len as u64);
    }

    /// A value of `len` bytes left `pending` or `dead`.
    fn sub_bytes(&mut self, len: usize) {
        self.data_bytes = self.data_bytes.saturating_sub(len as u64);
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

impl Wal {
    /// Opens (or creates) the WAL in `cfg.dir`, fsyncing through [`DataFileSync`].
    pub fn open(cfg: WalConfig) -> Result<Wal, WalError> {
        Self::open_inner(cfg, None)
    }

    /// Opens (or creates) the WAL with a custom fsync seam (tests inject failures).
    pub fn open_with_sync(cfg: WalConfig, sync: Box<dyn SyncTarget>) -> Result<Wal, WalError> {
        Self::open_inner(cfg, Some(sync))
    }

    fn open_inner(cfg: WalConfig, sync: Option<Box<dyn SyncTarget>>) -> Result<Wal, WalError> {
        let dir = cfg.dir.clone();
        let open_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Open { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(open_err(&dir))?;
        let db = open_sled(&cfg)?;
        make_layout_durable(&dir)?;
        let sync = match sync {
            Some(sync) => sync,
            None => Box::new(DataFileSync::open(&dir).map_err(open_err(&dir))?),
        };
        let trees = Trees {
            pending: db.open_tree(TREE_PENDING)?,
            dead: db.open_tree(TREE_DEAD)?,
            delivered: db.open_tree(TREE_DELIVERED)?,
            dedup: db.open_tree(TREE_DEDUP)?,
            dedup_order: db.open_tree(TREE_DEDUP_ORDER)?,
            meta: db.open_tree(TREE_META)?,
        };
        match read_meta(&trees.meta, META_FORMAT)? {
            Some(STORE_FORMAT) => {}
            Some(found) => {
                return Err(WalError::UnsupportedStoreFormat {
                    found,
                    supported: STORE_FORMAT,
                })
            }
            None => {
                trees
                    .meta
                    .insert(META_FORMAT, &STORE_FORMAT.to_be_bytes())?;
            }
        }
        let state = recover_state(&trees)?;
        info!(
            dir = %dir.display(),
            pending = state.pending,
            pending_critical = state.pending_critical,
            dead_letters = state.dead,
            data_bytes = state.data_bytes,
            next_seq = state.next_seq,
            recovered = db.was_recovered(),
            "WAL opened"
        );
        let wal = Wal {
            inner: Arc::new(Inner {
                db,
                trees,
                state: Mutex::new(state),
                poison: Poison::default(),
                sync,
                dedup_window: cfg.dedup_window as u64,
                delivered_keep: cfg.delivered_keep as u64,
                dir,
            }),
        };
        // The format marker and anything sled recovered are durable before the first append.
        wal.make_durable()?;
        Ok(wal)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Group commit (invariant I1).
    ///
    /// Writes all entries and their dedup-window entries in ONE sled transaction across trees,
    /// then `flush()` + [`SyncTarget::sync_data`]; returns [`Durable`] only after both returned
    /// `Ok`. An alert id already in the dedup window (or earlier in the same batch) yields
    /// [`Appended::Duplicate`] and is not written. Dead-letter entries enter the dedup window too.
    ///
    /// On flush/sync failure the WAL is poisoned (invariant I5): this call returns
    /// [`WalError::FlushFailed`] / [`WalError::SyncFailed`], every later write
    /// [`WalError::Poisoned`]; the fsync is never retried. Ack nothing from the batch.
    pub fn append_batch(&self, entries: Vec<Entry>) -> Result<Durable<Vec<Appended>>, WalError> {
        self.check_poison()?;
        let mut appended = Vec::with_capacity(entries.len());
        if !entries.is_empty() {
            let window = self.inner.dedup_window;
            let mut state = self.lock_state();
            let (out, next) = self.transact(|tx| {
                let mut st = state.clone();
                let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
                let mut out = Vec::with_capacity(entries.len());
                for entry in &entries {
                    let alert_id = entry.record().alert_id.as_str();
                    if !seen.insert(alert_id) || tx.dedup.get(alert_id.as_bytes())?.is_some() {
                        out.push(Appended::Duplicate {
                            alert_id: alert_id.to_owned(),
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
                            let value = encode_record(record).or_else(encode_abort)?;
                            st.add_bytes(value.len());
                            tx.pending.insert(&key.to_bytes()[..], value)?;
                            st.add_pending(key);
                            out.push(Appended::Pending(key));
                        }
                        Entry::DeadLetter(record, reason) => {
                            let id = st.next_dead_id;
                            st.next_dead_id += 1;
                            let dead = DeadLetter {
                                id,
                                key: None,
                                record: Some(record.clone()),
                                raw: None,
                                reason: reason.clone(),
                                dead_at_ms: record.received_at_ms,
                            };
                            let value = encode_dead_letter(&dead).or_else(encode_abort)?;
                            st.add_bytes(value.len());
                            tx.dead.insert(&id.to_be_bytes()[..], value)?;
                            st.dead += 1;
                            out.push(Appended::DeadLettered(id));
                        }
                    }
                    if window > 0 {
                        let pos = st.dedup_tail.to_be_bytes();
                        tx.dedup_order.insert(&pos[..], alert_id.as_bytes())?;
                        tx.dedup.insert(alert_id.as_bytes(), &pos[..])?;
                        st.dedup_tail += 1;
                        st.dedup_len += 1;
                    }
                    // Per entry, so the window is exact: the last `window` ids before each entry.
                    evict_dedup(tx, &mut st, window)?;
                }
                // Also when every entry was a duplicate and the window shrank since open.
                evict_dedup(tx, &mut st, window)?;
                write_counters(tx.meta, &st)?;
                Ok((out, st))
            })?;
            *state = next;
            appended = out;
        }
        self.make_durable()?;
        Ok(Durable::new(appended))
    }

    /// Pending records in key order (critical lane first, then seq).
    ///
    /// An undecodable value comes back as `Err(CorruptPending)` (never a panic) so the caller can
    /// dead-letter it. A sled read error ends the iteration early (logged at error level); the
    /// next scan starts over. The iterator sees records appended while it runs.
    pub fn pending(&self) -> impl Iterator<Item = Result<(Key, Record), CorruptPending>> + '_ {
        PendingIter {
            iter: self.inner.trees.pending.iter(),
            done: false,
        }
    }

    /// Like [`Wal::pending`], starting at `start` (inclusive): lets drain resume a scan.
    pub fn pending_from(
        &self,
        start: Key,
    ) -> impl Iterator<Item = Result<(Key, Record), CorruptPending>> + '_ {
        PendingIter {
            iter: self.inner.trees.pending.range(start.to_bytes()..),
            done: false,
        }
    }

    /// The pending record under `key`, if any. [`WalError::CorruptRecord`] if it does not decode.
    pub fn get(&self, key: Key) -> Result<Option<Record>, WalError> {
        match self.inner.trees.pending.get(key.to_bytes())? {
            None => Ok(None),
            Some(raw) => decode_record(&raw)
                .map(Some)
                .map_err(|error| WalError::CorruptRecord { key, error }),
        }
    }

    /// Overwrites a pending record (attempts, next_attempt_ms...). The key decides the lane.
    ///
    /// Not fsynced: losing it in a crash only repeats an attempt. [`WalError::NotPending`] if the
    /// key is no longer pending (it is not re-created).
    pub fn update(&self, key: Key, record: &Record) -> Result<(), WalError> {
        self.check_poison()?;
        let value = IVec::from(encode_record(record).map_err(|error| WalError::Encode { error })?);
        let k = key.to_bytes();
        // Under the state mutex like every write that changes a counter (here `data_bytes`).
        let mut state = self.lock_state();
        let next = self.transact(|tx| {
            let mut st = state.clone();
            let Some(old) = tx.pending.get(k)? else {
                return abort(WalError::NotPending { key });
            };
            tx.pending.insert(&k[..], value.clone())?;
            st.sub_bytes(old.len());
            st.add_bytes(value.len());
            Ok(st)
        })?;
        *state = next;
        Ok(())
    }

    /// Delivered (invariant I3): atomically removes `key` from pending and keeps the receipt
    /// (bounded to `delivered_keep`, oldest evicted).
    ///
    /// Not fsynced: losing it in a crash means one redelivery (a duplicate), never a loss.
    /// [`WalError::NotPending`] if the key is not pending; nothing changes then.
    pub fn remove(&self, key: Key, receipt: Receipt) -> Result<(), WalError> {
        self.check_poison()?;
        let value =
            IVec::from(encode_receipt(&receipt).map_err(|error| WalError::Encode { error })?);
        let keep = self.inner.delivered_keep;
        let k = key.to_bytes();
        let mut state = self.lock_state();
        let next = self.transact(|tx| {
            let mut st = state.clone();
            let Some(old) = tx.pending.remove(&k[..])? else {
                return abort(WalError::NotPending { key });
            };
            st.sub_pending(key);
            st.sub_bytes(old.len());
            if keep > 0 {
                tx.delivered
                    .insert(&st.delivered_tail.to_be_bytes()[..], value.clone())?;
                st.delivered_tail += 1;
                st.delivered_len += 1;
            }
            evict_delivered(tx, &mut st, keep)?;
            Ok(st)
        })?;
        *state = next;
        Ok(())
    }

    /// Atomic move pending → dead letters (invariant I3). Returns the dead-letter id.
    ///
    /// The record is read inside the transaction; if its bytes are corrupt they are kept as
    /// `raw` and the kind becomes [`DeadKind::Corrupt`] (the decode error appended to the
    /// message). Not fsynced: a crash may undo the move, which puts the record back in pending.
    pub fn dead_letter(&self, key: Key, reason: DeadReason, now_ms: u64) -> Result<u64, WalError> {
        self.check_poison()?;
        let k = key.to_bytes();
        let mut state = self.lock_state();
        let (id, next) = self.transact(|tx| {
            let mut st = state.clone();
            let Some(raw) = tx.pending.remove(&k[..])? else {
                return abort(WalError::NotPending { key });
            };
            st.sub_pending(key);
            st.sub_bytes(raw.len());
            let (record, raw, reason) = match decode_record(&raw) {
                Ok(record) => (Some(record), None, reason.clone()),
                Err(error) => (None, Some(raw.to_vec()), corrupt_reason(&reason, &error)),
            };
            let id = st.next_dead_id;
            st.next_dead_id += 1;
            let dead = DeadLetter {
                id,
                key: Some(key),
                record,
                raw,
                reason,
                dead_at_ms: now_ms,
            };
            let value = encode_dead_letter(&dead).or_else(encode_abort)?;
            st.add_bytes(value.len());
            tx.dead.insert(&id.to_be_bytes()[..], value)?;
            st.dead += 1;
            write_counters(tx.meta, &st)?;
            Ok((id, st))
        })?;
        *state = next;
        Ok(id)
    }

    /// Dead letters, oldest id first. A corrupt one comes back as
    /// [`WalError::CorruptDeadLetter`] and the iteration goes on.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<DeadLetter, WalError>> + '_ {
        self.inner.trees.dead.iter().map(|item| {
            let (k, v) = item?;
            let id = u64_key(&k).ok_or_else(|| WalError::CorruptKey {
                tree: TREE_DEAD,
                raw: k.to_vec(),
            })?;
            decode_dead_letter(&v).map_err(|error| WalError::CorruptDeadLetter { id, error })
        })
    }

    /// The dead letter with this id, if any.
    pub fn get_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, WalError> {
        match self.inner.trees.dead.get(id.to_be_bytes())? {
            None => Ok(None),
            Some(raw) => decode_dead_letter(&raw)
                .map(Some)
                .map_err(|error| WalError::CorruptDeadLetter { id, error }),
        }
    }

    /// Moves a dead letter back to pending under a new key (attempt fields reset,
    /// `next_attempt_ms` 0), then flushes and fsyncs: an operator's replay sticks.
    ///
    /// Bypasses the dedup window. Errors: [`WalError::NoSuchDeadLetter`],
    /// [`WalError::CorruptDeadLetter`], [`WalError::NotReplayable`] (no record: it was corrupt);
    /// nothing changes then.
    pub fn replay(&self, dead_id: u64) -> Result<Key, WalError> {
        self.check_poison()?;
        let id_bytes = dead_id.to_be_bytes();
        let mut state = self.lock_state();
        let (key, next) = self.transact(|tx| {
            let mut st = state.clone();
            let Some(raw) = tx.dead.get(id_bytes)? else {
                return abort(WalError::NoSuchDeadLetter { id: dead_id });
            };
            let dead = match decode_dead_letter(&raw) {
                Ok(dead) => dead,
                Err(error) => return abort(WalError::CorruptDeadLetter { id: dead_id, error }),
            };
            let Some(mut record) = dead.record else {
                return abort(WalError::NotReplayable {
                    id: dead_id,
                    kind: dead.reason.kind,
                });
            };
            record.attempts = 0;
            record.first_attempt_ms = None;
            record.last_attempt_ms = None;
            record.next_attempt_ms = 0;
            record.last_error = None;
            let key = Key {
                priority: record.priority,
                seq: st.next_seq,
            };
            st.next_seq += 1;
            let value = encode_record(&record).or_else(encode_abort)?;
            st.sub_bytes(raw.len());
            st.add_bytes(value.len());
            tx.pending.insert(&key.to_bytes()[..], value)?;
            tx.dead.remove(&id_bytes[..])?;
            st.add_pending(key);
            st.dead = st.dead.saturating_sub(1);
            write_counters(tx.meta, &st)?;
            Ok((key, st))
        })?;
        *state = next;
        drop(state);
        info!(dead_id, key = %key, "dead letter replayed");
        self.make_durable()?;
        Ok(key)
    }

    /// Delivery receipts kept, oldest first. A corrupt one comes back as
    /// [`WalError::CorruptReceipt`] and the iteration goes on.
    pub fn delivered(&self) -> impl Iterator<Item = Result<Receipt, WalError>> + '_ {
        self.inner.trees.delivered.iter().map(|item| {
            let (k, v) = item?;
            let index = u64_key(&k).ok_or_else(|| WalError::CorruptKey {
                tree: TREE_DELIVERED,
                raw: k.to_vec(),
            })?;
            decode_receipt(&v).map_err(|error| WalError::CorruptReceipt { index, error })
        })
    }

    /// Counts (kept in memory: O(1)), oldest pending receive time (one lookup per lane) and size.
    pub fn stats(&self) -> Result<WalStats, WalError> {
        let st = self.lock_state().clone();
        Ok(WalStats {
            pending: st.pending,
            pending_critical: st.pending_critical,
            dead_letters: st.dead,
            delivered_kept: st.delivered_len,
            data_bytes: st.data_bytes,
            oldest_pending_received_ms: self.oldest_pending_received_ms()?,
            size_on_disk: self.size_on_disk()?,
        })
    }

    /// Live data bytes in pending and dead letters ([`WalStats::data_bytes`]): the figure to
    /// compare a disk budget against, since it falls when records leave while
    /// [`Wal::size_on_disk`] never does. Kept in memory: no I/O, one uncontended mutex lock.
    pub fn data_bytes(&self) -> u64 {
        self.lock_state().data_bytes
    }

    /// Bytes used by the sled files (data file and blobs). sled reuses freed space but never
    /// shrinks its files, so this does not fall when records are removed; budget with
    /// [`Wal::data_bytes`].
    pub fn size_on_disk(&self) -> Result<u64, WalError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// Durable flush + fsync of everything written so far (used at shutdown). Poisons the WAL on
    /// failure, like [`Wal::append_batch`].
    pub fn flush(&self) -> Result<(), WalError> {
        self.make_durable()
    }

    /// Whether a flush or fsync has failed (invariant I5); if so every write fails.
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

    /// flush + fsync; the only place durability is decided. Never retries.
    fn make_durable(&self) -> Result<(), WalError> {
        self.check_poison()?;
        if let Err(source) = self.inner.db.flush() {
            self.inner.poison.poison();
            error!(error = %source, "sled flush failed: WAL poisoned");
            return Err(WalError::FlushFailed { source });
        }
        if let Err(source) = self.inner.sync.sync_data() {
            self.inner.poison.poison();
            error!(error = %source, "fsync failed: WAL poisoned");
            return Err(WalError::SyncFailed { source });
        }
        // Another thread's failed fsync in the meantime may have dropped our pages too.
        self.check_poison()
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // State is only assigned whole after a commit, so a panicking holder cannot leave it
        // half-updated.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in one sled transaction across all trees. `f` must only use the `Tx` trees (a
    /// plain `Tree` call inside would deadlock on sled's global transaction lock).
    fn transact<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A, WalError> {
        let t = &self.inner.trees;
        (
            &t.pending,
            &t.dead,
            &t.delivered,
            &t.dedup,
            &t.dedup_order,
            &t.meta,
        )
            .transaction(|(pending, dead, delivered, dedup, dedup_order, meta)| {
                f(&Tx {
                    pending,
                    dead,
                    delivered,
                    dedup,
                    dedup_order,
                    meta,
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => WalError::Storage(e),
            })
    }

    fn oldest_pending_received_ms(&self) -> Result<Option<u64>, WalError> {
        let pending = &self.inner.trees.pending;
        let mut from: Vec<u8> = Vec::new();
        let mut oldest: Option<u64> = None;
        while let Some(item) = pending.range(from.as_slice()..).next() {
            let (k, v) = item?;
            let Some(key) = Key::from_bytes(&k) else {
                // Malformed key: continue right after it.
                from = k.to_vec();
                from.push(0);
                continue;
            };
            if let Ok(record) = decode_record(&v) {
                oldest =
                    Some(oldest.map_or(record.received_at_ms, |o| o.min(record.received_at_ms)));
            }
            match key.priority.checked_add(1) {
                Some(next_lane) => from = vec![next_lane],
                None => break,
            }
        }
        Ok(oldest)
    }
}

/// Test-only backdoors: write raw bytes where the WAL would write framed values.
#[cfg(test)]
impl Wal {
    pub(crate) fn put_raw_pending(&self, key: Key, raw: &[u8]) {
        let mut state = self.lock_state();
        let k = key.to_bytes();
        let next = self
            .transact(|tx| {
                let mut st = state.clone();
                match tx.pending.insert(&k[..], raw)? {
                    Some(old) => st.sub_bytes(old.len()),
                    None => st.add_pending(key),
                }
                st.add_bytes(raw.len());
                st.next_seq = st.next_seq.max(key.seq + 1);
                write_counters(tx.meta, &st)?;
                Ok(st)
            })
            .expect("test write of a raw pending value");
        *state = next;
    }

    pub(crate) fn put_raw_dead(&self, id: u64, raw: &[u8]) {
        let mut state = self.lock_state();
        let next = self
            .transact(|tx| {
                let mut st = state.clone();
                match tx.dead.insert(&id.to_be_bytes()[..], raw)? {
                    Some(old) => st.sub_bytes(old.len()),
                    None => st.dead += 1,
                }
                st.add_bytes(raw.len());
                st.next_dead_id = st.next_dead_id.max(id + 1);
                write_counters(tx.meta, &st)?;
                Ok(st)
            })
            .expect("test write of a raw dead letter");
        *state = next;
    }

    /// Asserts the in-memory counters match a full recount of the trees.
    pub(crate) fn assert_counters_consistent(&self) {
        let recounted = recover_state(&self.inner.trees).expect("recount");
        let st = self.lock_state().clone();
        assert_eq!(
            (
                st.pending,
                st.pending_critical,
                st.dead,
                st.data_bytes,
                st.dedup_len,
                st.delivered_len
            ),
            (
                recounted.pending,
                recounted.pending_critical,
                recounted.dead,
                recounted.data_bytes,
                recounted.dedup_len,
                recounted.delivered_len
            ),
            "in-memory counters differ from the trees"
        );
        assert_eq!(
            self.inner.trees.dedup.len() as u64,
            st.dedup_len,
            "dedup and dedup_order disagree"
        );
    }
}

/// Reads pending values, mapping each to a record or a [`CorruptPending`].
struct PendingIter {
    iter: sled::Iter,
    done: bool,
}

impl Iterator for PendingIter {
    type Item = Result<(Key, Record), CorruptPending>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.iter.next()? {
                Err(e) => {
                    error!(error = %e, "reading the pending tree failed; ending this scan");
                    self.done = true;
                }
                Ok((k, v)) => {
                    let Some(key) = Key::from_bytes(&k) else {
                        error!(raw_key = ?&k[..], "malformed key in the pending tree; skipped");
                        continue;
                    };
                    return Some(match decode_record(&v) {
                        Ok(record) => Ok((key, record)),
                        Err(error) => {
                            warn!(key = %key, error = %error, "corrupt pending record");
                            Err(CorruptPending {
                                key,
                                raw: v.to_vec(),
                                error,
                            })
                        }
                    });
                }
            }
        }
        None
    }
}

fn encode_abort<A>(error: RecordError) -> TxResult<A> {
    abort(WalError::Encode { error })
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

/// Drops the oldest dedup entries beyond `window`, inside the batch's transaction.
fn evict_dedup(tx: &Tx<'_>, st: &mut State, window: u64) -> TxResult<()> {
    while st.dedup_len > window && st.dedup_head < st.dedup_tail {
        let pos = st.dedup_head.to_be_bytes();
        if let Some(alert_id) = tx.dedup_order.remove(&pos[..])? {
            // Only if the id still points at this position (it always should).
            if tx.dedup.get(&alert_id)?.as_deref() == Some(&pos[..]) {
                tx.dedup.remove(alert_id)?;
            }
            st.dedup_len -= 1;
        }
        st.dedup_head += 1;
    }
    Ok(())
}

/// Drops the oldest receipts beyond `keep`.
fn evict_delivered(tx: &Tx<'_>, st: &mut State, keep: u64) -> TxResult<()> {
    while st.delivered_len > keep && st.delivered_head < st.delivered_tail {
        if tx
            .delivered
            .remove(&st.delivered_head.to_be_bytes()[..])?
            .is_some()
        {
            st.delivered_len -= 1;
        }
        st.delivered_head += 1;
    }
    Ok(())
}

/// Persists the id counters with the writes that used them, so they never go backwards.
fn write_counters(meta: &TransactionalTree, st: &State) -> TxResult<()> {
    meta.insert(META_NEXT_SEQ, &st.next_seq.to_be_bytes()[..])?;
    meta.insert(META_NEXT_DEAD_ID, &st.next_dead_id.to_be_bytes()[..])?;
    Ok(())
}

fn u64_key(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn read_meta(meta: &Tree, name: &'static str) -> Result<Option<u64>, WalError> {
    match meta.get(name)? {
        None => Ok(None),
        Some(raw) => u64_key(&raw)
            .map(Some)
            .ok_or_else(|| WalError::CorruptMeta {
                name,
                raw: raw.to_vec(),
            }),
    }
}

/// First and one-past-last position and entry count of a FIFO tree keyed by u64 BE.
fn fifo_bounds(tree: &Tree, name: &'static str) -> Result<(u64, u64, u64), WalError> {
    let corrupt = |k: &IVec| WalError::CorruptKey {
        tree: name,
        raw: k.to_vec(),
    };
    let head = match tree.first()? {
        Some((k, _)) => u64_key(&k).ok_or_else(|| corrupt(&k))?,
        None => 0,
    };
    let tail = match tree.last()? {
        Some((k, _)) => u64_key(&k).ok_or_else(|| corrupt(&k))? + 1,
        None => 0,
    };
    let len = tree.iter().keys().try_fold(0u64, |n, k| k.map(|_| n + 1))?;
    Ok((head, tail, len))
}

/// Rebuilds counters and positions from the trees (one scan of pending and dead with values,
/// one of the FIFO trees' keys, at open).
fn recover_state(trees: &Trees) -> Result<State, WalError> {
    let mut pending = 0u64;
    let mut pending_critical = 0u64;
    let mut data_bytes = 0u64;
    let mut max_seq: Option<Seq> = None;
    for item in trees.pending.iter() {
        let (k, v) = item?;
        // Counted even under a malformed key: the bytes are on disk all the same.
        data_bytes += v.len() as u64;
        let Some(key) = Key::from_bytes(&k) else {
            warn!(raw_key = ?&k[..], "malformed key in the pending tree");
            continue;
        };
        pending += 1;
        if key.priority == PRIORITY_CRITICAL {
            pending_critical += 1;
        }
        max_seq = Some(max_seq.map_or(key.seq, |m| m.max(key.seq)));
    }
    let (_, dead_tail, dead) = fifo_bounds(&trees.dead, TREE_DEAD)?;
    for v in trees.dead.iter().values() {
        data_bytes += v?.len() as u64;
    }
    let (dedup_head, dedup_tail, dedup_len) = fifo_bounds(&trees.dedup_order, TREE_DEDUP_ORDER)?;
    let (delivered_head, delivered_tail, delivered_len) =
        fifo_bounds(&trees.delivered, TREE_DELIVERED)?;
    let next_seq = read_meta(&trees.meta, META_NEXT_SEQ)?
        .unwrap_or(1)
        .max(max_seq.map_or(1, |m| m + 1));
    let next_dead_id = read_meta(&trees.meta, META_NEXT_DEAD_ID)?
        .unwrap_or(1)
        .max(dead_tail)
        .max(1);
    debug!(
        next_seq,
        next_dead_id, data_bytes, dedup_len, delivered_len, "WAL state recovered"
    );
    Ok(State {
        next_seq,
        next_dead_id,
        pending,
        pending_critical,
        dead,
        data_bytes,
        dedup_head,
        dedup_tail,
        dedup_len,
        delivered_head,
        delivered_tail,
        delivered_len,
    })
}

/// How long [`Wal::open`] waits for sled's directory lock.
///
/// Dropping the last handle does not release the lock at once: sled's background threads still
/// hold the data file until their queued work ends (sled's own test build waits for the lock
/// for the same reason). A lock held by another process for longer is [`WalError::Locked`].
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens sled with the WAL's settings, waiting up to [`LOCK_WAIT`] for the directory lock.
fn open_sled(cfg: &WalConfig) -> Result<sled::Db, WalError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(&cfg.dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(cfg.cache_capacity_bytes)
            .flush_every_ms(cfg.flush_every_ms)
            .open();
        match opened {
            // sled 0.34.7 reports a held lock only through this message (config.rs `try_lock`).
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(WalError::Locked {
                        dir: cfg.dir.clone(),
                        source: e,
                    });
                }
                // No event to wait on: sled exposes neither the lock nor its thread pool.
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

/// fsyncs what sled created without syncing: its config file (a torn `conf` makes sled refuse to
/// open) and the directory entries of `db`, `conf` and `blobs`, plus the directory's own entry.
fn make_layout_durable(dir: &Path) -> Result<(), WalError> {
    let open_err = |path: PathBuf| move |source| WalError::Open { path, source };
    let conf = dir.join("conf");
    match std::fs::File::open(&conf) {
        Ok(f) => f.sync_all().map_err(open_err(conf))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_err(conf)(e)),
    }
    sync_dir(dir).map_err(open_err(dir.to_path_buf()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    sync_dir(&parent).map_err(open_err(parent))?;
    Ok(())
}
