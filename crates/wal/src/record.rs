//! The alert [`Record`], its pending [`Key`], and the frame every stored value is wrapped in.
//!
//! Invariant I4 lives here: every value read from the pending, dead-letter and delivered trees goes
//! through [`unframe`], which checks length, version and crc32c before postcard sees a byte, and no
//! input makes it panic (fuzzed by `fuzz/fuzz_targets/decode_record.rs`). An undecodable value is a
//! typed [`RecordError`], which the WAL turns into a [`DeadKind::Corrupt`](crate::DeadKind::Corrupt)
//! dead letter with the raw bytes kept.

use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Arrival counter of a pending record; strictly increasing, survives restarts.
pub type Seq = u64;

/// Priority lane; lower = more urgent. 0 = critical, 1 = normal (u8 so more lanes can come).
pub type Priority = u8;

/// The critical lane: drained before any other lane.
pub const PRIORITY_CRITICAL: Priority = 0;

/// The normal lane.
pub const PRIORITY_NORMAL: Priority = 1;

/// Version byte of the frame around a [`Record`] body.
///
/// Bump it whenever the serialized layout of [`Record`] changes, and keep a decoder for the old
/// version in [`decode_record`]: records written by the previous release are still on disk.
pub const RECORD_VERSION: u8 = 1;

/// Version byte of the frame around a [`Record`] that carries [`MqttProps`]: the body is the
/// postcard serialization of `(Record, MqttProps)`.
///
/// Only records with MQTT 5 properties use it, so a store fed by MQTT 3.1.1 (or by MQTT 5
/// publishers that set none of the kept properties) is written exactly as before and stays
/// readable by older releases; an older release meets a version-2 record as
/// [`RecordError::UnknownVersion`] and dead-letters it as corrupt with its bytes kept (a newer
/// release can replay it).
pub const RECORD_VERSION_MQTT5: u8 = 2;

/// Version byte of the frame around a [`Record`] whose [`MqttProps`] carry a response topic or
/// correlation data (MQTT 5 request/response): the body is the postcard serialization of
/// `(Record, MqttProps)` with all four fields.
///
/// Only such records use it: a record with expiry or user properties alone is still written as
/// [`RECORD_VERSION_MQTT5`], readable by the release that introduced it. [`decode_record`]
/// reads all three versions.
pub const RECORD_VERSION_MQTT5_REPLY: u8 = 3;

/// Length of the frame header: `version u8 | length u32 LE | crc32c u32 LE`.
pub const FRAME_HEADER_LEN: usize = 9;

/// Pending key: sorts critical first, then by arrival (seq). On disk: `[priority u8][seq u64 BE]`,
/// (format 1 used it as the sled key; format 2 keeps it inside dead letters and ack frames).
///
/// Serialized inside a [`DeadLetter`](crate::DeadLetter): changing it changes the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The lane; must stay the first field so the derived `Ord` matches the on-disk order.
    pub priority: Priority,
    /// Arrival order inside the WAL (global across lanes).
    pub seq: Seq,
}

impl Key {
    /// Length of the encoded key.
    pub const ENCODED_LEN: usize = 9;

