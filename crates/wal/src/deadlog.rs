//! The dead-letter log `dead.log`: append-only frames `DeadAdd { id, dead letter }` and
//! `DeadRemove { id }`, with an in-memory index id → (offset, length).
//!
//! Dead letters live apart from the segment log so that one that stays for months never pins a
//! segment. The file is read whole at open (dead letters are few and bounded by the agent's
//! dead-letter budget) and compacted (rewritten with only the live entries, then renamed over the
//! old one) when at least half of it is dead weight. A compaction starts the new file with a
//! `DeadNextId` frame so dead-letter ids are never reused (invariant W2).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use crate::durability::sync_dir;
use crate::frame::{self, Item, Kind};

/// File name inside the WAL directory.
pub(crate) const FILE: &str = "dead.log";

/// Where one dead letter's framed bytes are.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Offset of the framed dead letter (inside the `DeadAdd` body, after the id).
    offset: u64,
    len: u32,
}

/// The open dead-letter log.
#[derive(Debug)]
pub(crate) struct DeadLog {
    path: PathBuf,
    /// Append handle; reads use `read_at` on the same descriptor.
    file: File,
    index: BTreeMap<u64, Slot>,
    /// Bytes of the file (everything written).
    len: u64,
    /// Bytes of the framed dead letters still indexed.
    live_bytes: u64,
    /// Next id to hand out; never below any id ever written.
    pub(crate) next_id: u64,
    /// Written since the last fsync.
    pub(crate) dirty: bool,
}

impl DeadLog {
    /// Opens (or creates) `<dir>/dead.log`, reads it whole and truncates a torn tail.
    pub(crate) fn open(dir: &Path) -> io::Result<DeadLog> {
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let mut log = DeadLog {
            path,
            file,
            index: BTreeMap::new(),
            len: buf.len() as u64,
            live_bytes: 0,
            next_id: 1,
            dirty: false,
        };
        let (items, _) = frame::scan(&buf, true);
        let mut valid_end = 0usize;
        for item in &items {
            match *item {
                Item::Frame {
                    offset,
                    len,
                    kind,
                    body,
                } => {
                    valid_end = offset + len;
                    log.apply(kind, body, (offset + frame::HEADER_LEN) as u64);
                }
                Item::Garbage { offset, len } => {
                    if offset + len < buf.len() {
                        error!(
                            file = %log.path.display(), offset, len,
                            "damaged bytes in the dead-letter log; the dead letters in them are lost, the others are kept"
                        );
                    }
                }
            }
        }
        if valid_end < buf.len() {
            // A torn tail (the last write cut by a crash) or damage at the end: drop it so new
            // frames follow intact ones.
            warn!(file = %log.path.display(), from = valid_end, bytes = buf.len() - valid_end, "truncating a torn tail of the dead-letter log");
            log.file.set_len(valid_end as u64)?;
            log.file.sync_all()?;
            log.len = valid_end as u64;
        }
        Ok(log)
    }

    fn apply(&mut self, kind: Kind, body: &[u8], body_offset: u64) {
        let Some((id_bytes, rest)) = body.split_first_chunk::<8>() else {
            return;
        };
        let id = u64::from_le_bytes(*id_bytes);
        match kind {
            Kind::DeadAdd => {
                let slot = Slot {
                    offset: body_offset + 8,
                    len: rest.len() as u32,
                };
                if let Some(old) = self.index.insert(id, slot) {
                    self.live_bytes -= u64::from(old.len);
                }
                self.live_bytes += u64::from(slot.len);
                self.next_id = self.next_id.max(id + 1);
            }
            Kind::DeadRemove => {
                if let Some(old) = self.index.remove(&id) {
                    self.live_bytes -= u64::from(old.len);
                }
            }
            Kind::DeadNextId => self.next_id = self.next_id.max(id),
            _ => {}
        }
    }

    /// Frames `DeadAdd(id, framed)` into `out` (written by [`DeadLog::write`]).
    pub(crate) fn encode_add(out: &mut Vec<u8>, id: u64, framed: &[u8]) {
        let mut body = Vec::with_capacity(8 + framed.len());
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(framed);
        frame::encode(out, Kind::DeadAdd, &body);
    }

    /// Frames `DeadRemove(id)` into `out`.
    pub(crate) fn encode_remove(out: &mut Vec<u8>, id: u64) {
        frame::encode(out, Kind::DeadRemove, &id.to_le_bytes());
    }

    /// Appends frames made by the `encode_*` functions and indexes them. Not fsynced.
    pub(crate) fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(frames) {
            // Cut a partial write off again, so the next frame follows an intact one.
            if let Err(cut) = self.file.set_len(self.len) {
                return Err(io::Error::other(format!(
                    "{e}; and cutting the partial write failed: {cut}"
                )));
            }
            return Err(e);
        }
        let base = self.len;
        self.len += frames.len() as u64;
        self.dirty = true;
        let (items, _) = frame::scan(frames, true);
        for item in items {
            if let Item::Frame {
                offset, kind, body, ..
            } = item
            {
                self.apply(kind, body, base + (offset + frame::HEADER_LEN) as u64);
            }
        }
        Ok(())
    }

    /// fsyncs the file through `sync`.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The framed bytes of dead letter `id`, if indexed.
    pub(crate) fn get(&self, id: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(slot) = self.index.get(&id) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; slot.len as usize];
        self.file.read_exact_at(&mut buf, slot.offset)?;
        Ok(Some(buf))
    }

    /// Ids, oldest first.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.index.keys().copied().collect()
    }

    /// Whether `id` is indexed.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.index.contains_key(&id)
    }

    /// Dead letters kept.
    pub(crate) fn count(&self) -> u64 {
        self.index.len() as u64
    }

    /// Bytes of the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes of the dead letters kept (framed), what the dead-letter budget counts.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// The oldest ids to drop so that at most `max_count` dead letters of at most `max_bytes`
    /// remain after `incoming` more bytes (and one more letter) arrive.
    pub(crate) fn over_budget(&self, max_count: u64, max_bytes: u64) -> Vec<u64> {
        let mut count = self.index.len() as u64;
        let mut bytes = self.live_bytes;
        let mut out = Vec::new();
        for (id, slot) in &self.index {
            if count <= max_count && bytes <= max_bytes {
                break;
            }
            out.push(*id);
            count -= 1;
            bytes -= u64::from(slot.len);
        }
        out
    }

    /// Cuts the file back to `len` bytes (undoing frames written after it) and rebuilds the index.
    pub(crate) fn cut_to(&mut self, dir: &Path, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        let next_id = self.next_id;
        *self = DeadLog::open(dir)?;
        // Ids handed out stay used (invariant W2).
        self.next_id = self.next_id.max(next_id);
        Ok(())
    }

    /// Rewrites the file with only the live entries when at least half of it (and 1 MiB) is
    /// dead weight. The new file is fsynced and renamed over the old one, then the directory is
    /// fsynced: a crash leaves either file whole.
    pub(crate) fn compact_if_worth_it(&mut self, dir: &Path) -> io::Result<()> {
        let garbage = self.len.saturating_sub(self.live_bytes);
        if garbage < (1 << 20) || garbage < self.len / 2 {
            return Ok(());
        }
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut out = Vec::new();
        frame::encode(&mut out, Kind::DeadNextId, &self.next_id.to_le_bytes());
        for id in self.ids() {
            if let Some(framed) = self.get(id)? {
                Self::encode_add(&mut out, id, &framed);
            }
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        sync_dir(dir)?;
        *self = DeadLog::open(dir)?;
        Ok(())
    }
}
