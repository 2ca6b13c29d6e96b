//! alertbridge's durable write-ahead log of alerts: a purpose-built segment log.
//!
//! # What it owns
//!
//! The store of every alert between the MQTT ack and the Genesys 2xx: the record format
//! ([`Record`], framed and checksummed), group commit with a durability proof ([`Durable`]),
//! the pending records in drain order per lane (read through a [`Cursor`]), dead letters with
//! reasons, a bounded set of delivery receipts, the outbox of receipts waiting to be published
//! to MQTT (when [`WalConfig::outbox`] is on), a dedup window of alert ids bounded by time and
//! count, recovery of all of it at open, and the one-time migration of a format-1 (sled) store.
//!
//! It does **not** own MQTT, HTTP, retry policy, clocks or threads: callers pass times in the
//! records, decide backoff (persisted through [`Wal::update`]) and call from blocking contexts
//! (ingest's writer thread, `spawn_blocking` in drain, the CLI). No tokio.
//!
//! # Why a segment log (and not sled, redb or fjall)
//!
//! The workload is a queue: append in arrival order, remove mostly in the same order, keep
//! millions during a long outage on a Raspberry Pi. sled 0.34.7 held about 0.75 KB of memory
//! per pending record and wrote each about ten times; see `docs/decisions.md` for the
//! measurements of every candidate. Here a record is written once (plus a 9-byte removal), memory
//! holds one bit per pending record, disk space returns a whole segment at a time, and a restart
//! reads only what was written since the last checkpoint.
//!
//! # Invariants
//!
//! - **I1 — no ack without durability.** [`Wal::append_batch`] returns [`Durable`] only after the
//!   batch was written and `fdatasync` of every file it touched returned `Ok` (through
//!   [`SyncTarget`]). `Durable`'s constructor is private to this crate, so ingest cannot ack
//!   without one. A new segment's directory entry is fsynced before anything is written to it.
//! - **I3 — a record leaves pending only after a 2xx or by a move to dead letters.**
//!   [`Wal::remove`] (with its [`Receipt`]) and the `dead_letter*` functions (with a
//!   [`DeadReason`]) are the only ways out. A dead letter is fsynced before the removal of its
//!   pending copy is written, so no crash keeps the removal without the dead letter; a crash
//!   between the two keeps both, and open removes the pending copy.
//! - **I4 — an undecodable record becomes a dead letter; decoding never panics.** Every frame is
//!   checked (magic, length, crc32c) and every record inside it again ([`decode_record`], fuzzed).
//!   A cursor returns [`CorruptPending`] for a record that does not decode and for each pending
//!   seq inside a damaged region of a segment; nothing is dropped, the cursor never sticks.
//! - **I5 — a failed write or fsync poisons the WAL.** Never retried; every later write returns
//!   [`WalError::Poisoned`] (see the `poison` module).
//! - **W1 — one frame, one fact.** A put, a removal, a retry's re-append together with the
//!   removal of its old copy, and a delivery's removal together with its queued receipt are each
//!   one checksummed frame: after any crash either the frame is whole and applies, or it is a
//!   torn tail and is cut off at open.
//! - **RC1 — a receipt is queued with the state change it reports and leaves only when done.**
//!   With [`WalConfig::outbox`] on, [`Wal::remove_and_queue`] writes the receipt as a `Put` into
//!   the reserved lane [`LANE_OUTBOX`] that replaces the delivered key (W1); a move to dead
//!   letters replaces the key the same way once the dead letter is fsynced (and a crash between
//!   the two is finished at open with the receipt); a dead letter at ingest gets its receipt in
//!   the same group commit. An entry leaves only through [`Wal::outbox_done`], which cannot
//!   remove an alert. The outbox lane never counts as pending and never enters the dedup window.
//! - **W2 — ids never go backwards.** Seqs are allocated under the writer mutex in append order
//!   and recovered as one past the highest seen (or checkpointed); dead-letter ids likewise, and a
//!   compaction of the dead-letter log starts with the next id.
//! - **W3 — memory is O(segments), not O(pending).** Per segment: its seq range, a live bitmap
//!   (one bit per seq) and live counts per lane. No key, offset or object per record is held;
//!   cursors read the files.
//!
//! # Store layout (on-disk format 2, or [`STORE_FORMAT`] = 3 with the outbox)
//!
//! | file | what |
//! |---|---|
//! | `FORMAT` | `alertbridge-wal 2`, or `alertbridge-wal 3` while [`WalConfig::outbox`] is on |
//! | `LOCK` | `flock`ed by the process that has the store open |
//! | `seg-<id>.log` | append-only frames: `Put` (seq, lane, received_at_ms, id hash, optional replaced key, framed record) and `Ack` (keys removed). The highest id is the active segment; it is sealed at [`WalConfig::segment_bytes`] |
//! | `dead.log` | `DeadAdd` (id, framed [`DeadLetter`]), `DeadRemove` (id), `DeadNextId` |
//! | `receipts.log`, `receipts.old` | framed [`Receipt`]s, rotated every `delivered_keep` |
//! | `checkpoint` | segment table (ranges, bitmaps, lane counts), next seq, dedup window, and the position in the active segment it reflects |
//!
//! Every frame is `magic "AB" | kind u8 | length u32 LE | crc32c u32 LE | body`; the record,
//! dead letter and receipt inside are themselves framed `version u8 | length u32 LE | crc32c u32
//! LE | postcard body` ([`RECORD_VERSION`], [`DEAD_LETTER_VERSION`], [`RECEIPT_VERSION`]; a
//! record carrying MQTT 5 properties is framed as [`RECORD_VERSION_MQTT5`], or as
//! [`RECORD_VERSION_MQTT5_REPLY`] when they include a response topic or correlation data; every
//! other record exactly as before).
//! Changing any stored type changes the format: bump its version and keep a decoder for the old.
//!
//! Format 3 is format 2 plus [`OutboxEntry`] puts (framed, [`OUTBOX_VERSION`]) in lane
//! [`LANE_OUTBOX`] = 2. A format-2 build would read that lane as alerts, so the marker says 3
//! exactly while the outbox may hold entries: open with the outbox on rewrites a format-2
//! marker to 3 (tmp + rename + directory fsync) before any receipt is queued; open with it off
//! drops the entries left (logged), makes that durable and writes 2 again. A format-2 store
//! needs no other migration; a format-2 build refuses a format-3 store.
//!
//! # Durability: what survives which crash
//!
//! | operation | process crash (kill -9, panic) | OS crash or power cut |
//! |---|---|---|
//! | [`Wal::append_batch`], [`Wal::replay`], [`Wal::flush`]: write + `fdatasync` | kept | kept |
//! | [`Wal::update`], [`Wal::remove`]: write only | kept (the page cache survives the process) | lost unless a later fsync ran: an attempt repeats, or a delivered alert is delivered again — a duplicate, never a loss |
//! | `dead_letter*`: dead letter write + fsync, then removal write | kept | the dead letter is kept; the removal may be lost and is redone at open |
//!
//! The agent calls [`Wal::flush`] every 500 ms while delivering, which bounds the removals a power
//! cut can undo. Open truncates a torn tail of the last segment (a frame cut by the crash) and
//! fsyncs what it keeps. Assumptions about the medium (as redb's design doc states its own): the
//! device honours cache flushes (use industrial SD, eMMC or an SSD with power-loss protection),
//! the file system keeps barriers on (ext4 default), `fsync` reports write errors, and one
//! process uses the directory (`LOCK`).
//!
//! # Space
//!
//! A sealed segment is deleted once none of its records is pending (after the removals that
//! emptied it were fsynced, so a missing segment always means an emptied one). A retry re-appends
//! its record and removes the old copy, so a record that keeps failing moves forward instead of
//! pinning an old segment. [`Wal::data_bytes`] is the bytes of segments and the dead-letter log
//! (receipts are bounded by count instead): it falls as segments are deleted, and is what a disk
//! budget compares against. The
//! dead-letter log is rewritten when half of it is removed entries.
//!
//! # Restart
//!
//! Open loads the checkpoint (written every [`WalConfig::checkpoint_bytes`] or
//! [`WalConfig::checkpoint_interval`], and by [`Wal::close`]), replays only the frames after its
//! position, and scans the dead-letter log. Restart time depends on what was written since the
//! last checkpoint, not on the backlog.
//!
//! # Concurrency
//!
//! [`Wal`] is a cheap `Arc` clone, `Send + Sync`. Every write appends under one mutex and updates
//! the tables in the same critical section; fsyncs run after it is released, and a generation
//! counter tells each caller when an fsync that started after its write has completed, so drain's
//! removals never wait for ingest's fsync. Cursors read files without the mutex and take it only
//! to ask which seqs are live.
//!
//! # Modules
//!
//! `frame` (the frame and the resyncing scanner), `segment` (segment table, put/ack bodies),
//! `wal` (the store; `wal/outbox` the receipt outbox), `deadlog`, `receipts`, `checkpoint`, `dedup`, `record` (Key, Record, I4),
//! `letters` (dead letters, receipts), `durability` (Durable, SyncTarget), `poison` (I5),
//! `legacy` + `migrate` (format 1), `error` (WalError).

