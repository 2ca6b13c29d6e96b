//! The engines under test, each behind [`Engine`], and the workload's keys and values.
//!
//! Durability choices (the same rule for every engine: the call that makes an append batch
//! durable also ends every remove batch of 256; the agent itself removes without an fsync and
//! relies on a later one, so this is the cost of a *durable* drain at one sync per 256 removals):
//!
//! | engine | append batch | remove batch |
//! |---|---|---|
//! | `sled` | `Tree::apply_batch`, `Db::flush()`, `fdatasync(<dir>/db)` | same |
//! | `redb` | one write transaction, `Durability::Immediate` | same |
//! | `fjall` | `WriteBatch::commit`, `persist(SyncAll)` | `remove` (strong tombstones), same |
//! | `fjall-weak` | as `fjall` | `remove_weak` (weak tombstones), same |
//! | `wal` | `Wal::append_batch` (durable by contract) | 256 × `Wal::remove`, then `Wal::flush()` |

use std::error::Error;
use std::fs::File;
use std::path::{Path, PathBuf};

use alertbridge_wal::{Appended, Entry, Key, Receipt, Record, Wal, WalConfig, PRIORITY_NORMAL};
use redb::{ReadableDatabase, ReadableTable};

/// Result type of the harness: any engine's error, boxed.
pub(crate) type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// A pending key as stored: `[lane u8][seq u64 BE]` (alertbridge-wal's `Key::to_bytes`).
pub(crate) type K = [u8; 9];

/// The lane every benchmark record goes to (the normal lane).
pub(crate) const LANE: u8 = PRIORITY_NORMAL;

/// The MQTT topic of every benchmark record.
const TOPIC: &str = "plant/line-3/pump-17/alerts";

/// Length of the JSON payload of every benchmark record.
pub(crate) const PAYLOAD_LEN: usize = 250;

/// A fixed "now" so that every record encodes to the same length.
const BASE_MS: u64 = 1_780_000_000_000;

/// The names accepted by `--engines`, in the default order.
pub(crate) const ALL_ENGINES: &[&str] = &["sled", "redb", "fjall", "fjall-weak", "wal"];

/// The key of `seq` in the benchmark lane.
pub(crate) fn key(seq: u64) -> K {
    Key {
        priority: LANE,
        seq,
    }
    .to_bytes()
}

fn seq_of(key: &K) -> u64 {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[1..]);
    u64::from_be_bytes(seq)
}

/// A 20-character alert id, unique per seq.
fn alert_id(seq: u64) -> String {
    format!("alrt-{seq:015}")
}

/// A realistic 250-byte JSON alert payload for `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let head = format!(
        "{{\"alert_id\":\"{}\",\"device\":\"pump-17\",\"line\":3,\"severity\":\"major\",\
         \"metric\":\"discharge_pressure_bar\",\"value\":{}.{:02},\"ts\":{},\"msg\":\"",
        alert_id(seq),
        7 + seq % 3,
        seq % 100,
        BASE_MS + seq,
    );
    let filler = b"pressure above threshold for 30 s; check valve V-17 and seal ";
    let mut out = head.into_bytes();
    let mut i = 0;
    while out.len() < PAYLOAD_LEN - 2 {
        out.push(filler[i % filler.len()]);
        i += 1;
    }
    out.truncate(PAYLOAD_LEN - 2);
    out.extend_from_slice(b"\"}");
    out
}

/// The record the agent would store for alert `seq`.
pub(crate) fn record(seq: u64) -> Record {
    Record {
        alert_id: alert_id(seq),
        topic: TOPIC.to_owned(),
        payload: payload(seq),
        priority: LANE,
        received_at_ms: BASE_MS + seq,
        attempts: 0,
        first_attempt_ms: None,
        last_attempt_ms: None,
        next_attempt_ms: 0,
        last_error: None,
        mqtt: None,
    }
}

/// Bytes of one stored record: what `alertbridge_wal::encode_record` produces for [`record`].
pub(crate) fn record_len() -> usize {
    alertbridge_wal::encode_record(&record(1))
        .expect("a benchmark record encodes")
        .len()
}

