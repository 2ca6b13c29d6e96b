//! alertbridge's durable write-ahead log of alerts, on sled 0.34.7.
//!
//! # What it owns
//!
//! The store of every alert between the MQTT ack and the Genesys 2xx: the record format
//! ([`Record`], framed and checksummed), group commit with a durability proof ([`Durable`]),
//! the pending queue in drain order, dead letters with reasons, a bounded set of delivery
//! receipts, a bounded dedup window of alert ids, and recovery of all of it at open.
//!
//! It does **not** own MQTT, HTTP, retry policy, clocks or threads: callers pass `now_ms`, decide
//! backoff (persisted through [`Wal::update`]) and call from blocking contexts (ingest's writer
//! thread, `spawn_blocking` in drain, the CLI). No tokio.
//!
//! # Invariants
//!
//! - **I1 — no ack without durability.** [`Wal::append_batch`] returns [`Durable`] only after the
//!   batch's transaction committed, sled's `flush()` returned and [`SyncTarget::sync_data`]
//!   returned `Ok`. `Durable`'s constructor is private to this crate, so ingest cannot ack
//!   without one.
//! - **I3 — a record leaves pending only after a 2xx or by atomic move to dead letters.**
//!   [`Wal::remove`] (with its [`Receipt`]) and [`Wal::dead_letter`] (with its [`DeadReason`])
//!   are the only ways out, each one sled transaction.
//! - **I4 — an undecodable record becomes a dead letter; decoding never panics.** Every stored
//!   value is framed and checked on every read ([`decode_record`], fuzzed). [`Wal::pending`]
//!   yields [`CorruptPending`] for such a value; [`Wal::dead_letter`] moves it to dead letters as
//!   [`DeadKind::Corrupt`] with the raw bytes kept. Nothing is dropped, the queue never sticks.
//! - **I5 — a failed flush or fsync poisons the WAL.** Never retried; every later write returns
//!   [`WalError::Poisoned`] (see the `poison` module).
//! - **W1 — atomic group commit.** A batch's pending records, dead letters, dedup entries and the
//!   id counters are written in ONE sled transaction across trees, so after any crash either all
//!   or none of them exist. This matters for dedup: a dedup entry durable without its record would
//!   make the broker's redelivery of that publish look like a duplicate, and the alert would be
//!   lost.
//! - **W2 — ids never go backwards.** Seqs and dead-letter ids come from counters persisted in the
//!   meta tree in the same transaction that uses them (and are never below the largest key found
//!   at open), so they keep increasing across restarts; dead-letter ids are never reused.
//!
//! # Store layout (on-disk format)
//!
//! One sled database in [`WalConfig::dir`] (`Mode::LowSpace`, `cache_capacity` set), with trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `pending` | [`Key`]: `[priority u8][seq u64 BE]` (drain order = byte order) | framed [`Record`] |
//! | `dead` | dead-letter id, u64 BE | framed [`DeadLetter`] |
//! | `delivered` | delivery position, u64 BE (bounded FIFO, `delivered_keep`) | framed [`Receipt`] |
//! | `dedup` | alert id bytes | its dedup position, u64 BE |
//! | `dedup_order` | dedup position, u64 BE (bounded FIFO, `dedup_window`) | alert id bytes |
//! | `meta` | `format`, `next_seq`, `next_dead_id` | u64 BE |
//!
//! Every framed value is `version u8 | length u32 LE | crc32c u32 LE | body (postcard)`; the
//! crc32c covers the version and length bytes and the body. Version bytes: [`RECORD_VERSION`],
//! [`DEAD_LETTER_VERSION`], [`RECEIPT_VERSION`]. The store as a whole carries
//! [`STORE_FORMAT`]; a store of another format is refused at open.
//! Changing a stored type changes the format: bump its version and keep a decoder for the old one.
//!
//! The dedup window is a FIFO: each new alert id gets the next position; when more than
//! `dedup_window` ids are remembered, the oldest are evicted inside the same transaction.
//! Dead-lettered entries enter the window too; [`Wal::replay`] bypasses it.
//!
//! # Durability: what survives which crash
//!
//! sled 0.34.7 buffers writes in memory; its `flush()` writes them to `<dir>/db` and, on Linux,
//! ends in `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)`, which neither flushes the disk's
//! write cache nor commits file metadata (a grown file's new extents). Its only `sync_all` is the
//! background flusher (every `flush_every_ms`). Hence three levels:
//!
//! | operation | process crash (kill -9, panic) | OS crash (kernel panic) | power cut |
//! |---|---|---|---|
//! | [`Wal::append_batch`], [`Wal::replay`], [`Wal::flush`]: commit + `flush()` + `fdatasync` | kept | kept | kept |
//! | [`Wal::update`], [`Wal::remove`], [`Wal::dead_letter`]: commit only | lost unless a later durable call or the periodic flusher ran | same | same |
//!
//! Losing an un-fsynced write is always safe: a lost `update` repeats an attempt, a lost
//! `remove` redelivers (a duplicate, never a loss), a lost `dead_letter` puts the record back in
//! pending. sled writes transactions to its log as one batch and recovers a crash-consistent
//! prefix, so a torn write never yields half a transaction (W1).
//!
//! `fdatasync` goes through [`SyncTarget`]; the default [`DataFileSync`] syncs `<dir>/db` (the
//! data file name in sled 0.34.7's `Config::db_path`) and any new file under `<dir>/blobs/`
//! (sled writes pages over 128 KiB there and never fsyncs them). Open also fsyncs sled's `conf`
//! file and the directory entries.
//!
//! Assumptions about the medium (as redb's design doc states its own): the device honours cache
//! flushes (FUA / flush requests; cheap SD cards may not — use industrial SD, eMMC or an SSD with
//! power-loss protection), the file system keeps barriers on (ext4 default), `fsync` reports
//! write errors, and one process uses the directory (sled locks `db`). Keep payloads small (the
//! agent dead-letters oversize ones) so pages stay out of blob files and each fsync stays cheap.
//!
//! # Space: live data versus file size
//!
//! sled reuses the space of removed values internally but never shrinks its files (measured:
//! 46.6 MiB with 100 000 pending, 50.5 MiB after all were delivered), so
//! [`Wal::size_on_disk`] cannot drive a disk budget: once reached, it would stay reached.
//! [`Wal::data_bytes`] (also [`WalStats::data_bytes`]) is the live data instead: the sum of the
//! framed value lengths of every pending record and every dead letter, the data an operator must
//! keep. Receipts and dedup entries are excluded: their count is bounded by `delivered_keep` and
//! `dedup_window`. Keys and sled's overhead are excluded too. The sum is kept in memory with the
//! other counters, changed in every write under the same mutex (append: +pending +dead letters;
//! update: −old +new; remove: −pending; dead_letter: −pending +dead letter; replay: −dead letter
//! +pending), and recomputed at open by one scan of the pending and dead values. Reading it
//! costs no I/O.
//!
//! # Concurrency
//!
//! [`Wal`] is a cheap `Arc` clone, `Send + Sync`. Every write (append, update, remove,
//! dead_letter, replay) changes a counter, so all serialize on one mutex around their sled
//! transaction; the flush + fsync of `append_batch` and `replay` runs after that mutex is
//! released, so drain's `remove` does not wait for ingest's fsync. Reads of the trees take no
//! lock of ours; [`Wal::stats`] and [`Wal::data_bytes`] briefly take the counters' mutex.
//!
//! # Modules
//!
//! `record` (Key, Record, framing, I4), `letters` (dead letters, receipts), `wal` (the store),
//! `durability` (Durable, SyncTarget), `poison` (I5), `error` (WalError).

mod durability;
mod error;
mod letters;
mod poison;
mod record;
mod wal;

#[cfg(test)]
mod tests;

pub use durability::{DataFileSync, Durable, SyncTarget};
pub use error::WalError;
pub use letters::{
    decode_dead_letter, decode_receipt, encode_dead_letter, encode_receipt, DeadKind, DeadLetter,
    DeadReason, Receipt, DEAD_LETTER_VERSION, RECEIPT_VERSION,
};
pub use record::{
    decode_record, encode_record, Key, Priority, Record, RecordError, Seq, FRAME_HEADER_LEN,
    PRIORITY_CRITICAL, PRIORITY_NORMAL, RECORD_VERSION,
};
pub use wal::{Appended, CorruptPending, Entry, Wal, WalConfig, WalStats, STORE_FORMAT};
