//! The receipt outbox: receipts of state changes, waiting in the reserved lane [`LANE_OUTBOX`]
//! of the segment log until a publisher has had them acknowledged by the MQTT broker.
//!
//! An entry is queued in the **same frame** as the state change it reports: a delivery's
//! removal is a `Put` of the entry into the outbox lane that replaces the delivered key (the
//! mechanism a retry's re-append already uses), so after any crash either the alert is still
//! pending and no receipt exists, or it is removed and its receipt is queued (invariant RC1,
//! W1). A dead letter's receipt replaces the pending key the same way, after the dead letter
//! itself was fsynced (I3); a crash between the two is finished at open with the receipt. A
//! payload dead-lettered at ingest gets its entry in the same group commit.
//!
//! Everything else comes for free from the log: recovery and checkpoints restore the lane like
//! any other, a publisher reads it with a [`Cursor`], and a segment holding an unpublished
//! receipt is kept (and counted in [`Wal::data_bytes`]) until the receipt is marked done.

use super::*;

/// One outbox entry as [`Wal::read_outbox`] returns it: decoded, or corrupt (mark it done; a
/// receipt that does not decode cannot be published).
pub type OutboxItem = Result<(Key, OutboxEntry), CorruptPending>;

/// Keys acknowledged per frame when the outbox is emptied at open.
const DROP_CHUNK: usize = 4096;

impl Wal {
    /// Whether this WAL keeps a receipt outbox ([`WalConfig::outbox`]).
    pub fn outbox_enabled(&self) -> bool {
        self.inner.cfg.outbox
    }

    /// Delivered (invariant I3) with its receipt queued (invariant RC1): removes `key` from
    /// pending and queues `entry` in the outbox **in one frame**, and keeps the forensic
    /// `receipt` like [`Wal::remove`]. With the outbox off it is [`Wal::remove`].
    ///
    /// Not fsynced, like [`Wal::remove`]: a process crash keeps both (the page cache survives);
    /// a power cut before the next fsync may lose both together, and then the alert is
    /// delivered again and gets a new receipt (a duplicate, never a loss). On a full filesystem
    /// the removal waits in memory like [`Wal::remove`]'s and this receipt is dropped (logged):
    /// delivery must not stop for a receipt. [`WalError::NotPending`] if the key is not
    /// pending; nothing changes then.
    pub fn remove_and_queue(
        &self,
        key: Key,
        receipt: Receipt,
        entry: &OutboxEntry,
    ) -> Result<(), WalError> {
        if !self.inner.cfg.outbox {
            return self.remove(key, receipt);
        }
        self.check_poison()?;
        let framed_receipt = encode_receipt(&receipt).map_err(encode_err)?;
        let framed = encode_outbox_entry(entry).map_err(encode_err)?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        match self.put_framed(
            &mut st,
            LANE_OUTBOX,
            entry.received_at_ms,
            0,
            &framed,
            Some(key),
        ) {
            Ok(_) => {}
            Err(WalError::NoSpace { .. }) => {
                st.unwritten_acks.push(key);
                warn!(alert_id = %entry.alert_id, "filesystem full: the delivery receipt of this alert was dropped; its removal waits in memory");
            }
            Err(e) => return Err(e),
        }
        st.clear(key);
        if let Err(e) = st.receipts.push(&framed_receipt) {
            warn!(alert_id = %receipt.alert_id, error = %e, "could not keep a delivery receipt");
        }
        Ok(())
    }

    /// A cursor at the start of the outbox lane.
    pub fn outbox_cursor(&self) -> Cursor {
        self.cursor(LANE_OUTBOX)
    }

    /// Up to `max` queued receipts from the cursor on, oldest first; the cursor advances past
    /// them. Entries marked done meanwhile are skipped; entries queued later are found by later
    /// reads. Reads take the writer mutex only briefly.
    pub fn read_outbox(
        &self,
        cursor: &mut Cursor,
        max: usize,
    ) -> Result<Vec<OutboxItem>, WalError> {
        debug_assert_eq!(cursor.lane(), LANE_OUTBOX);
        self.read_lane(cursor, max, decode_outbox_entry, false)
    }

    /// Receipts queued and not yet done.
    pub fn outbox_len(&self) -> u64 {
        self.lock_state().outbox_len()
    }

