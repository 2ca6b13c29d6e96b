//! Reader of store format 1 (sled 0.34.7), for the one-time migration to the segment log.
//!
//! Format 1 was one sled database with trees `pending` (`[priority u8][seq u64 BE]` → framed
//! record), `dead` (id u64 BE → framed dead letter), `delivered` (position u64 BE → framed
//! receipt), `dedup`, `dedup_order` and `meta` (`format`, `next_seq`, `next_dead_id` as u64 BE).
//! The framed values are the same as format 2's, so they are copied byte for byte.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::WalError;
use crate::record::Key;

/// The sled store, opened for reading.
pub(crate) struct Legacy {
    db: sled::Db,
}

fn migrate_err(dir: &Path, what: impl std::fmt::Display) -> WalError {
    WalError::Migrate {
        dir: dir.to_path_buf(),
        message: what.to_string(),
    }
}

fn u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl Legacy {
    /// Opens the sled store in `dir`, waiting up to 3 s for its lock.
    pub(crate) fn open(dir: &Path) -> Result<Legacy, WalError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(8 << 20)
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => return Ok(Legacy { db }),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    return Err(WalError::Locked {
                        dir: dir.to_path_buf(),
                        source: e,
                    })
                }
                Err(e) => return Err(migrate_err(dir, format!("opening sled: {e}"))),
            }
        }
    }

    fn tree(&self, dir: &Path, name: &str) -> Result<sled::Tree, WalError> {
        self.db
            .open_tree(name)
            .map_err(|e| migrate_err(dir, format!("opening tree {name}: {e}")))
    }

    /// `next_seq` and `next_dead_id` from the meta tree (1 when absent).
    pub(crate) fn counters(&self, dir: &Path) -> Result<(u64, u64), WalError> {
        let meta = self.tree(dir, "meta")?;
        let read = |name: &str| -> Result<u64, WalError> {
            match meta.get(name) {
                Ok(None) => Ok(1),
                Ok(Some(v)) => {
                    u64_be(&v).ok_or_else(|| migrate_err(dir, format!("meta {name} malformed")))
                }
                Err(e) => Err(migrate_err(dir, format!("reading meta {name}: {e}"))),
            }
        };
        Ok((read("next_seq")?, read("next_dead_id")?))
    }

    /// Pending keys, sorted by seq (the order the segment log needs).
    pub(crate) fn pending_keys(&self, dir: &Path) -> Result<Vec<Key>, WalError> {
        let mut keys = Vec::new();
        for k in self.tree(dir, "pending")?.iter().keys() {
            let k = k.map_err(|e| migrate_err(dir, format!("reading pending: {e}")))?;
            match Key::from_bytes(&k) {
                Some(key) => keys.push(key),
                None => {
                    tracing::warn!(raw_key = ?&k[..], "malformed key in the sled pending tree; skipped")
                }
            }
        }
        keys.sort_unstable_by_key(|k| k.seq);
        Ok(keys)
    }

    /// The framed record under `key`.
    pub(crate) fn pending_value(&self, dir: &Path, key: Key) -> Result<Option<Vec<u8>>, WalError> {
        self.tree(dir, "pending")?
            .get(key.to_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| migrate_err(dir, format!("reading pending {key}: {e}")))
    }

    /// Dead letters as (id, framed bytes), by id.
    pub(crate) fn dead(&self, dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let mut out = Vec::new();
        for item in self.tree(dir, "dead")?.iter() {
            let (k, v) =
                item.map_err(|e| migrate_err(dir, format!("reading dead letters: {e}")))?;
            match u64_be(&k) {
                Some(id) => out.push((id, v.to_vec())),
                None => {
                    tracing::warn!(raw_key = ?&k[..], "malformed key in the sled dead tree; skipped")
                }
            }
        }
        Ok(out)
    }

    /// Framed receipts, oldest first.
    pub(crate) fn receipts(&self, dir: &Path) -> Result<Vec<Vec<u8>>, WalError> {
        self.tree(dir, "delivered")?
            .iter()
            .values()
            .map(|v| {
                v.map(|v| v.to_vec())
                    .map_err(|e| migrate_err(dir, format!("reading receipts: {e}")))
            })
            .collect()
    }
}
