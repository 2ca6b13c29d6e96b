//! Payloads the reader refuses or accepts with defined results.

use super::*;

#[test]
fn malformed_and_extreme_payloads_have_defined_outcomes() {
    let m = mapper_with(|c| c.max_payload_bytes = 4096);
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
    let big = format!("{{\"a\":\"{}\"}}", "x ".repeat(3000));
    // Depth 1 is the object, 2 the array at `a`, 33 the array at `a` + 31 × `.0`.
    let too_deep = format!(
        "payload nests deeper than mapping.max_depth = 32 at `a{}`",
        ".0".repeat(31)
    );
    let table: &[(&[u8], RejectionKind, &str)] = &[
        (
            b"{\"a\":\"\xc3\x28\"}",
            RejectionKind::NotUtf8,
            "payload is not valid UTF-8 (invalid byte at offset 6)",
        ),
        (
            b"{\"a\":1",
            RejectionKind::NotJson,
            "payload is not JSON: expected ',' or '}' in an object at byte 6",
        ),
        (
            b"",
            RejectionKind::NotJson,
            "payload is not JSON: unexpected end of input at byte 0",
        ),
        (
            b"[{\"a\":1}]",
            RejectionKind::NotObject,
            "payload is a JSON array, not an object",
        ),
        (
            b"\"alert\"",
            RejectionKind::NotObject,
            "payload is a JSON string, not an object",
        ),
        (
            b"null",
            RejectionKind::NotObject,
            "payload is a JSON null, not an object",
        ),
        (deep.as_bytes(), RejectionKind::TooDeep, &too_deep),
        (
            b"{\"a\":1,\"a\":2}",
            RejectionKind::DuplicateKey,
            "payload has the key `a` twice; refusing to guess which value is meant",
        ),
        (
            big.as_bytes(),
            RejectionKind::TooLarge,
            "payload is 6008 bytes, over mapping.max_payload_bytes = 4096",
        ),
    ];
    for (payload, kind, reason) in table {
        let r = err(&m, payload);
        assert_eq!((r.kind, r.reason.as_str()), (*kind, *reason));
        // identify still works and gives the digest.
        assert_eq!(
            m.identify(TOPIC, payload).alert_id,
            digest_id(TOPIC, payload)
        );
    }
}

#[test]
fn huge_numbers_and_byte_order_marks_are_accepted_with_defined_results() {
    let m = mapper_with(|_| {});
    let out = ok(
        &m,
        b"\xef\xbb\xbf{\"serial\":123456789012345678901234567890,\"r\":1e999,\"ok\":1.5}",
    );
    assert_eq!(
        out.data.get("serial"),
        Some(&json!("123456789012345678901234567890"))
    );
    assert_eq!(out.data.get("r"), Some(&json!("1e999")));
    assert_eq!(out.data.get("ok"), Some(&json!(1.5)));
    assert_eq!(
        out.notes,
        vec![
            Note::HugeNumber {
                field: "serial".into()
            },
            Note::HugeNumber { field: "r".into() }
        ]
    );
}

#[test]
fn payloads_over_max_keys_are_rejected_naming_count_and_limit() {
    // (payload, max_keys, keys counted or None if accepted). Keys count at every depth,
    // including objects inside arrays; array elements and string contents are not keys.
    let table: &[(&str, usize, Option<usize>)] = &[
        (r#"{}"#, 1, None),
        (r#"{"a":1}"#, 1, None),
        (r#"{"a":1,"b":2}"#, 1, Some(2)),
        (r#"{"a":{"b":{"c":1}}}"#, 3, None),
        (r#"{"a":{"b":{"c":1}}}"#, 2, Some(3)),
        (r#"{"a":[{"b":1},{"b":2},{"c":3}]}"#, 3, Some(4)),
        (r#"{"a":[1,2,3,4,5,6,7,8,9]}"#, 1, None),
        (r#"{"a":"k\":1,\"j\":2","b":{ "c" : 1 }}"#, 2, Some(3)),
        (r#"{"a":1,"b":2,"c":"x\":y","d":{"e" :"\\"}}"#, 1, Some(5)),
        (r#"{"a":1,"b":2,"c":3,"a":4}"#, 2, Some(4)),
    ];
    for (payload, max_keys, want) in table {
        let m = mapper_with(|c| c.max_keys = *max_keys);
        match (want, m.map(TOPIC, payload.as_bytes())) {
            (None, Ok(_)) => {}
            (Some(count), Err(r)) => {
                assert_eq!(r.kind, RejectionKind::TooManyKeys, "{payload}: {r}");
                assert_eq!(
                    r.reason,
                    format!(
                        "payload has {count} keys (objects at every depth), over mapping.max_keys = {max_keys}"
                    ),
                    "{payload}"
                );
                assert_eq!(r.kind.as_str(), "too_many_keys");
            }
            (want, got) => {
                panic!("{payload} with max_keys {max_keys}: wanted {want:?}, got {got:?}")
            }
        }
    }
}

/// Issue 9: a payload with 100 000 keys cost minutes of CPU in ingest and again in the drain.
/// At the default `max_keys` it is now rejected (a dead letter) with the count and the limit.
#[test]
fn a_payload_of_100_000_keys_is_rejected_with_its_count_and_the_limit() {
    let m = mapper_with(|c| c.max_payload_bytes = 2 << 20);
    let payload = many_keys(100_000);
    let r = err(&m, &payload);
    assert_eq!(r.kind, RejectionKind::TooManyKeys);
    assert_eq!(
        r.reason,
        "payload has 100000 keys (objects at every depth), over mapping.max_keys = 1024"
    );
    // Ingest identifies a rejected payload too: the digest, without mapping it.
    assert_eq!(
        m.identify(TOPIC, &payload).alert_id,
        digest_id(TOPIC, &payload)
    );
}
