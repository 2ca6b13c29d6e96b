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

/// Version byte of the frame around an [`OutboxEntry`] body. Bump it when [`OutboxEntry`] (or a
/// type inside it) changes, and keep a decoder for the old version in [`decode_outbox_entry`].
pub const OUTBOX_VERSION: u8 = 1;

/// Version byte of an [`OutboxEntry`] that carries a [`Reply`] (an MQTT 5 response topic). The
/// body layout is the same as [`OUTBOX_VERSION`]'s; the release before response topics read
/// such entries but published them without the checks and the correlation data, so they get a
/// version of their own, which that release drops as undecodable (warned) instead.
pub const OUTBOX_VERSION_REPLY: u8 = 2;

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

impl DeadKind {
    /// The kind's name as operators see it (metrics label, receipts, `dead-letters --kind`).
    pub fn name(self) -> &'static str {
        match self {
            DeadKind::Rejected => "rejected",
            DeadKind::Malformed => "malformed",
            DeadKind::Expired => "expired",
            DeadKind::Corrupt => "corrupt",
            DeadKind::Oversize => "oversize",
            DeadKind::Exhausted => "exhausted",
            DeadKind::Unconfirmed => "unconfirmed",
        }
    }
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

/// Which state change an [`OutboxEntry`] reports.
///
/// Serialized inside [`OutboxEntry`]: appending variants is compatible, reordering or removing is
/// a format change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptState {
    /// Genesys answered 2xx.
    Delivered,
    /// Moved to dead letters for any reason other than its time to live.
    DeadLettered,
    /// Moved to dead letters because its time to live ran out.
    Expired,
}

/// Where an MQTT 5 publisher asked for the answer (`response_topic` + `correlation_data`).
///
/// Serialized inside [`OutboxEntry`]: changing it changes the on-disk format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The publisher's response topic.
    pub topic: String,
    /// The publisher's correlation data, echoed verbatim.
    pub correlation: Option<Vec<u8>>,
}

/// Longest response topic, and longest correlation data, kept for a receipt, in bytes. MQTT
/// allows 64 KiB of each; receipts wait in the log (up to `receipts.max_pending` of them), so a
/// publisher must not be able to make each one 128 KiB.
pub const REPLY_MAX: usize = 1024;

impl Reply {
    /// Where the publisher of `record` asked for the answer: its MQTT 5 response topic with its
    /// correlation data; `None` when it set no response topic (correlation data alone names no
    /// place to answer).
    pub fn of(record: &Record) -> Option<Reply> {
        let props = record.mqtt.as_deref()?;
        Some(Reply {
            topic: props.response_topic.clone()?,
            correlation: props.correlation.clone(),
        })
    }
}

/// A receipt waiting to be published to MQTT: the state change of one alert, queued in the same
/// log frame as the change itself (see [`crate::Wal::remove_and_queue`]).
///
/// **On-disk format** (framed, version [`OUTBOX_VERSION`]): changing this struct,
/// [`ReceiptState`], [`Reply`] or [`DeadKind`] changes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Identity of the alert.
    pub alert_id: String,
    /// The MQTT topic the alert arrived on (the receipt topic's placeholders come from it).
    pub topic: String,
    /// What happened to it.
    pub state: ReceiptState,
    /// Unix ms of the state change.
    pub at_ms: u64,
    /// Unix ms when ingest received the alert.
    pub received_at_ms: u64,
    /// Delivery attempts made.
    pub attempts: u32,
    /// HTTP status of the last answer, if the API answered.
    pub status: Option<u16>,
    /// Genesys flow execution id, when the target returned one.
    pub execution_id: Option<String>,
    /// Correlation id of the request/answer.
    pub correlation_id: Option<String>,
    /// For a dead-lettered or expired alert: the dead-letter id and why.
    pub dead: Option<OutboxDead>,
    /// Where an MQTT 5 publisher asked for the answer; `None` uses the configured template.
    pub reply: Option<Reply>,
}

/// The dead-letter part of an [`OutboxEntry`].
///
/// Serialized inside [`OutboxEntry`]: changing it changes the on-disk format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxDead {
    /// Dead-letter id (for `dead-letters show` / `replay`).
    pub id: u64,
    /// Class of the reason.
    pub kind: DeadKind,
    /// Human-readable explanation (cut to [`OUTBOX_TEXT_MAX`] bytes).
    pub reason: String,
    /// The API's error message, if any (cut to [`OUTBOX_TEXT_MAX`] bytes).
    pub api_message: Option<String>,
}

/// Longest text kept in an [`OutboxEntry`] field that comes from outside (reasons, API messages):
/// a receipt stays small whatever an API answered.
pub const OUTBOX_TEXT_MAX: usize = 512;

/// `text` cut to at most `max` bytes on a char boundary.
pub fn cut_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl OutboxDead {
    /// The dead-letter part for dead letter `id` with `reason`, texts cut to [`OUTBOX_TEXT_MAX`].
    pub fn new(id: u64, reason: &DeadReason) -> OutboxDead {
        OutboxDead {
            id,
            kind: reason.kind,
            reason: cut_text(&reason.message, OUTBOX_TEXT_MAX),
            api_message: reason
                .api_message
                .as_deref()
                .map(|m| cut_text(m, OUTBOX_TEXT_MAX)),
        }
    }
}

impl OutboxEntry {
    /// The entry for a record moved to dead letter `id` with `reason` at `at_ms`; the state is
    /// [`ReceiptState::Expired`] for [`DeadKind::Expired`], else [`ReceiptState::DeadLettered`].
    pub fn dead_lettered(record: &Record, id: u64, reason: &DeadReason, at_ms: u64) -> OutboxEntry {
        OutboxEntry {
            alert_id: record.alert_id.clone(),
            topic: record.topic.clone(),
            state: if reason.kind == DeadKind::Expired {
                ReceiptState::Expired
            } else {
                ReceiptState::DeadLettered
            },
            at_ms,
            received_at_ms: record.received_at_ms,
            attempts: record.attempts,
            status: reason.status,
            execution_id: None,
            correlation_id: None,
            dead: Some(OutboxDead::new(id, reason)),
            reply: Reply::of(record),
        }
    }
}

/// Encodes an outbox entry as stored in the outbox lane: version [`OUTBOX_VERSION_REPLY`] when
/// it carries a [`Reply`], else [`OUTBOX_VERSION`].
pub fn encode_outbox_entry(entry: &OutboxEntry) -> Result<Vec<u8>, RecordError> {
    match entry.reply {
        Some(_) => frame(OUTBOX_VERSION_REPLY, entry),
        None => frame(OUTBOX_VERSION, entry),
    }
}

/// Decodes a stored outbox entry (either version); never panics on any input.
pub fn decode_outbox_entry(bytes: &[u8]) -> Result<OutboxEntry, RecordError> {
    match bytes.first() {
        Some(&OUTBOX_VERSION_REPLY) => unframe(OUTBOX_VERSION_REPLY, bytes),
        _ => unframe(OUTBOX_VERSION, bytes),
    }
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
