//! Imports from a format-1 (sled) store, and the test-only backdoors.

use super::*;

/// Migration from format 1: writes values with their old seqs and ids.
impl Wal {
    /// Appends `(key, framed record)` pairs with their seqs kept (ascending), durably.
    pub(crate) fn import_pending(&self, batch: &[(Key, Vec<u8>)]) -> Result<(), WalError> {
        let gen = {
            let mut st = self.lock_state();
            self.rotate_if_full(&mut st)?;
            let mut main = Vec::new();
            for (key, raw) in batch {
                let (received_at_ms, id_hash) = match decode_record(raw) {
                    Ok(r) => (r.received_at_ms, id_hash(&r.topic, &r.alert_id)),
                    Err(_) => (0, 0),
                };
                PutHeader {
                    seq: key.seq,
                    lane: key.priority,
                    received_at_ms,
                    id_hash,
                    replaces: None,
                }
                .encode(&mut main, raw);
                st.next_seq = st.next_seq.max(key.seq + 1);
            }
            self.write_main(&mut st, &main)?;
            let active = st.active_mut();
            for (key, _) in batch {
                active.set_live(key.seq, key.priority);
            }
            st.written_gen
        };
        self.make_durable(gen)
    }

    /// Appends dead letters with their ids kept; ids continue at `next_id` or above.
    pub(crate) fn import_dead(
        &self,
        dead: &[(u64, Vec<u8>)],
        next_id: u64,
    ) -> Result<(), WalError> {
        let gen = {
            let mut st = self.lock_state();
            let mut frames = Vec::new();
            for (id, raw) in dead {
                DeadLog::encode_add(&mut frames, *id, raw);
            }
            self.write_dead(&mut st, &frames)?;
            st.dead.next_id = st.dead.next_id.max(next_id);
            // Kept across compactions by the DeadNextId frame; written now in case none remain.
            let mut marker = Vec::new();
            frame::encode(
                &mut marker,
                Kind::DeadNextId,
                &st.dead.next_id.to_le_bytes(),
            );
            self.write_dead(&mut st, &marker)?;
            st.written_gen
        };
        self.make_durable(gen)
    }

    /// Keeps a framed receipt.
    pub(crate) fn import_receipt(&self, raw: &[u8]) -> Result<(), WalError> {
        let dir = self.inner.dir.clone();
        self.lock_state()
            .receipts
            .push(raw)
            .map_err(io_err("writing a receipt", &dir))
    }

    /// Seqs continue at `next_seq` or above (invariant W2).
    pub(crate) fn import_next_seq(&self, next_seq: Seq) -> Result<(), WalError> {
        let mut st = self.lock_state();
        st.next_seq = st.next_seq.max(next_seq);
        // Recorded by the checkpoint that `close` writes.
        st.since_checkpoint = st.since_checkpoint.max(1);
        Ok(())
    }

    /// A crash between a dead letter's fsync and the removal of its pending copy keeps both:
    /// remove the pending copy (the dead letter names its key).
    pub(super) fn reconcile_dead_letters(&self) -> Result<(), WalError> {
        let ids = self.lock_state().dead.ids();
        let mut stale = Vec::new();
        for id in ids {
            if let Ok(Some(mut letter)) = self.get_dead_letter(id) {
                if let Some(key) = letter.key {
                    if self.lock_state().is_pending(key) {
                        // A dead letter keeps no MQTT 5 properties; the pending copy does, and
                        // the receipt needs them (its publisher's response topic).
                        if let (Some(r), Ok(Some(pending))) =
                            (letter.record.as_mut(), self.get(key))
                        {
                            r.mqtt = pending.mqtt;
                        }
                        stale.push((key, letter));
                    }
                }
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        warn!(records = stale.len(), "removing pending copies of records already dead-lettered (a crash interrupted the move)");
        let gen = {
            let mut st = self.lock_state();
            // Removed as the interrupted move would have: with the outbox on, by the Put of
            // its receipt (so the crash does not lose the receipt either).
            for (key, letter) in stale {
                let removal = self.encode_dead_removal(
                    &mut st,
                    key,
                    letter.record.as_ref(),
                    letter.id,
                    &letter.reason,
                    letter.dead_at_ms,
                )?;
                self.write_main(&mut st, &removal)?;
                self.apply_dead_removal(&mut st, &removal, key);
            }
            st.written_gen
        };
        self.make_durable(gen)
    }
}

/// Test-only backdoors: write raw bytes where the WAL would write framed values.
#[cfg(test)]
impl Wal {
    /// Appends a `Put` whose record bytes are `raw` (need not decode) under `key`'s lane; returns
    /// the key it got.
    pub(crate) fn put_raw_pending(&self, priority: Priority, raw: &[u8]) -> Key {
        let gen = {
            let mut st = self.lock_state();
            let key = Key {
                priority,
                seq: st.next_seq,
            };
            st.next_seq += 1;
            let mut main = Vec::new();
            PutHeader {
                seq: key.seq,
                lane: priority,
                received_at_ms: 0,
                id_hash: 0,
                replaces: None,
            }
            .encode(&mut main, raw);
            self.write_main(&mut st, &main).expect("test write");
            st.active_mut().set_live(key.seq, priority);
            (st.written_gen, key)
        };
        self.make_durable(gen.0).expect("test fsync");
        gen.1
    }

    pub(crate) fn put_raw_dead(&self, id: u64, raw: &[u8]) {
        let mut st = self.lock_state();
        let mut dead = Vec::new();
        DeadLog::encode_add(&mut dead, id, raw);
        self.write_dead(&mut st, &dead).expect("test write");
    }

    /// Drops the handle as a crash would: no flush, no checkpoint.
    pub(crate) fn abandon(self) {
        self.inner.poison.poison();
    }

    /// Asserts the in-memory tables match a fresh recovery of the files.
    pub(crate) fn assert_counters_consistent(&self) {
        self.flush().expect("flush");
        let st = self.lock_state();
        let fresh = recover(&self.inner.dir, &self.inner.cfg, &FileSync).expect("recover");
        assert_eq!(st.lane_totals(), fresh.lane_totals(), "pending counts");
        assert_eq!(st.outbox_len(), fresh.outbox_len(), "outbox entries");
        assert_eq!(st.dead.count(), fresh.dead.count(), "dead letters");
        assert_eq!(st.next_seq, fresh.next_seq, "next seq");
    }
}
