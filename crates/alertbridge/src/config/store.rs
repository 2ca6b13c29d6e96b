//! `[store]`: the log directory and its budgets, built straight into the WAL's own
//! `WalConfig`.

use super::*;

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Directory of the write-ahead log.
    pub dir: Option<PathBuf>,
    /// Disk budget of the log.
    pub max_bytes: Option<u64>,
    /// Ignored since store format 2 (it sized sled's page cache); accepted with a warning so an
    /// old config still starts.
    pub cache_capacity_bytes: Option<u64>,
    /// Size at which a segment file of the log is sealed.
    pub segment_bytes: Option<u64>,
    /// How many alert ids the duplicate window remembers.
    pub dedup_window: Option<usize>,
    /// How long an alert id stays in the duplicate window.
    pub dedup_window_secs: Option<u64>,
    /// Most dead letters kept in the store.
    pub dead_letters_max: Option<u64>,
    /// Most bytes of dead letters kept in the store.
    pub dead_letters_max_bytes: Option<u64>,
    /// Where dead letters beyond the budget are exported (JSON lines).
    pub dead_letters_export_dir: Option<PathBuf>,
    /// Export files kept.
    pub dead_letters_export_files: Option<usize>,
    /// How many delivery receipts are kept.
    pub delivered_keep: Option<usize>,
    /// Most publishes in one group commit.
    pub batch_max: Option<usize>,
    /// Free space to leave on the store's filesystem.
    pub min_free_bytes: Option<u64>,
}

/// Validated `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How the log is opened: directory, segment size, dedup window, receipts kept and the
    /// dead-letter budget, built here from `[store]` and handed to `Wal::open` as it is.
    pub wal: WalConfig,
    /// Disk budget: at or above it ingest stops acking (the broker keeps the alerts).
    pub max_bytes: u64,
    /// The config still sets the obsolete `cache_capacity_bytes` (a warning in `check`).
    pub cache_capacity_ignored: bool,
    /// Export directory for dead letters beyond the budget.
    pub dead_letters_export_dir: PathBuf,
    /// Export files kept (16 MiB each).
    pub dead_letters_export_files: usize,
    /// Largest group commit.
    pub batch_max: usize,
    /// Below this much free space on the store's filesystem ingest holds back like at the
    /// budget, so the log rarely meets ENOSPC (which it survives as backpressure too).
    pub min_free_bytes: u64,
}

impl StoreConfig {
    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.wal.dir
    }
}

pub(super) fn store_from_raw(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let max_bytes = raw.max_bytes.unwrap_or(1 << 30);
    if max_bytes < 64 << 10 {
        return Err(invalid(
            "store.max_bytes",
            format!("{max_bytes} is below 64 KiB"),
            "give the log at least 65536 bytes (default 1 GiB)",
        ));
    }
    let segment_bytes = raw.segment_bytes.unwrap_or(8 << 20);
    if !(64 << 10..=1 << 30).contains(&segment_bytes) || segment_bytes > max_bytes / 4 {
        return Err(invalid(
            "store.segment_bytes",
            format!("{segment_bytes} is outside 64 KiB ..= min(1 GiB, store.max_bytes / 4)"),
            "use the default 8388608 (8 MiB), or a smaller value for a small store.max_bytes",
        ));
    }
    let batch_max = raw.batch_max.unwrap_or(512);
    if batch_max == 0 {
        return Err(invalid(
            "store.batch_max",
            "is 0",
            "use 1..=4096 (default 512)",
        ));
    }
    let dir = raw
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/alertbridge"));
    Ok(StoreConfig {
        wal: WalConfig {
            dir: dir.clone(),
            segment_bytes,
            dedup_window: raw.dedup_window.unwrap_or(100_000),
            dedup_window_ms: raw.dedup_window_secs.unwrap_or(300).saturating_mul(1000),
            delivered_keep: raw.delivered_keep.unwrap_or(10_000),
            dead_max_count: raw.dead_letters_max.unwrap_or(100_000),
            dead_max_bytes: raw.dead_letters_max_bytes.unwrap_or(64 << 20),
            ..WalConfig::default()
        },
        max_bytes,
        cache_capacity_ignored: raw.cache_capacity_bytes.is_some(),
        dead_letters_export_dir: raw
            .dead_letters_export_dir
            .unwrap_or_else(|| crate::export::default_dir(&dir)),
        dead_letters_export_files: raw.dead_letters_export_files.unwrap_or(16),
        batch_max,
        min_free_bytes: raw.min_free_bytes.unwrap_or(64 << 20),
    })
}
