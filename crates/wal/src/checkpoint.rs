//! The checkpoint file: the segment table (ranges, live bitmaps, lane counts), counters and the
//! dedup window as of one position in the active segment.
//!
//! Open loads it and replays only the frames written after that position, so a restart reads
//! what was written since the last checkpoint, not the whole backlog. It is written to
//! `checkpoint.tmp`, fsynced, renamed over `checkpoint` and the directory fsynced, and only after
//! the segment bytes up to its position were fsynced: a crash leaves the old or the new one whole,
//! and either is consistent with the segments. A missing or damaged checkpoint is not an error:
//! open then replays every segment from its start (slower, same result).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durability::sync_dir;
use crate::frame::{self, Item, Kind};

/// File name inside the WAL directory.
pub(crate) const FILE: &str = "checkpoint";

/// Version of [`Checkpoint`]'s layout; a checkpoint of another version is ignored (full replay).
const VERSION: u32 = 1;

/// One segment as of the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentState {
    pub(crate) id: u64,
    pub(crate) first_seq: u64,
    pub(crate) end_seq: u64,
    pub(crate) len: u64,
    pub(crate) live: Vec<u64>,
    pub(crate) lane_live: Vec<u64>,
}

/// **On-disk format** (postcard, in one `Checkpoint` frame): changing it needs a new `VERSION`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) version: u32,
    pub(crate) next_seq: u64,
    /// Segment and byte offset up to which this checkpoint reflects the log.
    pub(crate) position: (u64, u64),
    pub(crate) segments: Vec<SegmentState>,
    pub(crate) dedup: Vec<(u128, u64)>,
}

impl Checkpoint {
    /// A checkpoint of the current layout version.
    pub(crate) fn new(
        next_seq: u64,
        position: (u64, u64),
        segments: Vec<SegmentState>,
        dedup: Vec<(u128, u64)>,
    ) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            next_seq,
            position,
            segments,
            dedup,
        }
    }

    /// Reads `<dir>/checkpoint`. `Ok(None)` when there is none or it is damaged or of another
    /// version (the caller replays everything).
    pub(crate) fn load(dir: &Path) -> io::Result<Option<Checkpoint>> {
        let mut buf = Vec::new();
        match File::open(dir.join(FILE)) {
            Ok(mut f) => f.read_to_end(&mut buf)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (items, _) = frame::scan(&buf, true);
        let Some(Item::Frame {
            kind: Kind::Checkpoint,
            body,
            ..
        }) = items.first()
        else {
            tracing::warn!(dir = %dir.display(), "checkpoint damaged; replaying every segment");
            return Ok(None);
        };
        match postcard::from_bytes::<Checkpoint>(body) {
            Ok(cp) if cp.version == VERSION => Ok(Some(cp)),
            _ => {
                tracing::warn!(dir = %dir.display(), "checkpoint unreadable; replaying every segment");
                Ok(None)
            }
        }
    }

    /// Writes it atomically (tmp + fsync + rename + directory fsync).
    pub(crate) fn store(&self, dir: &Path) -> io::Result<()> {
        let body = postcard::to_allocvec(self).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(frame::encoded_len(body.len()));
        frame::encode(&mut out, Kind::Checkpoint, &body);
        let tmp = dir.join(format!("{FILE}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(FILE))?;
        sync_dir(dir)
    }
}
