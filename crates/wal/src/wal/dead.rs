//! Dead letters: moving records out of pending with a reason, the budget and its export, purge,
//! replay, and the delivery receipts.

use super::*;

impl Wal {
    /// Sets where dead letters beyond the budget go; without a sink they are kept over budget
    /// (logged at warn), never dropped.
    pub fn set_dead_letter_sink(&self, sink: Box<dyn DeadLetterSink>) {
        *self
            .inner
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sink);
    }

    /// Appends removals of dead letters `ids` (not fsynced).
    pub(super) fn remove_dead(&self, st: &mut State, ids: &[u64]) -> Result<(), WalError> {
        let mut frames = Vec::new();
        for id in ids {
            DeadLog::encode_remove(&mut frames, *id);
        }
        self.write_dead(st, &frames)
    }

    /// Deletes the dead letters `matches` selects, durably; returns how many. For the operator's
    /// `dead-letters purge` (the agent stopped or through its admin endpoint).
    pub fn purge_dead_letters(
        &self,
        matches: impl Fn(&DeadLetter) -> bool,
    ) -> Result<u64, WalError> {
        self.check_poison()?;
        let ids: Vec<u64> = self
            .dead_letters()
            .filter_map(|d| d.ok())
            .filter(|d| matches(d))
            .map(|d| d.id)
            .collect();
        let gen = {
            let mut st = self.lock_state();
            self.remove_dead(&mut st, &ids)?;
            st.written_gen
        };
        self.make_durable(gen)?;
        Ok(ids.len() as u64)
    }

    /// Keeps the dead-letter log within its budget: the oldest go to the sink (durably), then
    /// leave the store. Counted and logged at warn by the caller through the returned count.
    pub(super) fn enforce_dead_budget(&self, st: &mut State) -> Result<u64, WalError> {
        let ids = st
            .dead
            .over_budget(self.inner.cfg.dead_max_count, self.inner.cfg.dead_max_bytes);
        if ids.is_empty() {
            return Ok(0);
        }
        let sink = self
            .inner
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sink) = sink.as_ref() else {
            warn!(
                over = ids.len(),
                "dead-letter budget exceeded and no export configured; keeping them"
            );
            return Ok(0);
        };
        let letters: Vec<DeadLetter> = ids
            .iter()
            .filter_map(|id| st.dead.get(*id).ok().flatten())
            .filter_map(|raw| decode_dead_letter(&raw).ok())
            .collect();
        if let Err(e) = sink.export(&letters) {
            warn!(error = %e, over = ids.len(), "exporting dead letters beyond the budget failed; keeping them");
            return Ok(0);
        }
        self.remove_dead(st, &ids)?;
        warn!(
            evicted = ids.len(),
            first_id = ids[0],
            "dead-letter budget full: the oldest dead letters were exported and removed from the store"
        );
        Ok(ids.len() as u64)
    }

    /// Dead letters exported and removed by the budget since open.
    pub fn dead_letters_evicted(&self) -> u64 {
        self.lock_state().dead_evicted
    }

    /// Atomic move pending → dead letters (invariant I3), reading the record from the log first
    /// (slow path: the drain uses [`Wal::dead_letter_record`] with the record it holds). Returns
    /// the dead-letter id. A record that does not decode is kept raw as [`DeadKind::Corrupt`].
    pub fn dead_letter(&self, key: Key, reason: DeadReason, now_ms: u64) -> Result<u64, WalError> {
        self.check_poison()?;
        let Some(raw) = self.get_raw(key)? else {
            return Err(WalError::NotPending { key });
        };
        match decode_record(&raw) {
            Ok(record) => self.dead_letter_record(key, &record, reason, now_ms),
            Err(error) => self.move_to_dead(
                key,
                None,
                Some(raw),
                corrupt_reason(&reason, &error),
                now_ms,
            ),
        }
    }

    /// Atomic move of `key` with its `record` (attempt fields as the caller last set them)
    /// from pending to dead letters (invariant I3). Returns the dead-letter id.
    ///
    /// The dead letter is written and fsynced before the removal from pending is written, so no
    /// crash or power cut can keep the removal without the dead letter; a crash between the two
    /// keeps both, and the next open removes the pending copy. [`WalError::NotPending`] if the
    /// key is not pending; nothing changes then.
    pub fn dead_letter_record(
        &self,
        key: Key,
        record: &Record,
        reason: DeadReason,
        now_ms: u64,
    ) -> Result<u64, WalError> {
        self.move_to_dead(key, Some(record.clone()), None, reason, now_ms)
    }

    /// Moves a corrupt pending record (as a cursor reported it) to dead letters with its bytes
    /// kept; the kind becomes [`DeadKind::Corrupt`].
    pub fn dead_letter_corrupt(
        &self,
        corrupt: &CorruptPending,
        reason: DeadReason,
        now_ms: u64,
    ) -> Result<u64, WalError> {
        self.move_to_dead(
            corrupt.key,
            None,
            Some(corrupt.raw.clone()),
            corrupt_reason(&reason, &corrupt.error),
            now_ms,
        )
    }

    pub(super) fn move_to_dead(
        &self,
        key: Key,
        record: Option<Record>,
        raw: Option<Vec<u8>>,
        reason: DeadReason,
        now_ms: u64,
    ) -> Result<u64, WalError> {
        self.check_poison()?;
        let mut st = self.lock_state();
        if !st.is_pending(key) {
            return Err(WalError::NotPending { key });
        }
        let id = st.dead.next_id;
        st.dead.next_id += 1;
        let letter = DeadLetter {
            id,
            key: Some(key),
            record,
            raw,
            reason,
            dead_at_ms: now_ms,
        };
        let framed = encode_dead_letter(&letter).map_err(encode_err)?;
        let mut dead = Vec::new();
        DeadLog::encode_add(&mut dead, id, &framed);
        // Encoded before anything is written, so an encoding failure changes nothing.
        let removal = self.encode_dead_removal(
            &mut st,
            key,
            letter.record.as_ref(),
            id,
            &letter.reason,
            now_ms,
        )?;
        self.write_dead(&mut st, &dead)?;
        let evicted = self.enforce_dead_budget(&mut st)?;
        st.dead_evicted += evicted;
        // The dead letter must be on disk before the removal can be (page write-back order is
        // not write order). Under the mutex: dead letters are rare, correctness first.
        if let Err(source) = self.inner.sync.sync_data(st.dead.file()) {
            return Err(self.poisoned_by(WalError::SyncFailed { source }));
        }
        // With the outbox on, the removal is the Put of its receipt replacing the key (R1).
        self.write_main(&mut st, &removal)?;
        self.apply_dead_removal(&mut st, &removal, key);
        Ok(id)
    }

    /// Dead letters, oldest id first. A corrupt one comes back as
    /// [`WalError::CorruptDeadLetter`] and the iteration goes on.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<DeadLetter, WalError>> + '_ {
        let ids = self.lock_state().dead.ids();
        ids.into_iter()
            .filter_map(move |id| self.get_dead_letter(id).transpose())
    }

    /// The dead letter with this id, if any.
    pub fn get_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, WalError> {
        let raw = self
            .lock_state()
            .dead
            .get(id)
            .map_err(io_err("reading the dead-letter log", &self.inner.dir))?;
        match raw {
            None => Ok(None),
            Some(raw) => decode_dead_letter(&raw)
                .map(Some)
                .map_err(|error| WalError::CorruptDeadLetter { id, error }),
        }
    }

    /// Moves a dead letter back to pending under a new key (attempt fields reset,
    /// `next_attempt_ms` 0): the record is appended and fsynced, then the dead letter removed
    /// and fsynced, so an operator's replay sticks (a crash between the two keeps both; replaying
    /// again is harmless).
    ///
    /// Bypasses the dedup window. Errors: [`WalError::NoSuchDeadLetter`],
    /// [`WalError::CorruptDeadLetter`], [`WalError::NotReplayable`] (no record: it was corrupt);
    /// nothing changes then.
    pub fn replay(&self, dead_id: u64) -> Result<Key, WalError> {
        self.check_poison()?;
        let Some(dead) = self.get_dead_letter(dead_id)? else {
            return Err(WalError::NoSuchDeadLetter { id: dead_id });
        };
        let Some(mut record) = dead.record else {
            return Err(WalError::NotReplayable {
                id: dead_id,
                kind: dead.reason.kind,
            });
        };
        record.attempts = 0;
        record.first_attempt_ms = None;
        record.last_attempt_ms = None;
        record.next_attempt_ms = 0;
        record.last_error = None;
        let framed = encode_record(&record).map_err(encode_err)?;
        let (key, gen) = {
            let mut st = self.lock_state();
            if !st.dead.contains(dead_id) {
                return Err(WalError::NoSuchDeadLetter { id: dead_id });
            }
            let key = self.put_one(&mut st, record.priority, &record, &framed, None)?;
            (key, st.written_gen)
        };
        self.make_durable(gen)?;
        let gen = {
            let mut st = self.lock_state();
            let mut dead = Vec::new();
            DeadLog::encode_remove(&mut dead, dead_id);
            self.write_dead(&mut st, &dead)?;
            st.written_gen
        };
        self.make_durable(gen)?;
        info!(dead_id, key = %key, "dead letter replayed");
        Ok(key)
    }

    /// Delivery receipts kept, oldest first. A corrupt one comes back as
    /// [`WalError::CorruptReceipt`] and the iteration goes on.
    pub fn delivered(&self) -> impl Iterator<Item = Result<Receipt, WalError>> + '_ {
        let all = self
            .lock_state()
            .receipts
            .read_all()
            .map_err(io_err("reading receipts", &self.inner.dir));
        let items: Vec<Result<Receipt, WalError>> = match all {
            Err(e) => vec![Err(e)],
            Ok(all) => all
                .into_iter()
                .enumerate()
                .map(|(index, raw)| {
                    decode_receipt(&raw).map_err(|error| WalError::CorruptReceipt {
                        index: index as u64,
                        error,
                    })
                })
                .collect(),
        };
        items.into_iter()
    }

    pub(super) fn write_dead(&self, st: &mut State, frames: &[u8]) -> Result<(), WalError> {
        if frames.is_empty() {
            return Ok(());
        }
        if let Err(source) = st.dead.write(frames) {
            if is_no_space(&source) {
                return Err(WalError::NoSpace {
                    op: "appending to the dead-letter log",
                });
            }
            return Err(self.poisoned_by(WalError::Io {
                op: "appending to the dead-letter log",
                path: self.inner.dir.join(crate::deadlog::FILE),
                source,
            }));
        }
        st.written_gen += 1;
        Ok(())
    }
}
