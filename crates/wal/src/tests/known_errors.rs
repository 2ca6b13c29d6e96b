//! Damaged values: each damage has a named outcome, corrupt records become dead letters with
//! their bytes kept, and decoding never panics (invariant I4).

use proptest::prelude::*;
use tempfile::TempDir;

use super::support::{append_one, open, reason, record};
use crate::{
    decode_dead_letter, decode_receipt, decode_record, encode_record, CorruptPending, DeadKind,
    Record, RecordError, WalError, FRAME_HEADER_LEN, PRIORITY_NORMAL, RECORD_VERSION,
    RECORD_VERSION_MQTT5, RECORD_VERSION_MQTT5_REPLY,
};

type Check = Box<dyn Fn(&RecordError) -> bool>;

/// Frames `body` by hand, following the documented layout (independent of the crate's `frame`).
fn frame_raw(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![version];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn frame_layout_is_version_length_crc32c_body() {
    let rec = record("a", PRIORITY_NORMAL);
    let body = postcard::to_allocvec(&rec).unwrap();
    assert_eq!(
        encode_record(&rec).unwrap(),
        frame_raw(RECORD_VERSION, &body)
    );
}

#[test]
fn a_record_with_mqtt5_properties_is_framed_as_version_2_and_one_without_stays_version_1() {
    let plain = record("a", PRIORITY_NORMAL);
    assert_eq!(encode_record(&plain).unwrap()[0], RECORD_VERSION);
    let mut with = plain.clone();
    with.mqtt = Some(Box::new(crate::MqttProps {
        expiry_secs: Some(10),
        user: vec![
            ("site".into(), "north".into()),
            ("site".into(), "south".into()),
        ],
        ..Default::default()
    }));
    let bytes = encode_record(&with).unwrap();
    assert_eq!(bytes[0], RECORD_VERSION_MQTT5);
    assert_eq!(
        bytes,
        frame_raw(
            RECORD_VERSION_MQTT5,
            &postcard::to_allocvec(&(
                &plain,
                (Some(10u32), vec![("site", "north"), ("site", "south")])
            ))
            .unwrap()
        ),
        "body: the version-1 record, then its expiry and user properties"
    );
    assert_eq!(decode_record(&bytes).unwrap(), with, "round trip");
    // What an older release does with it: an unknown version, dead-lettered as corrupt.
    assert!(matches!(
        crate::record::unframe::<Record>(RECORD_VERSION, &bytes),
        Err(RecordError::UnknownVersion { version: 2, .. })
    ));
}

#[test]
fn a_record_with_a_response_topic_is_framed_as_version_3_and_version_2_bytes_still_decode() {
    let plain = record("a", PRIORITY_NORMAL);
    let mut with = plain.clone();
    with.mqtt = Some(Box::new(crate::MqttProps {
        expiry_secs: Some(10),
        user: vec![("site".into(), "north".into())],
        response_topic: Some("hmi/answers/7".into()),
        correlation: Some(vec![0, 159, 255, 1]),
    }));
    let bytes = encode_record(&with).unwrap();
    assert_eq!(bytes[0], RECORD_VERSION_MQTT5_REPLY);
    assert_eq!(decode_record(&bytes).unwrap(), with, "round trip");
    // Correlation data alone also needs version 3.
    let mut only_corr = with.clone();
    if let Some(p) = only_corr.mqtt.as_deref_mut() {
        p.response_topic = None;
    }
    assert_eq!(
        encode_record(&only_corr).unwrap()[0],
        RECORD_VERSION_MQTT5_REPLY
    );
    assert_eq!(
        decode_record(&encode_record(&only_corr).unwrap()).unwrap(),
        only_corr
    );
    // Bytes as the release that introduced version 2 wrote them (record, expiry, user
    // properties), framed by hand: they still decode, with no response topic.
    let v2_body = postcard::to_allocvec(&(&plain, (Some(10u32), vec![("site", "north")]))).unwrap();
    let old = decode_record(&frame_raw(RECORD_VERSION_MQTT5, &v2_body)).unwrap();
    let props = old.mqtt.as_deref().expect("properties kept");
    assert_eq!(props.expiry_secs, Some(10));
    assert_eq!(props.user, vec![("site".to_owned(), "north".to_owned())]);
    assert_eq!(
        (
            props.response_topic.as_deref(),
            props.correlation.as_deref()
        ),
        (None, None)
    );
    assert_eq!(
        encode_record(&old).unwrap(),
        frame_raw(RECORD_VERSION_MQTT5, &v2_body),
        "without a response topic the record is written as version 2 again, byte for byte"
    );
}

fn encoded() -> Vec<u8> {
    encode_record(&record("a", PRIORITY_NORMAL)).unwrap()
}

#[test]
fn encoded_record_round_trips() {
    assert_eq!(
        decode_record(&encoded()).unwrap(),
        record("a", PRIORITY_NORMAL)
    );
}

#[test]
fn damage_to_a_record_has_a_named_outcome() {
    let good = encoded();
    let body_len = good.len() - FRAME_HEADER_LEN;

    let mut flipped_body = good.clone();
    *flipped_body.last_mut().unwrap() ^= 0x01;
    let mut flipped_crc = good.clone();
    flipped_crc[5] ^= 0x80;
    let mut flipped_len = good.clone();
    flipped_len[1] ^= 0x01; // declares body_len ^ 1
    let mut appended = good.clone();
    appended.push(0);
    let mut future = good.clone();
    future[0] = RECORD_VERSION_MQTT5_REPLY + 1;
    // A well-framed body that is not a Record.
    let not_a_record = frame_raw(RECORD_VERSION, &postcard::to_allocvec(&(7u8, "x")).unwrap());
    // A well-framed Record followed by an extra body byte.
    let mut body = postcard::to_allocvec(&record("a", PRIORITY_NORMAL)).unwrap();
    body.push(0);
    let trailing = frame_raw(RECORD_VERSION, &body);

    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "empty",
            vec![],
            Box::new(|e| matches!(e, RecordError::Truncated { needed: 9, got: 0 })),
        ),
        (
            "cut inside the header",
            good[..5].to_vec(),
            Box::new(|e| matches!(e, RecordError::Truncated { needed: 9, got: 5 })),
        ),
        (
            "cut tail",
            good[..good.len() - 3].to_vec(),
            Box::new(
                move |e| matches!(e, RecordError::Truncated { needed, got } if *needed == FRAME_HEADER_LEN + body_len && *got == FRAME_HEADER_LEN + body_len - 3),
            ),
        ),
        (
            "flipped body byte",
            flipped_body,
            Box::new(|e| matches!(e, RecordError::ChecksumMismatch { .. })),
        ),
        (
            "flipped checksum byte",
            flipped_crc,
            Box::new(|e| matches!(e, RecordError::ChecksumMismatch { .. })),
        ),
        (
            "flipped length byte",
            flipped_len,
            Box::new(|e| {
                matches!(
                    e,
                    RecordError::Truncated { .. } | RecordError::LengthMismatch { .. }
                )
            }),
        ),
        (
            "byte appended",
            appended,
            Box::new(
                move |e| matches!(e, RecordError::LengthMismatch { declared, actual } if *declared == body_len && *actual == body_len + 1),
            ),
        ),
        (
            "unknown version",
            future,
            Box::new(
                |e| matches!(e, RecordError::UnknownVersion { version, supported } if *version == RECORD_VERSION_MQTT5_REPLY + 1 && *supported == RECORD_VERSION),
            ),
        ),
        (
            "body of another type",
            not_a_record,
            Box::new(|e| {
                matches!(
                    e,
                    RecordError::Decode { .. } | RecordError::TrailingBytes { .. }
                )
            }),
        ),
        (
            "record with trailing body bytes",
            trailing,
            Box::new(|e| matches!(e, RecordError::TrailingBytes { len: 1 })),
        ),
    ];
    for (name, bytes, expected) in cases {
        let err = decode_record(&bytes).expect_err(name);
        assert!(expected(&err), "{name}: unexpected {err:?}");
    }
}