/// `len` pseudo-random (incompressible) bytes, different for every seq: the value the raw
/// engines store.
pub(crate) fn raw_value(seq: u64, len: usize) -> Vec<u8> {
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The operations the queue needs from a store.
pub(crate) trait Engine {
    /// Stores the batch; durable (survives a power cut) when this returns.
    fn append_batch(&mut self, batch: &[(K, Vec<u8>)]) -> Res<()>;
    /// Removes the keys; durable when this returns (see the module doc for how, per engine).
    fn remove_batch(&mut self, keys: &[K]) -> Res<()>;
    /// Reads the first `k` records in key order; returns how many it read and their value bytes.
    fn first_k(&mut self, k: usize) -> Res<(usize, usize)>;
    /// Every pending key in key order (one scan, as the agent's drain loads its queue at start).
    fn keys_in_order(&mut self) -> Res<Vec<K>>;
    /// Closes the store cleanly (what a clean shutdown of the agent does).
    fn close(self: Box<Self>) -> Res<()>;
}

/// Opens (or creates) engine `name` in `dir`.
pub(crate) fn open(name: &str, dir: &Path) -> Res<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    Ok(match name {
        "sled" => Box::new(SledEngine::open(dir)?),
        "redb" => Box::new(RedbEngine::open(dir)?),
        "fjall" => Box::new(FjallEngine::open(dir, false)?),
        "fjall-weak" => Box::new(FjallEngine::open(dir, true)?),
        "wal" => Box::new(WalEngine::open(dir)?),
        other => return Err(format!("unknown engine {other:?}").into()),
    })
}

// ---------------------------------------------------------------------------------------------
// sled 0.34.7, configured as alertbridge-wal configures it.

struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    /// Our own handle of `<dir>/db` for the fdatasync that sled's `flush()` does not do.
    data_file: File,
}

impl SledEngine {
    fn open(dir: &Path) -> Res<Self> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()?;
        let tree = db.open_tree("pending")?;
        let data_file = File::open(dir.join("db"))?;
        Ok(SledEngine {
            db,
            tree,
            data_file,
        })
    }

    fn durable(&self) -> Res<()> {
        self.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }
}

