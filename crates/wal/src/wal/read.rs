//! Reading: lanes, cursors over the segment files, point lookups.

use super::*;

impl Wal {
    /// The lanes that have pending records, most urgent first.
    pub fn lanes(&self) -> Vec<Priority> {
        self.lock_state().lanes()
    }

    /// A cursor at the start of `lane`.
    pub fn cursor(&self, lane: Priority) -> Cursor {
        Cursor {
            lane,
            segment: 0,
            offset: 0,
            min_seq: 0,
            last_seq: None,
        }
    }

    /// Up to `max` pending records of the cursor's lane, in seq order, from the cursor on; the
    /// cursor advances past them. Empty when the cursor has caught up with what is durable.
    ///
    /// A record that does not decode, or a damaged region of a segment whose records are still
    /// pending, comes back as `Err(CorruptPending)` (never a panic, never a stuck cursor):
    /// dead-letter it with [`Wal::dead_letter_corrupt`]. Reads take the writer mutex only
    /// briefly, never during file I/O.
    pub fn read(&self, cursor: &mut Cursor, max: usize) -> Result<Vec<PendingItem>, WalError> {
        self.read_lane(cursor, max, decode_record, true)
    }

    /// [`Wal::read`] with the lane's own decoder (records, or outbox entries).
    ///
    /// `report_lost`: whether pending seqs inside a damaged region come back as corrupt. A
    /// damaged region's lane is unknown, so only the alert lanes report them (I4): were the
    /// outbox to report them, marking them done could remove an alert.
    pub(super) fn read_lane<T>(
        &self,
        cursor: &mut Cursor,
        max: usize,
        decode: fn(&[u8]) -> Result<T, RecordError>,
        report_lost: bool,
    ) -> Result<Vec<LaneItem<T>>, WalError> {
        let mut out = Vec::new();
        while out.len() < max {
            let (file, end, end_seq) = {
                let st = self.lock_state();
                let Some((&id, seg)) = st.segments.range(cursor.segment..).next() else {
                    break;
                };
                if id != cursor.segment {
                    cursor.segment = id;
                    cursor.offset = 0;
                    cursor.last_seq = None;
                }
                let sealed = id != st.active;
                // Readers see what was written, fsynced or not: a record delivered before its
                // fsync completed is at worst delivered again after a crash, never lost.
                let end = seg.len;
                let nothing_for_us =
                    seg.lane_live(cursor.lane) == 0 || seg.end_seq <= cursor.min_seq;
                if sealed && (cursor.offset >= end || nothing_for_us) {
                    cursor.segment = id + 1;
                    cursor.offset = 0;
                    cursor.last_seq = None;
                    continue;
                }
                if cursor.offset >= end {
                    break;
                }
                (Arc::clone(&seg.file), end, seg.end_seq)
            };
            let want = (end - cursor.offset) as usize;
            let mut len = want.min(READ_CHUNK);
            let (buf, items, used) = loop {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, cursor.offset).map_err(io_err(
                    "reading a segment",
                    &segment::path(&self.inner.dir, cursor.segment),
                ))?;
                let complete = len == want;
                let (items, used) = frame::scan(&buf, complete);
                // Items borrow `buf`: keep only owned summaries.
                let items: Vec<Found> = items.into_iter().map(Found::from).collect();
                let gap_needs_more = !complete
                    && items.iter().any(|i| matches!(i, Found::Garbage { .. }))
                    && !items
                        .iter()
                        .skip_while(|i| !matches!(i, Found::Garbage { .. }))
                        .any(|i| matches!(i, Found::Put { .. }));
                if (used == 0 || gap_needs_more) && !complete {
                    len = want.min(len.saturating_mul(4).max(READ_CHUNK));
                    continue;
                }
                break (buf, items, used);
            };
            // Decide what is pending under the lock, decode outside it.
            let mut take: Vec<(usize, Found)> = Vec::new();
            {
                let st = self.lock_state();
                let seg = st.segments.get(&cursor.segment);
                let live = |seq: Seq| seg.is_some_and(|s| s.is_live(seq));
                let mut last_seq = cursor.last_seq;
                for (i, item) in items.iter().enumerate() {
                    match *item {
                        Found::Put { seq, lane, .. } => {
                            last_seq = Some(seq);
                            if lane == cursor.lane && seq >= cursor.min_seq && live(seq) {
                                take.push((i, item.clone()));
                            }
                        }
                        Found::Garbage { .. } if !report_lost => {}
                        Found::Garbage { .. } => {
                            // Seqs between the last put before it and the next put after it.
                            let from = last_seq.map_or(seg.map_or(0, |s| s.first_seq), |s| s + 1);
                            let to = items[i + 1..]
                                .iter()
                                .find_map(|n| match n {
                                    Found::Put { seq, .. } => Some(*seq),
                                    _ => None,
                                })
                                .unwrap_or(end_seq);
                            let lost: Vec<Seq> = (from..to)
                                .filter(|&s| s >= cursor.min_seq && live(s))
                                .collect();
                            if !lost.is_empty() {
                                take.push((i, Found::Lost(lost)));
                            }
                        }
                        Found::Other { .. } | Found::Lost(_) => {}
                    }
                }
            }
            // Emit in order, stopping at `max`; the cursor moves past what was emitted.
            let mut consumed_to = cursor.offset + used as u64;
            let mut last_seq = cursor.last_seq;
            let mut next_take = take.into_iter().peekable();
            for (i, item) in items.iter().enumerate() {
                if out.len() >= max {
                    consumed_to = cursor.offset + item.offset() as u64;
                    break;
                }
                if let Found::Put { seq, .. } = item {
                    last_seq = Some(*seq);
                }
                while let Some((j, found)) = next_take.next_if(|(j, _)| *j == i) {
                    let _ = j;
                    match found {
                        Found::Put {
                            seq,
                            lane,
                            record_at,
                            record_len,
                            ..
                        } => {
                            let raw = &buf[record_at..record_at + record_len];
                            let key = Key {
                                priority: lane,
                                seq,
                            };
                            out.push(match decode(raw) {
                                Ok(value) => Ok((key, value)),
                                Err(error) => {
                                    warn!(key = %key, error = %error, "corrupt pending record");
                                    Err(CorruptPending {
                                        key,
                                        raw: raw[..raw.len().min(64 << 10)].to_vec(),
                                        error,
                                    })
                                }
                            });
                        }
                        Found::Lost(seqs) => {
                            let (offset, len) = match item {
                                Found::Garbage { offset, len } => (*offset, *len),
                                _ => (0, 0),
                            };
                            let raw = buf[offset..offset + len.min(64 << 10)].to_vec();
                            error!(
                                segment = cursor.segment,
                                offset = cursor.offset + offset as u64,
                                bytes = len,
                                records = seqs.len(),
                                "damaged region in a segment holds pending records; reporting them as corrupt"
                            );
                            for seq in seqs {
                                out.push(Err(CorruptPending {
                                    key: Key {
                                        priority: cursor.lane,
                                        seq,
                                    },
                                    raw: raw.clone(),
                                    error: RecordError::Unreadable {
                                        segment: cursor.segment,
                                        offset: cursor.offset + offset as u64,
                                    },
                                }));
                            }
                        }
                        _ => {}
                    }
                }
            }
            cursor.last_seq = last_seq;
            cursor.offset = consumed_to;
        }
        Ok(out)
    }

    /// Pending records, lane by lane (critical first), each lane in seq order.
    ///
    /// An undecodable value comes back as `Err(CorruptPending)` (never a panic) so the caller can
    /// dead-letter it. A read error ends the iteration early (logged at error level). The
    /// iterator sees records appended while it runs. Memory: one page of records at a time.
    pub fn pending(&self) -> impl Iterator<Item = Result<(Key, Record), CorruptPending>> + '_ {
        self.pending_from(Key {
            priority: 0,
            seq: 0,
        })
    }

    /// Like [`Wal::pending`], starting at `start` (inclusive).
    pub fn pending_from(
        &self,
        start: Key,
    ) -> impl Iterator<Item = Result<(Key, Record), CorruptPending>> + '_ {
        let lanes: VecDeque<Priority> = self
            .lock_state()
            .lanes()
            .into_iter()
            .filter(|&l| l >= start.priority)
            .collect();
        PendingIter {
            wal: self,
            start,
            lanes,
            cursor: None,
            page: VecDeque::new(),
        }
    }

    /// The pending record under `key`, if any. [`WalError::CorruptRecord`] if it does not decode.
    ///
    /// Reads the key's segment from its start: for the CLI and tests, not for a hot path (the
    /// drain reads through a [`Cursor`]).
    pub fn get(&self, key: Key) -> Result<Option<Record>, WalError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(raw) => decode_record(&raw)
                .map(Some)
                .map_err(|error| WalError::CorruptRecord { key, error }),
        }
    }

    /// The stored (framed) bytes of the pending record under `key`.
    pub(super) fn get_raw(&self, key: Key) -> Result<Option<Vec<u8>>, WalError> {
        let (file, end, id) = {
            let st = self.lock_state();
            let Some(seg) = st.segment_of(key.seq).filter(|s| s.is_live(key.seq)) else {
                return Ok(None);
            };
            (Arc::clone(&seg.file), seg.len, seg.id)
        };
        let mut buf = vec![0u8; end as usize];
        file.read_exact_at(&mut buf, 0).map_err(io_err(
            "reading a segment",
            &segment::path(&self.inner.dir, id),
        ))?;
        let (items, _) = frame::scan(&buf, true);
        for item in items {
            if let Item::Frame {
                kind: Kind::Put,
                body,
                ..
            } = item
            {
                if let Some((h, raw)) = PutHeader::decode(body) {
                    if h.seq == key.seq {
                        return Ok(Some(raw.to_vec()));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// One item of a lane as a cursor returns it: its decoded value, or corrupt.
pub(super) type LaneItem<T> = Result<(Key, T), CorruptPending>;

/// One frame of a segment, as a cursor sees it (owned: no borrow of the read buffer).
#[derive(Clone, Debug)]
enum Found {
    Put {
        offset: usize,
        seq: Seq,
        lane: Priority,
        record_at: usize,
        record_len: usize,
    },
    Garbage {
        offset: usize,
        len: usize,
    },
    Other {
        offset: usize,
    },
    /// Pending seqs in a damaged region (made from a `Garbage` under the lock).
    Lost(Vec<Seq>),
}

impl Found {
    pub(super) fn offset(&self) -> usize {
        match self {
            Found::Put { offset, .. } | Found::Garbage { offset, .. } | Found::Other { offset } => {
                *offset
            }
            Found::Lost(_) => 0,
        }
    }
}

impl From<Item<'_>> for Found {
    fn from(item: Item<'_>) -> Found {
        match item {
            Item::Frame {
                offset,
                kind: Kind::Put,
                body,
                len,
            } => match PutHeader::decode(body) {
                Some((h, record)) => Found::Put {
                    offset,
                    seq: h.seq,
                    lane: h.lane,
                    record_at: offset + len - record.len(),
                    record_len: record.len(),
                },
                None => Found::Garbage { offset, len },
            },
            Item::Frame { offset, .. } => Found::Other { offset },
            Item::Garbage { offset, len } => Found::Garbage { offset, len },
        }
    }
}

/// Pages through the lanes with a cursor each.
struct PendingIter<'a> {
    wal: &'a Wal,
    start: Key,
    lanes: VecDeque<Priority>,
    cursor: Option<Cursor>,
    page: VecDeque<Result<(Key, Record), CorruptPending>>,
}

impl Iterator for PendingIter<'_> {
    type Item = Result<(Key, Record), CorruptPending>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.page.pop_front() {
                return Some(item);
            }
            let cursor = match self.cursor.as_mut() {
                Some(c) => c,
                None => {
                    let lane = self.lanes.pop_front()?;
                    let mut c = self.wal.cursor(lane);
                    if lane == self.start.priority {
                        c.min_seq = self.start.seq;
                    }
                    self.cursor.insert(c)
                }
            };
            match self.wal.read(cursor, 256) {
                Ok(page) if page.is_empty() => self.cursor = None,
                Ok(page) => self.page = page.into(),
                Err(e) => {
                    error!(error = %e, "reading pending records failed; ending this scan");
                    self.lanes.clear();
                    self.cursor = None;
                }
            }
        }
    }
}