#[test]
fn flipped_byte_in_a_stored_record_yields_a_corrupt_item_and_the_rest_still_drains() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let before = append_one(&wal, record("before", PRIORITY_NORMAL));
    let mut bytes = encoded();
    bytes[FRAME_HEADER_LEN + 2] ^= 0xff;
    let bad = wal.put_raw_pending(PRIORITY_NORMAL, &bytes);
    assert_eq!(bad.seq, before.seq + 1);
    let after = append_one(&wal, record("after", PRIORITY_NORMAL));
    assert!(after.seq > bad.seq);

    let items: Vec<_> = wal.pending().collect();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_ref().unwrap().1.alert_id, "before");
    let Err(CorruptPending { key, raw, error }) = &items[1] else {
        panic!("expected a corrupt item, got {:?}", items[1]);
    };
    assert_eq!((*key, raw), (bad, &bytes));
    assert!(
        matches!(error, RecordError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(items[2].as_ref().unwrap().1.alert_id, "after");
    assert!(matches!(wal.get(bad), Err(WalError::CorruptRecord { key, .. }) if key == bad));
}

#[test]
fn corrupt_record_becomes_a_corrupt_dead_letter_with_its_bytes_kept() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let good = encoded();
    let cut = good[..good.len() - 4].to_vec();
    let key = wal.put_raw_pending(PRIORITY_NORMAL, &cut);

    let corrupt = wal.pending().next().unwrap().unwrap_err();
    assert!(matches!(corrupt.error, RecordError::Truncated { .. }));
    // Drain asks for "Exhausted"; the WAL notices the bytes are corrupt.
    let id = wal
        .dead_letter(corrupt.key, reason(DeadKind::Exhausted), 5)
        .unwrap();
    let dead = wal.get_dead_letter(id).unwrap().unwrap();
    assert_eq!(dead.key, Some(key));
    assert_eq!(dead.record, None);
    assert_eq!(dead.raw.as_deref(), Some(&cut[..]));
    assert_eq!(dead.reason.kind, DeadKind::Corrupt);
    assert!(
        dead.reason.message.contains("truncated"),
        "{}",
        dead.reason.message
    );
    assert_eq!(wal.pending().count(), 0);
    assert_eq!(wal.stats().unwrap().pending, 0);
    // Nothing to replay.
    assert!(matches!(
        wal.replay(id),
        Err(WalError::NotReplayable { id: i, kind: DeadKind::Corrupt }) if i == id
    ));
    assert_eq!(wal.dead_letters().count(), 1);
    wal.assert_counters_consistent();
}