    /// Marks receipts done (published and acknowledged by the broker, or dropped by the
    /// publisher's bound): one `Ack` frame, not fsynced (a crash before the next fsync publishes
    /// them again: at least once). Keys outside the outbox lane or no longer pending are
    /// ignored; pass only keys [`Wal::read_outbox`] returned, which are always receipts, so
    /// this never removes an alert.
    pub fn outbox_done(&self, keys: &[Key]) -> Result<(), WalError> {
        self.check_poison()?;
        let mut st = self.lock_state();
        let keys: Vec<Key> = keys
            .iter()
            .copied()
            .filter(|k| k.priority == LANE_OUTBOX && st.is_pending(*k))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut main = Vec::new();
        encode_ack(&mut main, &keys);
        match self.write_main(&mut st, &main) {
            Ok(()) => {}
            // Like a delivery's removal: written with the next frames that fit.
            Err(WalError::NoSpace { .. }) => st.unwritten_acks.extend_from_slice(&keys),
            Err(e) => return Err(e),
        }
        for key in keys {
            st.clear(key);
        }
        Ok(())
    }

    /// The frame that removes `key` from pending after its dead letter `id` was made durable:
    /// with the outbox on and the record known, a `Put` of its receipt replacing `key`;
    /// otherwise a bare `Ack`.
    pub(super) fn encode_dead_removal(
        &self,
        st: &mut State,
        key: Key,
        record: Option<&Record>,
        id: u64,
        reason: &DeadReason,
        now_ms: u64,
    ) -> Result<Vec<u8>, WalError> {
        let mut main = Vec::new();
        match record.filter(|_| self.inner.cfg.outbox) {
            Some(record) => {
                let entry = OutboxEntry::dead_lettered(record, id, reason, now_ms);
                let framed = encode_outbox_entry(&entry).map_err(encode_err)?;
                self.rotate_if_full(st)?;
                let seq = st.next_seq;
                st.next_seq += 1;
                PutHeader {
                    seq,
                    lane: LANE_OUTBOX,
                    received_at_ms: record.received_at_ms,
                    id_hash: 0,
                    replaces: Some(key),
                }
                .encode(&mut main, &framed);
            }
            None => encode_ack(&mut main, &[key]),
        }
        Ok(main)
    }

    /// Marks what [`Wal::encode_dead_removal`] wrote: the entry pending, `key` cleared.
    pub(super) fn apply_dead_removal(&self, st: &mut State, frame: &[u8], key: Key) {
        let (items, _) = frame::scan(frame, true);
        for item in items {
            if let Item::Frame {
                kind: Kind::Put,
                body,
                ..
            } = item
            {
                if let Some((h, _)) = PutHeader::decode(body) {
                    st.active_mut().set_live(h.seq, h.lane);
                }
            }
        }
        st.clear(key);
    }

    /// At open: marks a store format 3 before any receipt is queued (outbox on), or empties the
    /// outbox of a run that had it on and marks the store format 2 again (outbox off), so a
    /// store that queues no receipts stays readable by a format-2 build and no forgotten
    /// receipt pins a segment forever.
    pub(super) fn settle_outbox_format(&self, format: u64) -> Result<(), WalError> {
        let path = self.inner.dir.join(FORMAT_FILE);
        if self.inner.cfg.outbox {
            if format != STORE_FORMAT {
                write_format_version(&self.inner.dir, STORE_FORMAT)
                    .map_err(io_err("writing the store format", &path))?;
                info!(
                    format = STORE_FORMAT,
                    "store marked format 3 (receipt outbox)"
                );
            }
            return Ok(());
        }
        let left = self.outbox_len();
        if left > 0 {
            let mut cursor = self.outbox_cursor();
            loop {
                let page = self.read_outbox(&mut cursor, DROP_CHUNK)?;
                if page.is_empty() {
                    break;
                }
                let keys: Vec<Key> = page
                    .iter()
                    .map(|item| match item {
                        Ok((key, _)) => *key,
                        Err(corrupt) => corrupt.key,
                    })
                    .collect();
                self.outbox_done(&keys)?;
            }
            self.flush()?;
            warn!(
                dropped = left,
                "receipts are off: receipts still waiting from a run with them on were dropped"
            );
        }
        if format != FORMAT_WITHOUT_OUTBOX {
            write_format_version(&self.inner.dir, FORMAT_WITHOUT_OUTBOX)
                .map_err(io_err("writing the store format", &path))?;
        }
        Ok(())
    }
}
