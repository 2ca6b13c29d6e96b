//! Alert id and priority lane.

use super::*;

#[test]
fn alert_id_comes_from_the_configured_field_or_a_digest() {
    let nested = mapper_with(|c| c.alert_id_field = "meta.id".into());
    let digest_only = mapper_with(|c| c.alert_id_field = String::new());
    let default = mapper_with(|_| {});
    let long = "x".repeat(129);
    let table: &[(&Mapper, Value, Option<&str>)] = &[
        (&default, json!({"alert_id": "A-1", "x": 1}), Some("A-1")),
        (&default, json!({"alert_id": 42}), Some("42")),
        (
            &nested,
            json!({"meta": {"id": "N-9", "fw": 2}}),
            Some("N-9"),
        ),
        (&digest_only, json!({"id": "A-1"}), None),
        (&default, json!({"x": 1}), None),
        (&default, json!({"alert_id": null}), None),
    ];
    for (m, payload, want) in table {
        let p = bytes(payload);
        let out = ok(m, &p);
        let want = want.map_or_else(|| digest_id(TOPIC, &p), str::to_owned);
        assert_eq!(out.alert_id, want, "{payload}");
        assert_eq!(out.data.get(m.alert_id_key()), Some(&json!(want)));
    }
    // With no alert id field, a payload `alert_id` would claim the alert id key: a collision.
    assert_eq!(
        err(&digest_only, br#"{"alert_id":"A-1"}"#).kind,
        RejectionKind::KeyCollision
    );

    // A huge number is kept as an exact string by the reader, which is a usable id.
    let p = br#"{"alert_id":123456789012345678901234567890}"#;
    assert_eq!(
        default.identify(TOPIC, p).alert_id,
        "123456789012345678901234567890"
    );

    // The id field is consumed when used: not duplicated in data or the catch-all.
    let out = ok(&nested, &bytes(&json!({"meta": {"id": "N-9", "fw": 2}})));
    assert_eq!(data(&out), json!({"alertId": "N-9", "meta": {"fw": 2}}));

    // Unusable ids fall back to the digest and stay visible in the catch-all.
    for bad in [
        json!({"alert_id": {"x": 1}}),
        json!({"alert_id": long}),
        json!({"alert_id": "a\u{7}b"}),
    ] {
        let p = bytes(&bad);
        let out = ok(&default, &p);
        assert_eq!(out.alert_id, digest_id(TOPIC, &p));
        assert!(
            matches!(out.notes.as_slice(), [Note::AlertIdDigest { .. }]),
            "{:?}",
            out.notes
        );
        let extra = out
            .data
            .get("extra")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(extra.starts_with(r#"{"alert_id":"#), "{extra}");
    }
}

#[test]
fn digest_is_sha256_of_topic_nul_payload() {
    let m = mapper_with(|_| {});
    assert_eq!(
        m.identify("plant/berlin/alerts/p7", br#"{"device_id":"p7"}"#)
            .alert_id,
        "a53f844a0f635d8731b9aa811414c009"
    );
    // Also for payloads map() rejects.
    assert_eq!(
        m.identify("t", b"[1,2]").alert_id,
        "8ceb7e518c06844e55ef56ef881ed759"
    );
    assert_eq!(
        m.identify("t", b"\xff").alert_id,
        "cc96146c067f35f6f63df178bd02811b"
    );
}

/// The digest is dedup identity and is persisted with every record: these values must never
/// change, or redeliveries of alerts stored before an upgrade would be stored again.
#[test]
fn digest_id_is_pinned_to_sha256_of_topic_nul_payload() {
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "plant/berlin/alerts/p7",
            br#"{"device_id":"p7"}"#,
            "a53f844a0f635d8731b9aa811414c009",
        ),
        ("t", b"[1,2]", "8ceb7e518c06844e55ef56ef881ed759"),
        ("t", b"\xff", "cc96146c067f35f6f63df178bd02811b"),
        ("", b"", "6e340b9cffb37a989ca544e6bb780a2c"),
    ];
    for (topic, payload, want) in cases {
        assert_eq!(digest_id(topic, payload), want, "{topic:?} {payload:?}");
    }
    // The NUL separator keeps the topic/payload boundary: moving a byte across it is another id.
    assert_ne!(digest_id("ab", b"c"), digest_id("a", b"bc"));
}

#[test]
fn priority_lane_follows_the_first_present_level_field() {
    let m = mapper_with(|c| c.critical_levels = vec!["critical".into(), "P1".into()]);
    let table = [
        (
            json!({"alert_level": "critical"}),
            Priority::Critical,
            Some("critical"),
        ),
        (
            json!({"alert_level": "CRITICAL"}),
            Priority::Critical,
            Some("CRITICAL"),
        ),
        (
            json!({"alert_level": " p1 "}),
            Priority::Critical,
            Some("p1"),
        ),
        (
            json!({"alert_level": "warning", "severity": "critical"}),
            Priority::Normal,
            Some("warning"),
        ),
        (
            json!({"alert_level": null, "severity": "critical"}),
            Priority::Critical,
            Some("critical"),
        ),
        (
            json!({"alert_level": "", "severity": "critical"}),
            Priority::Critical,
            Some("critical"),
        ),
        (json!({"severity": 3}), Priority::Normal, Some("3")),
        (
            json!({"alert_level": {"x": 1}, "severity": "critical"}),
            Priority::Normal,
            None,
        ),
        (json!({}), Priority::Normal, None),
    ];
    for (payload, priority, level) in table {
        let out = ok(&m, &bytes(&payload));
        assert_eq!(
            (out.priority, out.level.as_deref()),
            (priority, level),
            "{payload}"
        );
    }
    assert_eq!(m.identify(TOPIC, b"not json").priority, Priority::Normal);
}
