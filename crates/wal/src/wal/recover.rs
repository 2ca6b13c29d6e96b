//! Recovery at open: the checkpoint, then every frame written after it.

use super::*;

/// Rebuilds the state from the checkpoint and the frames written after it; truncates a torn tail
/// of the last segment; starts a segment when there is none.
pub(super) fn recover(
    dir: &Path,
    cfg: &WalConfig,
    sync: &dyn SyncTarget,
) -> Result<State, WalError> {
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
                    // A receipt is not an alert: it must never make a redelivery look seen.
                    if h.lane != LANE_OUTBOX {
                        dedup.insert(h.id_hash, h.received_at_ms);
                    }
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