mod checkpoint;
mod deadlog;
mod dedup;
mod durability;
mod error;
mod frame;
mod legacy;
mod letters;
mod migrate;
mod poison;
mod receipts;
mod record;
mod segment;
mod wal;

#[cfg(test)]
mod tests;

pub use durability::{Durable, FileSync, SyncTarget};
pub use error::WalError;
pub use letters::{
    cut_text, decode_dead_letter, decode_outbox_entry, decode_receipt, encode_dead_letter,
    encode_outbox_entry, encode_receipt, DeadKind, DeadLetter, DeadReason, OutboxDead, OutboxEntry,
    Receipt, ReceiptState, Reply, DEAD_LETTER_VERSION, OUTBOX_TEXT_MAX, OUTBOX_VERSION,
    OUTBOX_VERSION_REPLY, RECEIPT_VERSION, REPLY_MAX,
};
pub use record::{
    decode_record, encode_record, Key, MqttProps, Priority, Record, RecordError, Seq,
    FRAME_HEADER_LEN, PRIORITY_CRITICAL, PRIORITY_NORMAL, RECORD_VERSION, RECORD_VERSION_MQTT5,
    RECORD_VERSION_MQTT5_REPLY,
};
pub use wal::{
    Appended, CorruptPending, Cursor, DeadLetterSink, Entry, OutboxItem, PendingItem, Wal,
    WalConfig, WalStats, LANE_OUTBOX, STORE_FORMAT,
};
