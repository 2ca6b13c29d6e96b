//! One-time conversion of a format-1 (sled) store to the segment log, at the first open.
//!
//! The new store is built beside the old one in `<dir>.v2-migrating`, fsynced and marked complete
//! (`MIGRATION_COMPLETE`); then `<dir>` is renamed to `<dir>.sled-backup-<unix time>` and the new
//! store to `<dir>`. A crash at any point leaves either the old store in `<dir>` (an incomplete new
//! one is deleted and rebuilt at the next open) or a complete new one that
//! [`finish_interrupted`] moves into place. Nothing is deleted: the sled backup stays until an
//! operator removes it (the log says where). Seqs, dead-letter ids, attempt fields and receipts
//! are kept as they were; the dedup window starts empty.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::durability::sync_dir;
use crate::error::WalError;
use crate::legacy::Legacy;
use crate::wal::{Wal, WalConfig};

const MARKER: &str = "MIGRATION_COMPLETE";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

fn parent(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn io_err(dir: &Path, what: &str) -> impl FnOnce(io::Error) -> WalError {
    let dir = dir.to_path_buf();
    let what = what.to_owned();
    move |e| WalError::Migrate {
        dir,
        message: format!("{what}: {e}"),
    }
}

/// Whether `dir` holds a format-1 (sled) store.
pub(crate) fn is_legacy(dir: &Path) -> bool {
    dir.join("db").is_file() && dir.join("conf").is_file() && !dir.join("FORMAT").exists()
}

/// Completes a migration a crash interrupted between its two renames, and removes an incomplete
/// new store (the old one is still in place then).
pub(crate) fn finish_interrupted(dir: &Path) -> Result<(), WalError> {
    let new = sibling(dir, ".v2-migrating");
    if !new.exists() {
        return Ok(());
    }
    if new.join(MARKER).exists() && !dir.exists() {
        fs::rename(&new, dir).map_err(io_err(dir, "moving the migrated store into place"))?;
        sync_dir(&parent(dir)).map_err(io_err(dir, "syncing the parent directory"))?;
        info!(dir = %dir.display(), "finished an interrupted store migration");
    } else if dir.exists() {
        warn!(path = %new.display(), "removing an incomplete store migration; it restarts from the old store");
        fs::remove_dir_all(&new).map_err(io_err(dir, "removing an incomplete migration"))?;
    }
    Ok(())
}

/// Converts the sled store in `cfg.dir` (see the module doc).
pub(crate) fn migrate(cfg: &WalConfig) -> Result<(), WalError> {
    let dir = &cfg.dir;
    let new = sibling(dir, ".v2-migrating");
    info!(from = %dir.display(), "migrating a format-1 (sled) store to the segment log");
    let legacy = Legacy::open(dir)?;
    let (next_seq, next_dead_id) = legacy.counters(dir)?;
    let wal = Wal::open(WalConfig {
        dir: new.clone(),
        dedup_window: 0,
        ..cfg.clone()
    })?;
    let keys = legacy.pending_keys(dir)?;
    let mut copied = 0u64;
    for chunk in keys.chunks(1024) {
        let mut batch = Vec::with_capacity(chunk.len());
        for &key in chunk {
            if let Some(raw) = legacy.pending_value(dir, key)? {
                batch.push((key, raw));
            }
        }
        copied += batch.len() as u64;
        wal.import_pending(&batch)?;
    }
    let dead = legacy.dead(dir)?;
    wal.import_dead(&dead, next_dead_id)?;
    for raw in legacy.receipts(dir)? {
        wal.import_receipt(&raw)?;
    }
    wal.import_next_seq(next_seq)?;
    wal.close()?;
    drop(wal);
    drop(legacy);
    fs::write(new.join(MARKER), b"complete\n")
        .map_err(io_err(dir, "marking the migration complete"))?;
    fs::File::open(new.join(MARKER))
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir, "syncing the marker"))?;
    sync_dir(&new).map_err(io_err(dir, "syncing the new store"))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let backup = sibling(dir, &format!(".sled-backup-{stamp}"));
    fs::rename(dir, &backup).map_err(io_err(dir, "moving the sled store aside"))?;
    fs::rename(&new, dir).map_err(io_err(dir, "moving the migrated store into place"))?;
    sync_dir(&parent(dir)).map_err(io_err(dir, "syncing the parent directory"))?;
    let _ = fs::remove_file(dir.join(MARKER));
    info!(
        dir = %dir.display(),
        pending = copied,
        dead_letters = dead.len(),
        backup = %backup.display(),
        "store migrated; the sled backup can be deleted once the agent runs well"
    );
    Ok(())
}