    /// The on-disk form: `[priority][seq BE]`.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = self.priority;
        out[1..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Parses the on-disk form; `None` when `bytes` is not exactly [`Key::ENCODED_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        let (&priority, seq) = bytes.split_first()?;
        let seq: [u8; 8] = seq.try_into().ok()?;
        Some(Key {
            priority,
            seq: u64::from_be_bytes(seq),
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.priority, self.seq)
    }
}

/// One alert.
///
/// **On-disk format:** the postcard serialization of this struct (field order, field types) is the
/// body of every pending record and is nested in every dead letter. Changing it changes the format:
/// bump [`RECORD_VERSION`] (and `DEAD_LETTER_VERSION`) and keep a decoder for the old layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Stable identity (payload field or digest); the dedup key.
    pub alert_id: String,
    /// MQTT topic it was published on.
    pub topic: String,
    /// The original MQTT payload, verbatim.
    pub payload: Vec<u8>,
    /// Lane; copied into the [`Key`] when the record is appended.
    pub priority: Priority,
    /// Unix ms when ingest received it.
    pub received_at_ms: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Unix ms of the first delivery attempt.
    pub first_attempt_ms: Option<u64>,
    /// Unix ms of the latest delivery attempt.
    pub last_attempt_ms: Option<u64>,
    /// Unix ms before which no attempt is made; 0 = now. Persisted so a restart does not stampede.
    pub next_attempt_ms: u64,
    /// Why the latest attempt failed.
    pub last_error: Option<String>,
    /// MQTT 5 publish properties the publisher set (message expiry, user properties); `None`
    /// for MQTT 3.1.1 and when it set none. Not part of the postcard layout of `Record`
    /// (skipped): [`encode_record`] writes it after the record in a [`RECORD_VERSION_MQTT5`]
    /// frame. A dead letter does not keep it (its layout is unchanged).
    #[serde(skip)]
    pub mqtt: Option<Box<MqttProps>>,
}

impl Record {
    /// A record as ingest stores it: never tried, due at once, no MQTT 5 properties.
    pub fn new(
        alert_id: impl Into<String>,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        priority: Priority,
        received_at_ms: u64,
    ) -> Record {
        Record {
            alert_id: alert_id.into(),
            topic: topic.into(),
            payload: payload.into(),
            priority,
            received_at_ms,
            attempts: 0,
            first_attempt_ms: None,
            last_attempt_ms: None,
            next_attempt_ms: 0,
            last_error: None,
            mqtt: None,
        }
    }
}

/// MQTT 5 publish properties kept with an alert.
///
/// **On-disk format:** serialized (postcard) after its [`Record`] in a
/// [`RECORD_VERSION_MQTT5_REPLY`] frame (the first two fields alone in a [`RECORD_VERSION_MQTT5`]
/// frame): changing it changes the format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttProps {
    /// Message Expiry Interval as received, in seconds: what was left of the publisher's
    /// expiry when the broker handed the alert over (the broker subtracts the time it held it).
    /// The alert expires this long after `received_at_ms`.
    pub expiry_secs: Option<u32>,
    /// User properties in the order sent (a name may repeat); the mapping reads them as
    /// `$props.<name>` (the first value of a repeated name).
    pub user: Vec<(String, String)>,
    /// Response Topic: where the publisher asked for the answer (the delivery receipt).
    pub response_topic: Option<String>,
    /// Correlation Data the publisher set, echoed verbatim with the receipt.
    pub correlation: Option<Vec<u8>>,
}

/// [`MqttProps`] as [`RECORD_VERSION_MQTT5`] stored them (no response topic, no correlation).
#[derive(Serialize, Deserialize)]
struct MqttPropsV2 {
    expiry_secs: Option<u32>,
    user: Vec<(String, String)>,
}

impl MqttProps {
    /// Whether these properties need [`RECORD_VERSION_MQTT5_REPLY`].
    fn has_reply(&self) -> bool {
        self.response_topic.is_some() || self.correlation.is_some()
    }
}

/// Why a stored value could not be decoded (or a value could not be encoded).
///
/// Reading a value that fails with one of these never panics and never blocks the queue: the
/// caller dead-letters it as [`DeadKind::Corrupt`](crate::DeadKind::Corrupt), keeping the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header or the declared body length: the value was cut (torn write,
    /// truncation). Dead-letter it.
    #[error("value truncated: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs (header, or header + declared body length).
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The version byte names no layout this build can read: written by a newer release, or the
    /// first byte is damaged. Dead-letter it (a newer release can replay it).
    #[error("unknown format version {version} (this build reads {supported})")]
    UnknownVersion {
        /// Version byte found.
        version: u8,
        /// Version this build writes and reads.
        supported: u8,
    },
    /// More bytes than the declared body length: the length field is damaged or bytes were
    /// appended. Dead-letter it.
    #[error("length mismatch: header declares a {declared}-byte body, {actual} bytes follow")]
    LengthMismatch {
        /// Body length from the header.
        declared: usize,
        /// Body bytes present.
        actual: usize,
    },
    /// The crc32c over header and body differs from the stored one: bytes were flipped.
    /// Dead-letter it.
    #[error("checksum mismatch: stored crc32c {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// crc32c stored in the header.
        expected: u32,
        /// crc32c computed over the bytes read.
        actual: u32,
    },
    /// Frame intact but postcard rejects the body (a layout bug or a checksum collision).
    /// Dead-letter it.
    #[error("body does not decode: {source}")]
    Decode {
        /// postcard's reason.
        #[source]
        source: postcard::Error,
    },
    /// The body decoded but left bytes unread: layout mismatch. Dead-letter it.
    #[error("body decoded with {len} trailing bytes")]
    TrailingBytes {
        /// Bytes left over.
        len: usize,
    },
    /// The frame that held the record is damaged beyond reading (found by a cursor in a segment:
    /// a flipped bit, a lost sector). Its bytes are kept in the dead letter. Dead-letter it.
    #[error("the frame at offset {offset} of segment {segment} is damaged")]
    Unreadable {
        /// Segment id.
        segment: u64,
        /// Byte offset of the damaged region.
        offset: u64,
    },
    /// Encoding failed (postcard error); nothing was written. Should not happen for these types.
    #[error("value does not encode: {source}")]
    Encode {
        /// postcard's reason.
        #[source]
        source: postcard::Error,
    },
    /// The body is longer than the u32 length field can express; nothing was written.
    /// The agent rejects payloads this large long before (as `Oversize`).
    #[error("value too large to frame: {len} bytes")]
    TooLarge {
        /// Body length.
        len: usize,
    },
}

/// Frames `value` as `version | length u32 LE | crc32c u32 LE | postcard body`.
///
/// The crc32c covers the version and length bytes as well as the body, so a damaged header that
/// still parses is caught.
pub(crate) fn frame<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, RecordError> {
    let body = postcard::to_allocvec(value).map_err(|source| RecordError::Encode { source })?;
    let len = u32::try_from(body.len()).map_err(|_| RecordError::TooLarge { len: body.len() })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.push(version);
    out.extend_from_slice(&len.to_le_bytes());
    let crc = checksum(&out[..5], &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the frame and decodes its body. Never panics, whatever `bytes` holds.
pub(crate) fn unframe<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, RecordError> {
    let body = frame_body(version, bytes)?;
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|source| RecordError::Decode { source })?;
    if !rest.is_empty() {
        return Err(RecordError::TrailingBytes { len: rest.len() });
    }
    Ok(value)
}

/// Validates header and checksum and returns the body slice.
fn frame_body(version: u8, bytes: &[u8]) -> Result<&[u8], RecordError> {
    let Some((header, body)) = bytes.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(RecordError::Truncated {
            needed: FRAME_HEADER_LEN,
            got: bytes.len(),
        });
    };
    if header[0] != version {
        return Err(RecordError::UnknownVersion {
            version: header[0],
            supported: version,
        });
    }
    let declared = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if body.len() < declared {
        return Err(RecordError::Truncated {
            needed: FRAME_HEADER_LEN.saturating_add(declared),
            got: bytes.len(),
        });
    }
    if body.len() > declared {
        return Err(RecordError::LengthMismatch {
            declared,
            actual: body.len(),
        });
    }
    let expected = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    let actual = checksum(&header[..5], body);
    if expected != actual {
        return Err(RecordError::ChecksumMismatch { expected, actual });
    }
    Ok(body)
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), body)
}

/// Encodes a record as it is stored in the pending tree (framed, version [`RECORD_VERSION`]).
///
/// A record with [`Record::mqtt`] set is framed as [`RECORD_VERSION_MQTT5`] instead, or as
/// [`RECORD_VERSION_MQTT5_REPLY`] when its properties carry a response topic or correlation data:
/// each record is written in the oldest version that holds it, so a downgrade reads as much as
/// it can.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, RecordError> {
    match record.mqtt.as_deref() {
        None => frame(RECORD_VERSION, record),
        Some(props) if props.has_reply() => frame(RECORD_VERSION_MQTT5_REPLY, &(record, props)),
        Some(props) => frame(
            RECORD_VERSION_MQTT5,
            &(
                record,
                MqttPropsV2 {
                    expiry_secs: props.expiry_secs,
                    user: props.user.clone(),
                },
            ),
        ),
    }
}

/// Decodes a stored pending value. Checks length, version and crc32c first; never panics on any
/// input (invariant I4, fuzzed).
///
/// When [`RECORD_VERSION`] is bumped, this is where the decoder for the old version stays.
pub fn decode_record(bytes: &[u8]) -> Result<Record, RecordError> {
    match bytes.first() {
        Some(&RECORD_VERSION_MQTT5) => {
            let (mut record, v2): (Record, MqttPropsV2) = unframe(RECORD_VERSION_MQTT5, bytes)?;
            record.mqtt = Some(Box::new(MqttProps {
                expiry_secs: v2.expiry_secs,
                user: v2.user,
                response_topic: None,
                correlation: None,
            }));
            Ok(record)
        }
        Some(&RECORD_VERSION_MQTT5_REPLY) => {
            let (mut record, props): (Record, MqttProps) =
                unframe(RECORD_VERSION_MQTT5_REPLY, bytes)?;
            record.mqtt = Some(Box::new(props));
            Ok(record)
        }
        _ => unframe(RECORD_VERSION, bytes),
    }
}
