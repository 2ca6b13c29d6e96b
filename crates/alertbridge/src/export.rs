//! Dead letters beyond the dead-letter budget: exported as JSON lines, then removed from the log.
//!
//! The export is a directory of files `dead-letters-<unix ms>.jsonl` (default
//! `<store.dir>/exported-dead-letters`), one JSON object per dead letter, in the same shape as
//! `alertbridge dead-letters --json`. A file is fsynced before the WAL removes the letters it
//! holds, so a crash never loses one (at worst one is exported twice). A file is closed at
//! 16 MiB; at most `store.dead_letters_export_files` files are kept, the oldest deleted with a
//! warning: that bounds the disk a flood of bad payloads can take, and it is the one place
//! alertbridge deletes dead letters, always after they sat out the whole dead-letter budget.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use alertbridge_wal::{DeadLetter, DeadLetterSink};

use crate::clock::now_ms;

/// Size at which an export file is closed and a new one started.
const FILE_BYTES: u64 = 16 << 20;

/// The JSON shape of a dead letter (also `dead-letters --json`).
pub fn dead_letter_json(d: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "kind": format!("{:?}", d.reason.kind),
        "reason": d.reason.message,
        "status": d.reason.status,
        "api_message": d.reason.api_message,
        "dead_at_ms": d.dead_at_ms,
        "alert_id": d.record.as_ref().map(|r| r.alert_id.clone()),
        "topic": d.record.as_ref().map(|r| r.topic.clone()),
        "attempts": d.record.as_ref().map(|r| r.attempts),
        "first_attempt_ms": d.record.as_ref().and_then(|r| r.first_attempt_ms),
        "last_attempt_ms": d.record.as_ref().and_then(|r| r.last_attempt_ms),
        "received_at_ms": d.record.as_ref().map(|r| r.received_at_ms),
        "payload": d.record.as_ref().map(|r| String::from_utf8_lossy(&r.payload).into_owned()),
    })
}

/// The JSON-lines exporter handed to the WAL.
#[derive(Debug)]
pub struct JsonlExport {
    dir: PathBuf,
    keep_files: usize,
    current: Mutex<Option<(PathBuf, File, u64)>>,
}

impl JsonlExport {
    /// Exports into `dir` (created on first use), keeping at most `keep_files` files.
    pub fn new(dir: PathBuf, keep_files: usize) -> JsonlExport {
        JsonlExport {
            dir,
            keep_files: keep_files.max(1),
            current: Mutex::new(None),
        }
    }

    fn files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dead-letters-") && n.ends_with(".jsonl"))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn rotate(&self, slot: &mut Option<(PathBuf, File, u64)>) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self
            .dir
            .join(format!("dead-letters-{:015}.jsonl", now_ms()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        *slot = Some((path, file, 0));
        let files = self.files()?;
        if files.len() > self.keep_files {
            for old in &files[..files.len() - self.keep_files] {
                tracing::warn!(
                    file = %old.display(),
                    "deleting the oldest export of dead letters (store.dead_letters_export_files reached)"
                );
                fs::remove_file(old)?;
            }
        }
        Ok(())
    }
}

impl DeadLetterSink for JsonlExport {
    fn export(&self, letters: &[DeadLetter]) -> io::Result<()> {
        let mut slot = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|(_, _, n)| *n >= FILE_BYTES) {
            self.rotate(&mut slot)?;
        }
        let Some((path, file, written)) = slot.as_mut() else {
            return Err(io::Error::other("no export file"));
        };
        let mut out = Vec::new();
        for d in letters {
            serde_json::to_writer(&mut out, &dead_letter_json(d)).map_err(io::Error::other)?;
            out.push(b'\n');
        }
        file.write_all(&out)?;
        file.sync_data()?;
        *written += out.len() as u64;
        tracing::warn!(
            exported = letters.len(),
            file = %path.display(),
            "dead letters beyond the dead-letter budget exported"
        );
        Ok(())
    }
}

/// The default export directory for a store.
pub fn default_dir(store: &Path) -> PathBuf {
    store.join("exported-dead-letters")
}