#[test]
fn unknown_version_in_a_stored_record_is_dead_lettered_as_corrupt() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let mut future = encoded();
    future[0] = 9;
    let key = wal.put_raw_pending(0, &future);
    let corrupt = wal.pending().next().unwrap().unwrap_err();
    assert_eq!(
        corrupt.error,
        RecordError::UnknownVersion {
            version: 9,
            supported: RECORD_VERSION
        }
    );
    let mut r = reason(DeadKind::Corrupt);
    r.message = corrupt.error.to_string();
    let id = wal.dead_letter(key, r.clone(), 1).unwrap();
    let dead = wal.get_dead_letter(id).unwrap().unwrap();
    assert_eq!(dead.reason, r, "a Corrupt reason is kept as given");
    assert_eq!(dead.raw, Some(future));
}

#[test]
fn corrupt_dead_letter_is_reported_and_the_others_still_listed() {
    let dir = TempDir::new().unwrap();
    let wal = open(dir.path());
    let key = append_one(&wal, record("a", PRIORITY_NORMAL));
    let good_id = wal.dead_letter(key, reason(DeadKind::Rejected), 1).unwrap();
    wal.put_raw_dead(good_id + 1, b"\x01garbage");
    let items: Vec<_> = wal.dead_letters().collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_ref().unwrap().id, good_id);
    assert!(matches!(
        &items[1],
        Err(WalError::CorruptDeadLetter { id, error: RecordError::Truncated { .. } }) if *id == good_id + 1
    ));
    assert!(matches!(
        wal.replay(good_id + 1),
        Err(WalError::CorruptDeadLetter { .. })
    ));
    // New dead letters do not reuse the id of the corrupt one.
    let key = append_one(&wal, record("b", PRIORITY_NORMAL));
    assert!(wal.dead_letter(key, reason(DeadKind::Rejected), 2).unwrap() > good_id + 1);
}

fn any_record() -> impl Strategy<Value = Record> {
    (
        (
            ".{0,12}",
            ".{0,12}",
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u8>(),
        ),
        (
            any::<u64>(),
            any::<u32>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
        ),
        (any::<u64>(), proptest::option::of(".{0,12}")),
        proptest::option::of(any_mqtt_props()),
    )
        .prop_map(
            |(
                (alert_id, topic, payload, priority),
                (received_at_ms, attempts, first_attempt_ms, last_attempt_ms),
                (next_attempt_ms, last_error),
                mqtt,
            )| Record {
                alert_id,
                topic,
                payload,
                priority,
                received_at_ms,
                attempts,
                first_attempt_ms,
                last_attempt_ms,
                next_attempt_ms,
                last_error,
                mqtt: mqtt.map(Box::new),
            },
        )
}

/// MQTT 5 properties, each field present or not (so every record version is written).
fn any_mqtt_props() -> impl Strategy<Value = crate::MqttProps> {
    (
        any::<Option<u32>>(),
        proptest::collection::vec((".{0,6}", ".{0,6}"), 0..3),
        proptest::option::of(".{0,12}"),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
    )
        .prop_map(
            |(expiry_secs, user, response_topic, correlation)| crate::MqttProps {
                expiry_secs,
                user,
                response_topic,
                correlation,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_record_round_trips(record in any_record()) {
        prop_assert_eq!(decode_record(&encode_record(&record).unwrap()).unwrap(), record);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_record(&bytes);
        let _ = decode_dead_letter(&bytes);
        let _ = decode_receipt(&bytes);
    }

    #[test]
    fn damaged_encoding_is_an_error_never_a_panic_or_a_wrong_record(
        record in any_record(),
        flip_at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let good = encode_record(&record).unwrap();
        let mut flipped = good.clone();
        let i = flip_at.index(flipped.len());
        flipped[i] ^= flip;
        prop_assert!(decode_record(&flipped).is_err(), "flip at {} went unnoticed", i);
        let cut_len = cut.index(good.len());
        prop_assert!(decode_record(&good[..cut_len]).is_err());
    }
}
