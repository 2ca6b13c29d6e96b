//! The store's files: format marker, lock, segment creation, and the error helpers they share.

use super::*;

/// ENOSPC or EDQUOT: the filesystem (or the quota) is full.
pub(super) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122))
}

pub(super) fn encode_err(error: RecordError) -> WalError {
    WalError::Encode { error }
}

/// The reason stored when the record turned out undecodable at dead-letter time.
pub(super) fn corrupt_reason(reason: &DeadReason, error: &RecordError) -> DeadReason {
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
pub(super) fn data_bytes_of(st: &State) -> u64 {
    st.segment_bytes
}

pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Creates segment `id`, starting with its `SegmentStart` frame; returns it and its length.
pub(super) fn create_segment(dir: &Path, id: u64, first_seq: Seq) -> Result<(File, u64), WalError> {
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
pub(super) fn lock_dir(dir: &Path) -> Result<File, WalError> {
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

/// Reads `<dir>/FORMAT` and returns the store's format; creates it for a new store (format 3
/// with the outbox on, 2 without). Refuses any format this build does not read.
pub(super) fn check_format(dir: &Path, outbox: bool) -> Result<u64, WalError> {
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
            if found != STORE_FORMAT && found != FORMAT_WITHOUT_OUTBOX {
                return Err(WalError::UnsupportedStoreFormat {
                    found,
                    supported: STORE_FORMAT,
                });
            }
            Ok(found)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let format = if outbox {
                STORE_FORMAT
            } else {
                FORMAT_WITHOUT_OUTBOX
            };
            write_format_version(dir, format).map_err(io_err("writing the store format", &path))?;
            Ok(format)
        }
        Err(e) => Err(io_err("reading the store format", &path)(e)),
    }
}

/// Writes `<dir>/FORMAT` atomically with `format`.
pub(crate) fn write_format_version(dir: &Path, format: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        writeln!(f, "alertbridge-wal {format}")?;
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
pub(super) fn segment_ids(dir: &Path) -> Result<Vec<u64>, WalError> {
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
