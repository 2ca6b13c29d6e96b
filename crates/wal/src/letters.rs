//! Dead letters (records that left pending without delivery, with their reason) and delivery
//! receipts (records that left pending after a 2xx).
//!
//! Both are stored framed like records (see [`crate::record`]) and are part of the on-disk format.

use serde::{Deserialize, Serialize};

use crate::record::{frame, unframe, Key, Record, RecordError};

/// Version byte of the frame around a [`DeadLetter`] body.
///
/// A [`DeadLetter`] nests a [`Record`] and a [`Key`]: bump this when any of the three layouts
/// changes, and keep a decoder for the old version in [`decode_dead_letter`].
pub const DEAD_LETTER_VERSION: u8 = 1;

/// Version byte of the frame around a [`Receipt`] body. Bump it when [`Receipt`] changes.
pub const RECEIPT_VERSION: u8 = 1;

/// Why a record became a dead letter.
///
/// Serialized inside [`DeadLetter`]: appending variants is compatible, reordering or removing is a
/// format change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadKind {
    /// Permanent API rejection (400 / 413 / 422).
    Rejected,
    /// The payload is not a valid alert.
    Malformed,
    /// Its time to live ran out before delivery.
    Expired,
    /// The stored record was undecodable (invariant I4); the bytes are kept in [`DeadLetter::raw`].
    Corrupt,
    /// The payload is larger than the agent accepts.
    Oversize,
    /// The retry budget is spent.
    Exhausted,
    /// Requests for it kept going unanswered within their timeout (`delivery.max_timeouts`):
    /// Genesys may have launched it, perhaps more than once, so it is not sent again. Check
    /// the flow's executions before replaying it.
    Unconfirmed,
}

/// Why a record became a dead letter, with what the API said, if anything.
///
/// Serialized inside [`DeadLetter`]: changing it changes the on-disk format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadReason {
    /// Class of the reason; what an operator filters on.
    pub kind: DeadKind,
    /// Human-readable explanation.
    pub message: String,
    /// HTTP status of the final answer, if the API answered.
    pub status: Option<u16>,
    /// The API's error message, if any.
    pub api_message: Option<String>,
}

/// A record parked outside pending, with its reason; an operator may replay it.
///
/// **On-disk format** (framed, version [`DEAD_LETTER_VERSION`]): changing this struct, [`Record`],
/// [`Key`] or [`DeadReason`] changes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Dead-letter id (own counter, never reused), stable for replay.
    pub id: u64,
    /// Pending key it came from; `None` when ingest dead-lettered it directly.
    pub key: Option<Key>,
    /// The record; `None` when the stored record was corrupt.
    pub record: Option<Record>,
    /// The undecodable bytes, kept for forensics when the record was corrupt.
    pub raw: Option<Vec<u8>>,
    /// Why it is here.
    pub reason: DeadReason,
    /// Unix ms when it became a dead letter.
    pub dead_at_ms: u64,
}

/// Proof of one delivery, kept (bounded) for the operator and for duplicate forensics.
///
/// **On-disk format** (framed, version [`RECEIPT_VERSION`]): changing it changes the format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Identity of the delivered alert.
    pub alert_id: String,
    /// Seq of the pending key it was delivered from.
    pub seq: u64,
    /// Unix ms of the 2xx answer.
    pub delivered_at_ms: u64,
    /// HTTP status of the answer.
    pub status: u16,
    /// Genesys flow execution id, when the target returns one.
    pub execution_id: Option<String>,
    /// Correlation id of the request/answer.
    pub correlation_id: Option<String>,
    /// Attempts it took.
    pub attempts: u32,
    /// Unix ms when ingest received it.
    pub received_at_ms: u64,
}

/// Encodes a dead letter as stored in the dead-letter tree.
pub fn encode_dead_letter(dead: &DeadLetter) -> Result<Vec<u8>, RecordError> {
    frame(DEAD_LETTER_VERSION, dead)
}

/// Decodes a stored dead letter; never panics on any input.
pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, RecordError> {
    unframe(DEAD_LETTER_VERSION, bytes)
}

/// Encodes a receipt as stored in the delivered tree.
pub fn encode_receipt(receipt: &Receipt) -> Result<Vec<u8>, RecordError> {
    frame(RECEIPT_VERSION, receipt)
}

/// Decodes a stored receipt; never panics on any input.
pub fn decode_receipt(bytes: &[u8]) -> Result<Receipt, RecordError> {
    unframe(RECEIPT_VERSION, bytes)
}