impl Engine for SledEngine {
    fn append_batch(&mut self, batch: &[(K, Vec<u8>)]) -> Res<()> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            b.insert(&k[..], v.as_slice());
        }
        self.tree.apply_batch(b)?;
        self.durable()
    }

    fn remove_batch(&mut self, keys: &[K]) -> Res<()> {
        let mut b = sled::Batch::default();
        for k in keys {
            b.remove(&k[..]);
        }
        self.tree.apply_batch(b)?;
        self.durable()
    }

    fn first_k(&mut self, k: usize) -> Res<(usize, usize)> {
        let (mut n, mut bytes) = (0, 0);
        for item in self.tree.iter().take(k) {
            let (_, v) = item?;
            n += 1;
            bytes += v.len();
        }
        Ok((n, bytes))
    }

    fn keys_in_order(&mut self) -> Res<Vec<K>> {
        let mut out = Vec::new();
        for k in self.tree.iter().keys() {
            out.push(K::try_from(&k?[..])?);
        }
        Ok(out)
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.durable()?;
        drop(self);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// redb 4.x: one write transaction per batch, Durability::Immediate, 16 MiB cache.

const REDB_TABLE: redb::TableDefinition<'static, &'static [u8], &'static [u8]> =
    redb::TableDefinition::new("pending");

struct RedbEngine {
    db: redb::Database,
}

impl RedbEngine {
    fn open(dir: &Path) -> Res<Self> {
        let db = redb::Builder::new()
            .set_cache_size(16 * 1024 * 1024)
            .create(dir.join("queue.redb"))?;
        // Create the table so that readers of an empty store find it.
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        tx.open_table(REDB_TABLE)?;
        tx.commit()?;
        Ok(RedbEngine { db })
    }

    fn write(&self, f: impl FnOnce(&mut redb::Table<'_, &[u8], &[u8]>) -> Res<()>) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut table = tx.open_table(REDB_TABLE)?;
            f(&mut table)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Engine for RedbEngine {
    fn append_batch(&mut self, batch: &[(K, Vec<u8>)]) -> Res<()> {
        self.write(|table| {
            for (k, v) in batch {
                table.insert(&k[..], v.as_slice())?;
            }
            Ok(())
        })
    }

    fn remove_batch(&mut self, keys: &[K]) -> Res<()> {
        self.write(|table| {
            for k in keys {
                table.remove(&k[..])?;
            }
            Ok(())
        })
    }

    fn first_k(&mut self, k: usize) -> Res<(usize, usize)> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REDB_TABLE)?;
        let (mut n, mut bytes) = (0, 0);
        for item in table.iter()?.take(k) {
            let (_, v) = item?;
            n += 1;
            bytes += v.value().len();
        }
        Ok((n, bytes))
    }

    fn keys_in_order(&mut self) -> Res<Vec<K>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REDB_TABLE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, _) = item?;
            out.push(K::try_from(k.value())?);
        }
        Ok(out)
    }

    fn close(self: Box<Self>) -> Res<()> {
        drop(self);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// fjall 3.x: batch commit, then persist(SyncAll); Raspberry-Pi-sized cache, memtable, journals.

struct FjallEngine {
    db: fjall::Database,
    ks: fjall::Keyspace,
    weak: bool,
}

impl FjallEngine {
    fn open(dir: &Path, weak: bool) -> Res<Self> {
        let db = fjall::Database::builder(dir)
            .cache_size(16 * 1024 * 1024)
            // The smallest fjall accepts (it asserts >= 64 MiB); default 512 MiB.
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        // Stored in the keyspace's config at creation and recovered from it at reopen.
        let ks = db.keyspace("pending", || {
            fjall::KeyspaceCreateOptions::default().max_memtable_size(8 * 1024 * 1024)
        })?;
        Ok(FjallEngine { db, ks, weak })
    }
}

impl Engine for FjallEngine {
    fn append_batch(&mut self, batch: &[(K, Vec<u8>)]) -> Res<()> {
        let mut b = self.db.batch();
        for (k, v) in batch {
            b.insert(&self.ks, &k[..], v.as_slice());
        }
        b.commit()?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn remove_batch(&mut self, keys: &[K]) -> Res<()> {
        let mut b = self.db.batch();
        for k in keys {
            if self.weak {
                // Experimental, #[doc(hidden)]; sound here because a key is written only once.
                b.remove_weak(&self.ks, &k[..]);
            } else {
                b.remove(&self.ks, &k[..]);
            }
        }
        b.commit()?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn first_k(&mut self, k: usize) -> Res<(usize, usize)> {
        let (mut n, mut bytes) = (0, 0);
        for guard in self.ks.iter().take(k) {
            let (_, v) = guard.into_inner()?;
            n += 1;
            bytes += v.len();
        }
        Ok((n, bytes))
    }

    fn keys_in_order(&mut self) -> Res<Vec<K>> {
        let mut out = Vec::new();
        for guard in self.ks.iter() {
            out.push(K::try_from(&guard.key()?[..])?);
        }
        Ok(out)
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        drop(self);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// alertbridge-wal through its public API only: whatever engine is behind it is what this row
// measures.

struct WalEngine {
    wal: Wal,
    dir: PathBuf,
}

impl WalEngine {
    fn open(dir: &Path) -> Res<Self> {
        let cfg = WalConfig {
            dedup_window: 0,
            delivered_keep: 0,
            ..WalConfig::new(dir)
        };
        Ok(WalEngine {
            wal: Wal::open(cfg)?,
            dir: dir.to_path_buf(),
        })
    }
}

impl Engine for WalEngine {
    /// Ignores the raw values: the WAL stores the record the agent would store for each seq,
    /// which frames to the same length ([`record_len`]). The WAL assigns its own keys.
    fn append_batch(&mut self, batch: &[(K, Vec<u8>)]) -> Res<()> {
        let entries: Vec<Entry> = batch
            .iter()
            .map(|(k, _)| Entry::Pending(record(seq_of(k))))
            .collect();
        let appended = self.wal.append_batch(entries)?.into_inner();
        let stored = appended
            .iter()
            .filter(|a| matches!(a, Appended::Pending(_)))
            .count();
        if stored != batch.len() {
            return Err(format!(
                "wal at {}: {stored} of {} records appended to pending",
                self.dir.display(),
                batch.len()
            )
            .into());
        }
        Ok(())
    }

    fn remove_batch(&mut self, keys: &[K]) -> Res<()> {
        for k in keys {
            let key = Key::from_bytes(k).ok_or("malformed key")?;
            let receipt = Receipt {
                alert_id: alert_id(key.seq),
                seq: key.seq,
                delivered_at_ms: BASE_MS + key.seq + 1_000,
                status: 202,
                execution_id: None,
                correlation_id: None,
                attempts: 1,
                received_at_ms: BASE_MS + key.seq,
            };
            self.wal.remove(key, receipt)?;
        }
        self.wal.flush()?;
        Ok(())
    }

    fn first_k(&mut self, k: usize) -> Res<(usize, usize)> {
        let (mut n, mut bytes) = (0, 0);
        for item in self.wal.pending().take(k) {
            let (_, rec) = item?;
            n += 1;
            bytes += rec.payload.len();
        }
        Ok((n, bytes))
    }

    fn keys_in_order(&mut self) -> Res<Vec<K>> {
        let mut out = Vec::new();
        for item in self.wal.pending() {
            let (key, _) = item?;
            out.push(key.to_bytes());
        }
        Ok(out)
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.wal.flush()?;
        drop(self);
        Ok(())
    }
}
