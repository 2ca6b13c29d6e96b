//! Writing: group commit of appends, re-appends of retried records, removals, segment
//! rotation, fsync by generation, deletion of drained segments and the checkpoint.

use super::*;

impl Wal {
    /// Group commit of entries that may all be redeliveries: like [`Wal::append_publishes`] with
    /// every entry checked against the dedup window.
    pub fn append_batch(&self, entries: Vec<Entry>) -> Result<Durable<Vec<Appended>>, WalError> {
        self.append_publishes(entries.into_iter().map(|e| (e, true)).collect())
    }

    /// Group commit (invariant I1) of publishes, each with its MQTT DUP flag.
    ///
    /// **A repeat is a new alert, a redelivery is not.** An entry with `redelivery = false`
    /// (DUP=0: the publisher sent it for the first time) is always stored, even when an identical
    /// one was stored a second ago: a PLC repeating `{"alarm":"HIGH_TEMP"}` every minute raises an
    /// alert every minute. An entry with `redelivery = true` (DUP=1) is a duplicate, not stored,
    /// when its identity (topic, alert id) was stored within the dedup window (time and count
    /// bounded); that is the broker resending a publish we made durable but whose PUBACK it did
    /// not get. Residual case, accepted: a DUP=1 redelivery of a copy that never became durable,
    /// identical to another alert of the same topic stored inside the window, is taken for that
    /// alert (it needs a crash before the fsync *and* an identical alert within minutes).
    ///
    /// Appends every entry (pending records to the active segment, dead letters to the
    /// dead-letter log) in one write per file, then fsyncs the dead-letter log (if written) and
    /// the segment; returns [`Durable`] only after both returned `Ok`. An alert id already in the
    /// dedup window (or earlier in the same batch) yields [`Appended::Duplicate`] and is not
    /// written. Dead-letter entries enter the dedup window too.
    ///
    /// On a write or fsync failure the WAL is poisoned (invariant I5): this call returns the
    /// error, every later write [`WalError::Poisoned`]; the fsync is never retried. Ack nothing
    /// from the batch.
    pub fn append_publishes(
        &self,
        entries: Vec<(Entry, bool)>,
    ) -> Result<Durable<Vec<Appended>>, WalError> {
        self.check_poison()?;
        if entries.is_empty() {
            return Ok(Durable::new(Vec::new()));
        }
        let mut out = Vec::with_capacity(entries.len());
        let gen = {
            let mut st = self.lock_state();
            self.check_store_present(&st)?;
            self.rotate_if_full(&mut st)?;
            let mut main = Vec::new();
            let mut dead = Vec::new();
            let mut puts = Vec::new();
            // Entries enter the window as they are taken (the window is exact per entry); if
            // the batch is then not written (a full disk) they are taken back, so its retry
            // does not find itself in the window.
            let mut inserted = 0;
            // An identity seen earlier in this batch is in the window even if the count bound
            // has pushed it out again within the batch.
            let mut in_batch = std::collections::HashSet::with_capacity(entries.len());
            for (entry, redelivery) in &entries {
                let record = entry.record();
                let hash = id_hash(&record.topic, &record.alert_id);
                let now = record.received_at_ms;
                let repeat = !in_batch.insert(hash) && st.dedup.enabled();
                if *redelivery && (repeat || st.dedup.contains(hash, now)) {
                    out.push(Appended::Duplicate {
                        alert_id: record.alert_id.clone(),
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
                        let framed = encode_record(record).map_err(encode_err)?;
                        PutHeader {
                            seq: key.seq,
                            lane: key.priority,
                            received_at_ms: now,
                            id_hash: hash,
                            replaces: None,
                        }
                        .encode(&mut main, &framed);
                        puts.push(key);
                        out.push(Appended::Pending(key));
                    }
                    Entry::DeadLetter(record, reason) => {
                        let id = st.dead.next_id;
                        st.dead.next_id += 1;
                        let letter = DeadLetter {
                            id,
                            key: None,
                            record: Some(record.clone()),
                            raw: None,
                            reason: reason.clone(),
                            dead_at_ms: record.received_at_ms,
                        };
                        let framed = encode_dead_letter(&letter).map_err(encode_err)?;
                        DeadLog::encode_add(&mut dead, id, &framed);
                        let mut seen = hash.to_le_bytes().to_vec();
                        seen.extend_from_slice(&now.to_le_bytes());
                        frame::encode(&mut main, Kind::Seen, &seen);
                        if self.inner.cfg.outbox {
                            // Its receipt goes in the same group commit: covered by the same
                            // `Durable`, so nothing is acked without it.
                            let entry = OutboxEntry::dead_lettered(record, id, reason, now);
                            let framed = encode_outbox_entry(&entry).map_err(encode_err)?;
                            let key = Key {
                                priority: LANE_OUTBOX,
                                seq: st.next_seq,
                            };
                            st.next_seq += 1;
                            PutHeader {
                                seq: key.seq,
                                lane: LANE_OUTBOX,
                                received_at_ms: now,
                                id_hash: 0,
                                replaces: None,
                            }
                            .encode(&mut main, &framed);
                            puts.push(key);
                        }
                        out.push(Appended::DeadLettered(id));
                    }
                }
                if st.dedup.enabled() {
                    st.dedup.insert(hash, now);
                    inserted += 1;
                }
            }
            let dead_len = st.dead.len();
            if let Err(e) = self.write_dead(&mut st, &dead) {
                st.dedup.undo_last(inserted);
                return Err(e);
            }
            if let Err(e) = self.write_main(&mut st, &main) {
                st.dedup.undo_last(inserted);
                if !dead.is_empty() {
                    // All or nothing: the batch is not acked, so its dead letters go too.
                    let dir = self.inner.dir.clone();
                    if let Err(source) = st.dead.cut_to(&dir, dead_len) {
                        return Err(self.poisoned_by(WalError::Io {
                            op: "cutting back the dead-letter log",
                            path: dir.join(crate::deadlog::FILE),
                            source,
                        }));
                    }
                }
                return Err(e);
            }

            let active = st.active_mut();
            for key in puts {
                active.set_live(key.seq, key.priority);
            }
            if !dead.is_empty() {
                let evicted = self.enforce_dead_budget(&mut st)?;
                st.dead_evicted += evicted;
            }
            st.written_gen
        };
        self.make_durable(gen)?;
        Ok(Durable::new(out))
    }

    /// Stores a pending record again with its new attempt fields (attempts, next_attempt_ms ...)
    /// and returns its new key: the record is re-appended at the head of the log and the old key
    /// removed in the same frame, so a record that keeps failing never pins an old segment.
    ///
    /// Not fsynced: losing it in a crash only repeats an attempt. [`WalError::NotPending`] if the
    /// key is no longer pending (it is not re-created).
    pub fn update(&self, key: Key, record: &Record) -> Result<Key, WalError> {
        self.check_poison()?;
        let framed = encode_record(record).map_err(encode_err)?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        let new = self.put_one(&mut st, key.priority, record, &framed, Some(key))?;
        st.clear(key);
        Ok(new)
    }

    /// Appends one record (`framed`) under a new key in `lane`, optionally replacing `replaces`
    /// in the same frame (W1), and marks it pending. The caller clears `replaces`.
    pub(super) fn put_one(
        &self,
        st: &mut State,
        lane: Priority,
        record: &Record,
        framed: &[u8],
        replaces: Option<Key>,
    ) -> Result<Key, WalError> {
        let hash = id_hash(&record.topic, &record.alert_id);
        self.put_framed(st, lane, record.received_at_ms, hash, framed, replaces)
    }

    /// [`Wal::put_one`] of any framed value (a record, or an outbox entry with `id_hash` 0).
    pub(super) fn put_framed(
        &self,
        st: &mut State,
        lane: Priority,
        received_at_ms: u64,
        id_hash: u128,
        framed: &[u8],
        replaces: Option<Key>,
    ) -> Result<Key, WalError> {
        self.rotate_if_full(st)?;
        let key = Key {
            priority: lane,
            seq: st.next_seq,
        };
        st.next_seq += 1;
        let mut main = Vec::new();
        PutHeader {
            seq: key.seq,
            lane,
            received_at_ms,
            id_hash,
            replaces,
        }
        .encode(&mut main, framed);
        self.write_main(st, &main)?;
        st.active_mut().set_live(key.seq, key.priority);
        Ok(key)
    }

    /// Delivered (invariant I3): removes `key` from pending and keeps the receipt (bounded to
    /// `delivered_keep`, oldest dropped).
    ///
    /// Not fsynced: losing it in a crash means one redelivery (a duplicate), never a loss. Call
    /// [`Wal::flush`] periodically to bound that. [`WalError::NotPending`] if the key is not
    /// pending; nothing changes then.
    pub fn remove(&self, key: Key, receipt: Receipt) -> Result<(), WalError> {
        self.check_poison()?;
        let framed = encode_receipt(&receipt).map_err(encode_err)?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        let mut main = Vec::new();
        encode_ack(&mut main, &[key]);
        match self.write_main(&mut st, &main) {
            Ok(()) => {}
            // Delivered all the same: the removal waits in memory and goes with the next write
            // that finds space. A crash before that delivers the alert again (a duplicate,
            // never a loss), exactly like a removal not yet fsynced.
            Err(WalError::NoSpace { .. }) => {
                st.unwritten_acks.push(key);
                if st.unwritten_acks.len() == 1 {
                    warn!("filesystem full: removals of delivered alerts are kept in memory until space returns");
                }
            }
            Err(e) => return Err(e),
        }
        st.clear(key);
        // A receipt is proof for the operator, not part of any guarantee: failing to keep one
        // (a full disk) must not stop delivery.
        if let Err(e) = st.receipts.push(&framed) {
            warn!(alert_id = %receipt.alert_id, error = %e, "could not keep a delivery receipt");
        }
        Ok(())
    }

    /// Appends `frames` to the active segment. A failed write poisons: the file may now end in a
    /// partial frame, and nothing after it could be trusted.
    ///
    /// A full filesystem is not a failure of the log: the partial write is cut off again (a
    /// truncation needs no space) and [`WalError::NoSpace`] returned, the WAL stays usable.
    /// Removals that could not be written before are written first (see [`Wal::remove`]).
    pub(super) fn write_main(&self, st: &mut State, frames: &[u8]) -> Result<(), WalError> {
        if frames.is_empty() && st.unwritten_acks.is_empty() {
            return Ok(());
        }
        let owned;
        let frames = if st.unwritten_acks.is_empty() {
            frames
        } else {
            let mut buf = Vec::new();
            encode_ack(&mut buf, &st.unwritten_acks);
            buf.extend_from_slice(frames);
            owned = buf;
            &owned[..]
        };
        let active = st.active_mut();
        let at = active.len;
        if let Err(source) = active.file.write_all_at(frames, at) {
            let path = segment::path(&self.inner.dir, active.id);
            if is_no_space(&source) && active.file.set_len(at).is_ok() {
                return Err(WalError::NoSpace {
                    op: "appending to a segment",
                });
            }
            return Err(self.poisoned_by(WalError::Io {
                op: "appending to a segment",
                path,
                source,
            }));
        }
        st.unwritten_acks.clear();
        let active = st.active_mut();
        active.len += frames.len() as u64;
        st.segment_bytes += frames.len() as u64;
        st.since_checkpoint += frames.len() as u64;
        st.written_gen += 1;
        Ok(())
    }

    /// Seals the active segment when full. On a full filesystem the new segment cannot be
    /// created: the active one grows past its size instead (the write may then meet
    /// [`WalError::NoSpace`] itself).
    pub(super) fn rotate_if_full(&self, st: &mut State) -> Result<(), WalError> {
        if st.segments[&st.active].len >= self.inner.cfg.segment_bytes.max(1) {
            match self.rotate(st) {
                Err(WalError::NoSpace { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Seals the active segment: fsync it, start the next one, fsync the directory.
    pub(super) fn rotate(&self, st: &mut State) -> Result<(), WalError> {
        let old = Arc::clone(&st.active_mut().file);
        if let Err(source) = self.inner.sync.sync_data(&old) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        let id = st.active + 1;
        let (file, len) = match create_segment(&self.inner.dir, id, st.next_seq) {
            Ok(created) => created,
            Err(WalError::Io { source, .. }) if is_no_space(&source) => {
                let _ = fs::remove_file(segment::path(&self.inner.dir, id));
                return Err(WalError::NoSpace {
                    op: "starting a segment",
                });
            }
            Err(e) => return Err(self.poisoned_by(e)),
        };
        st.segments
            .insert(id, Segment::new(id, st.next_seq, len, Arc::new(file)));
        st.segment_bytes += len;
        st.active = id;
        debug!(segment = id, first_seq = st.next_seq, "segment started");
        Ok(())
    }

    /// fsync (dead-letter log first, then the active segment) unless a completed fsync already
    /// covers write generation `gen`; then housekeeping. Never retries a failed fsync.
    pub(super) fn make_durable(&self, gen: u64) -> Result<(), WalError> {
        self.check_poison()?;
        let (dead, main, now_gen) = {
            let mut st = self.lock_state();
            if st.synced_gen >= gen {
                return Ok(());
            }
            let dead = if st.dead.dirty {
                st.dead.dirty = false;
                Some(st.dead.file().try_clone().map_err(|source| {
                    self.poisoned_by(WalError::Io {
                        op: "duplicating the dead-letter log handle",
                        path: self.inner.dir.join(crate::deadlog::FILE),
                        source,
                    })
                })?)
            } else {
                None
            };
            let seg = st.active_mut();
            (dead, Arc::clone(&seg.file), st.written_gen)
        };
        if let Some(dead) = dead {
            if let Err(source) = self.inner.sync.sync_data(&dead) {
                return Err(self.poisoned_by(WalError::SyncFailed { source }));
            }
        }
        if let Err(source) = self.inner.sync.sync_data(&main) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        // Another thread's failed fsync in the meantime may have dropped our pages too.
        self.check_poison()?;
        {
            let mut st = self.lock_state();
            st.synced_gen = st.synced_gen.max(now_gen);
        }
        self.delete_empty_segments()?;
        self.checkpoint(false)
    }

    /// Deletes sealed segments with nothing pending. Their removals are durable (the caller just
    /// fsynced, and sealing fsynced the segment), so a segment file missing at open always means
    /// a segment that had emptied.
    ///
    /// An active segment with nothing pending is sealed first (when it holds anything), so the
    /// space of a fully delivered log returns at once: otherwise a small disk budget reached in
    /// the active segment would never be left again.
    pub(super) fn delete_empty_segments(&self) -> Result<(), WalError> {
        let empty: Vec<u64> = {
            let mut st = self.lock_state();
            let active = &st.segments[&st.active];
            if active.live_total() == 0 && active.len > SEGMENT_START_LEN {
                match self.rotate(&mut st) {
                    // No room for a new segment: the emptied one stays active for now.
                    Err(WalError::NoSpace { .. }) => {}
                    other => other?,
                }
            }
            st.segments
                .values()
                .filter(|s| s.id != st.active && s.live_total() == 0 && s.id < st.active)
                .map(|s| s.id)
                .collect()
        };
        if empty.is_empty() {
            return Ok(());
        }
        // The removals that emptied them must be durable first.
        let gen = self.lock_state().written_gen;
        {
            let main = Arc::clone(&self.lock_state().active_mut().file);
            if let Err(source) = self.inner.sync.sync_data(&main) {
                return Err(self.poisoned_by(WalError::SyncFailed { source }));
            }
            let mut st = self.lock_state();
            st.synced_gen = st.synced_gen.max(gen);
        }
        for id in &empty {
            let path = segment::path(&self.inner.dir, *id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    warn!(path = %path.display(), error = %source, "could not delete an empty segment; will retry");
                    continue;
                }
            }
            let mut st = self.lock_state();
            if let Some(seg) = st.segments.remove(id) {
                st.segment_bytes = st.segment_bytes.saturating_sub(seg.len);
            }
            debug!(segment = id, "empty segment deleted");
        }
        sync_dir(&self.inner.dir).map_err(io_err("syncing the store directory", &self.inner.dir))
    }

    /// Writes a checkpoint when one is due (or `force` and anything changed since the last).
    pub(super) fn checkpoint(&self, force: bool) -> Result<(), WalError> {
        let Ok(_one) = self.inner.checkpointing.try_lock() else {
            return Ok(());
        };
        let (cp, main) = {
            let mut st = self.lock_state();
            let due = st.since_checkpoint >= self.inner.cfg.checkpoint_bytes
                || (st.since_checkpoint > 0
                    && st.last_checkpoint.elapsed() >= self.inner.cfg.checkpoint_interval);
            if !(due || (force && st.since_checkpoint > 0)) {
                return Ok(());
            }
            st.since_checkpoint = 0;
            st.last_checkpoint = Instant::now();
            let segments = st
                .segments
                .values()
                .map(|s| SegmentState {
                    id: s.id,
                    first_seq: s.first_seq,
                    end_seq: s.end_seq,
                    len: s.len,
                    live: s.bitmap().to_vec(),
                    lane_live: s.lane_counts().to_vec(),
                })
                .collect();
            let position = (st.active, st.segments[&st.active].len);
            let cp = Checkpoint::new(st.next_seq, position, segments, st.dedup.entries());
            (cp, Arc::clone(&st.active_mut().file))
        };
        // The log up to the checkpoint's position must be durable before the checkpoint is.
        if let Err(source) = self.inner.sync.sync_data(&main) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        // A checkpoint and a compaction only save work at the next open: failing one (a full
        // disk, say) loses nothing, so it is logged and the next one is tried later.
        if let Err(e) = cp.store(&self.inner.dir) {
            warn!(error = %e, "writing the checkpoint failed; the next open replays more");
            let tmp = format!("{}.tmp", crate::checkpoint::FILE);
            let _ = fs::remove_file(self.inner.dir.join(tmp));
        }
        let compacted = self.lock_state().dead.compact_if_worth_it(&self.inner.dir);
        if let Err(e) = compacted {
            warn!(error = %e, "compacting the dead-letter log failed; it stays as it is");
        }
        Ok(())
    }

    pub(super) fn oldest_pending_received_ms(&self) -> Result<Option<u64>, WalError> {
        let mut cache = self
            .inner
            .oldest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, value)) = *cache {
            if at.elapsed() < Duration::from_secs(1) {
                return Ok(value);
            }
        }
        let lanes = self.lock_state().lanes();
        let mut oldest: Option<u64> = None;
        for lane in lanes {
            let mut cursor = self.cursor(lane);
            if let Some(Ok((_, record))) = self.read(&mut cursor, 1)?.into_iter().next() {
                oldest =
                    Some(oldest.map_or(record.received_at_ms, |o| o.min(record.received_at_ms)));
            }
        }
        *cache = Some((Instant::now(), oldest));
        Ok(oldest)
    }
}
