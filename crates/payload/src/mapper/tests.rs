//! Table-driven tests, one group per rule of the payload contract.

use super::*;
use crate::config::{CoalesceConfig, FieldSpec};
use crate::{is_legal_key, Summary};
use serde_json::json;

const TOPIC: &str = "plant/berlin/alerts/p7";

/// The integration guide's example payload (section 2).
fn guide_payload() -> Value {
    json!({
        "device_id": "SN-1029384756",
        "sensor_type": "temperature_probe",
        "alert_level": "critical",
        "reading_value": 85.4,
        "threshold_exceeded": true,
        "timestamp_ms": 1678892340000u64
    })
}

fn mapper_with(edit: impl FnOnce(&mut MappingConfig)) -> Mapper {
    let mut cfg = MappingConfig::default();
    edit(&mut cfg);
    match Mapper::new(&cfg) {
        Ok(m) => m,
        Err(e) => panic!("config rejected: {e}"),
    }
}

fn mapper_from_toml(text: &str) -> Mapper {
    #[derive(serde::Deserialize)]
    struct File {
        mapping: MappingConfig,
    }
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => panic!("toml: {e}"),
    };
    match Mapper::new(&file.mapping) {
        Ok(m) => m,
        Err(e) => panic!("config rejected: {e}"),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn ok(m: &Mapper, payload: &[u8]) -> Mapped {
    match m.map(TOPIC, payload) {
        Ok(mapped) => {
            assert_eq!(mapped.serialized_len, json_len(&mapped.data));
            assert!(mapped.serialized_len <= m.max_data_bytes);
            let id = m.identify(TOPIC, payload);
            assert_eq!(
                (id.alert_id.as_str(), id.priority),
                (mapped.alert_id.as_str(), mapped.priority)
            );
            mapped
        }
        Err(r) => panic!("rejected: {r}"),
    }
}

fn err(m: &Mapper, payload: &[u8]) -> Rejection {
    match m.map(TOPIC, payload) {
        Ok(mapped) => panic!("accepted: {:?}", mapped.data),
        Err(r) => r,
    }
}

fn data(m: &Mapped) -> Value {
    Value::Object(m.data.clone())
}

#[test]
fn default_mapping_passes_the_guide_payload_through_in_camel_case() {
    let m = mapper_with(|_| {});
    let p = bytes(&guide_payload());
    let out = ok(&m, &p);
    let digest = digest_id(TOPIC, &p);
    assert_eq!(
        data(&out),
        json!({
            "alertId": digest,
            "deviceId": "SN-1029384756",
            "sensorType": "temperature_probe",
            "alertLevel": "critical",
            "readingValue": 85.4,
            "thresholdExceeded": true,
            "timestampMs": 1678892340000u64
        })
    );
    assert_eq!(out.priority, Priority::Critical);
    assert_eq!(out.notes, vec![]);
    assert_eq!(m.declared_keys(), None);
}

#[test]
fn explicit_mapping_from_toml_renames_reads_nested_paths_topic_and_constants() {
    let m = mapper_from_toml(
        r#"
        [mapping]
        topic_pattern = "plant/{site}/alerts/{device}"
        required = ["device_id", "alert_level"]

        [mapping.fields]
        deviceId = "device_id"
        alertLevel = "alert_level"
        readingValue = { from = "sensor.reading", type = "number" }
        site = "{site}"
        gatewayId = { value = "gw-01" }
        unit = { from = "sensor.unit", default = "C" }
        "#,
    );
    let payload = json!({
        "device_id": "p7",
        "alert_level": "warning",
        "sensor": {"reading": "85.4", "raw": 1023},
        "calibration_data": {"offset": 0.2}
    });
    let out = ok(&m, &bytes(&payload));
    assert_eq!(
        data(&out),
        json!({
            "alertId": digest_id(TOPIC, &bytes(&payload)),
            "alertLevel": "warning",
            "deviceId": "p7",
            "gatewayId": "gw-01",
            "readingValue": 85.4,
            "site": "berlin",
            "unit": "C",
            "extra": r#"{"sensor":{"raw":1023},"calibration_data":{"offset":0.2}}"#
        })
    );
    assert_eq!(
        out.notes,
        vec![Note::Coerced {
            field: "readingValue".into(),
            to: FieldType::Number
        }]
    );
    assert_eq!(
        m.declared_keys(),
        Some(
            [
                "alertId",
                "alertLevel",
                "deviceId",
                "gatewayId",
                "readingValue",
                "site",
                "unit",
                "extra"
            ]
            .map(String::from)
            .to_vec()
        )
    );
}

#[test]
fn unmapped_fields_go_to_the_catch_all_only_when_there_are_any() {
    let m = mapper_with(|c| {
        c.fields
            .insert("deviceId".into(), FieldSpec::from_source("device_id"));
    });
    let out = ok(&m, br#"{"device_id":"p7"}"#);
    assert_eq!(out.data.get("extra"), None);
    let out = ok(&m, br#"{"device_id":"p7","fw":"2.1"}"#);
    assert_eq!(out.data.get("extra"), Some(&json!(r#"{"fw":"2.1"}"#)));
}

#[test]
fn declared_types_coerce_or_reject_naming_the_field() {
    let m = |kind: FieldType| {
        mapper_with(|c| {
            c.fields.insert(
                "v".into(),
                FieldSpec {
                    kind,
                    ..FieldSpec::from_source("x")
                },
            );
        })
    };
    use FieldType::{Any as A, Boolean as B, Integer as I, Number as N, String as S};
    let table: &[(FieldType, Value, Option<Value>, bool)] = &[
        (A, json!({"k": 1}), Some(json!({"k": 1})), false),
        (S, json!("x"), Some(json!("x")), false),
        (S, json!(12.5), Some(json!("12.5")), true),
        (S, json!(true), Some(json!("true")), true),
        (S, json!([1]), None, false),
        (N, json!(3), Some(json!(3)), false),
        (N, json!(" 42 "), Some(json!(42)), true),
        (N, json!("-1.5e2"), Some(json!(-150.0)), true),
        (N, json!("abc"), None, false),
        (N, json!("NaN"), None, false),
        (N, json!(false), None, false),
        (I, json!(7), Some(json!(7)), false),
        (I, json!(7.0), Some(json!(7)), true),
        (I, json!(7.5), None, false),
        (I, json!("12"), Some(json!(12)), true),
        (
            I,
            json!("18446744073709551615"),
            Some(json!(18446744073709551615u64)),
            true,
        ),
        (I, json!("1e3"), Some(json!(1000)), true),
        (I, json!(1e300), None, false),
        (B, json!(true), Some(json!(true)), false),
        (B, json!("TRUE"), Some(json!(true)), true),
        (B, json!("0"), Some(json!(false)), true),
        (B, json!(1), Some(json!(true)), true),
        (B, json!(2), None, false),
        (B, json!("yes"), None, false),
    ];
    for (kind, input, want, coerced) in table {
        let mapper = m(*kind);
        let payload = bytes(&json!({ "x": input }));
        match (mapper.map(TOPIC, &payload), want) {
            (Ok(out), Some(want)) => {
                assert_eq!(out.data.get("v"), Some(want), "{kind} {input}");
                assert_eq!(
                    out.notes.contains(&Note::Coerced {
                        field: "v".into(),
                        to: *kind
                    }),
                    *coerced,
                    "{kind} {input}"
                );
            }
            (Err(r), None) => {
                assert_eq!(r.kind, RejectionKind::WrongType, "{kind} {input}");
                assert_eq!(r.field.as_deref(), Some("v"));
                assert!(
                    r.reason.starts_with("field `v` (from `x`): expected "),
                    "{}",
                    r.reason
                );
            }
            (got, want) => panic!("{kind} {input}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn required_fields_reject_with_the_field_named() {
    let m = mapper_with(|c| c.required = vec!["device_id".into(), "meta.alert_level".into()]);
    type Want = Option<(RejectionKind, &'static str, &'static str)>;
    let table: &[(Value, Want)] = &[
        (
            json!({"device_id": "p", "meta": {"alert_level": "info"}}),
            None,
        ),
        (
            json!({"device_id": 7, "meta": {"alert_level": false}}),
            None,
        ),
        (
            json!({"meta": {"alert_level": "info"}}),
            Some((
                RejectionKind::MissingField,
                "device_id",
                "required field `device_id` is missing",
            )),
        ),
        (
            json!({"device_id": null, "meta": {"alert_level": "info"}}),
            Some((
                RejectionKind::MissingField,
                "device_id",
                "required field `device_id` is missing",
            )),
        ),
        (
            json!({"device_id": "  ", "meta": {"alert_level": "info"}}),
            Some((
                RejectionKind::MissingField,
                "device_id",
                "required field `device_id` is empty",
            )),
        ),
        (
            json!({"device_id": {"id": 1}, "meta": {"alert_level": "info"}}),
            Some((
                RejectionKind::WrongType,
                "device_id",
                "required field `device_id` must be a string, number or boolean, got object",
            )),
        ),
        (
            json!({"device_id": "p", "meta": {}}),
            Some((
                RejectionKind::MissingField,
                "meta.alert_level",
                "required field `meta.alert_level` is missing",
            )),
        ),
    ];
    for (payload, want) in table {
        let got = m.map(TOPIC, &bytes(payload));
        match (got, want) {
            (Ok(_), None) => {}
            (Err(r), Some((kind, field, reason))) => {
                assert_eq!(
                    (r.kind, r.field.as_deref(), r.reason.as_str()),
                    (*kind, Some(*field), *reason)
                );
            }
            (got, _) => panic!("{payload}: {got:?}"),
        }
    }
}

#[test]
fn required_mapped_fields_and_topic_mismatch_are_explained() {
    let m = mapper_with(|c| {
        c.topic_pattern = "plant/{site}/alerts/+".into();
        c.fields.insert(
            "site".into(),
            FieldSpec {
                required: true,
                ..FieldSpec::from_source("{site}")
            },
        );
    });
    assert_eq!(ok(&m, b"{}").data.get("site"), Some(&json!("berlin")));
    let r = match m.map("elsewhere/x", b"{}") {
        Err(r) => r,
        Ok(o) => panic!("{:?}", o.data),
    };
    assert_eq!(r.kind, RejectionKind::MissingField);
    assert_eq!(
        r.reason,
        "required field `site` (from `{site}`) is missing (the topic does not match mapping.topic_pattern `plant/{site}/alerts/+`)"
    );
}

#[test]
fn optional_topic_fields_are_omitted_with_a_note_when_the_topic_does_not_match() {
    let m = mapper_with(|c| {
        c.topic_pattern = "plant/{site}/alerts/+".into();
        c.fields
            .insert("site".into(), FieldSpec::from_source("{site}"));
    });
    let out = match m.map("other", b"{}") {
        Ok(o) => o,
        Err(r) => panic!("{r}"),
    };
    assert_eq!(out.data.get("site"), None);
    assert_eq!(
        out.notes,
        vec![Note::TopicMismatch {
            pattern: "plant/{site}/alerts/+".into()
        }]
    );
}

#[test]
fn key_policies_shape_every_key_at_every_depth() {
    let payload =
        bytes(&json!({"Sensor-Type": "probe", "reading": {"rawValue": 1, "unit (si)": "K"}}));
    let table = [
        (
            KeyCase::CamelCase,
            json!({"sensorType": "probe", "reading": {"rawValue": 1, "unitSi": "K"}}),
        ),
        (
            KeyCase::SnakeCase,
            json!({"sensor_type": "probe", "reading": {"raw_value": 1, "unit_si": "K"}}),
        ),
        (
            KeyCase::Preserve,
            json!({"Sensor_Type": "probe", "reading": {"rawValue": 1, "unit_si": "K"}}),
        ),
    ];
    for (case, want) in table {
        let m = mapper_with(|c| c.key_case = case);
        let mut out = ok(&m, &payload);
        out.data.shift_remove(m.alert_id_key());
        assert_eq!(data(&out), want, "{case}");
    }
    assert_eq!(
        mapper_with(|c| c.key_case = KeyCase::SnakeCase).alert_id_key(),
        "alert_id"
    );
}

#[test]
fn run_time_key_collisions_are_dead_letters_never_overwrites() {
    let m = mapper_with(|_| {});
    let table: &[(Value, &str, &str)] = &[
        (
            json!({"device-id": "a", "device_id": "b"}),
            "device_id",
            "payload keys `device-id` and `device_id` both normalise to `deviceId`",
        ),
        (
            json!({"alertId": "x"}),
            "alertId",
            "payload key `alertId` normalises to `alertId`, which is reserved for the alert id; map the field explicitly under another name (or set mapping.alert_id_field to it)",
        ),
        (
            json!({"EXTRA": "x"}),
            "EXTRA",
            "payload key `EXTRA` normalises to `extra`, which is reserved for the catch-all field; map the field explicitly under another name (or set mapping.alert_id_field to it)",
        ),
        (
            json!({"s": {"a": {"x_y": 1, "xY": 2}}}),
            "s",
            "in `s.a`, keys `x_y` and `xY` both normalise to `xY`",
        ),
    ];
    for (payload, field, reason) in table {
        let r = err(&m, &bytes(payload));
        assert_eq!(
            (r.kind, r.field.as_deref(), r.reason.as_str()),
            (RejectionKind::KeyCollision, Some(*field), *reason)
        );
    }
}

#[test]
fn keys_that_cannot_be_made_legal_go_to_the_catch_all_in_pass_through() {
    let m = mapper_with(|_| {});
    let out = ok(&m, &bytes(&json!({"ok": 1, "2nd": 2, "n": {"€": 3}})));
    assert_eq!(out.data.get("ok"), Some(&json!(1)));
    assert_eq!(
        out.data.get("extra"),
        Some(&json!(r#"{"2nd":2,"n":{"€":3}}"#))
    );
    assert_eq!(
        out.notes,
        vec![
            Note::UnmappableKey {
                field: "2nd".into()
            },
            Note::UnmappableKey { field: "n".into() }
        ]
    );
}

#[test]
fn explicitly_mapped_values_with_illegal_nested_keys_are_rejected() {
    let m = mapper_with(|c| {
        c.fields
            .insert("meta".into(), FieldSpec::from_source("meta"));
    });
    let r = err(&m, &bytes(&json!({"meta": {"€": 1}})));
    assert_eq!(r.kind, RejectionKind::IllegalKey);
    assert_eq!(r.reason, "field `meta` (from `meta`): nested key `meta.€` cannot become a legal key under key_case = camelCase");
}

#[test]
fn config_errors_name_the_key() {
    type Edit = fn(&mut MappingConfig);
    let table: &[(Edit, &str)] = &[
        (
            |c| {
                c.fields.insert("readingValue".into(), FieldSpec::from_source("sensor..reading"));
            },
            "mapping.fields.readingValue: invalid source \"sensor..reading\": the path has an empty segment (leading, trailing or double '.')",
        ),
        (
            |c| {
                c.fields.insert("reading_value".into(), FieldSpec::from_source("a"));
                c.fields.insert("readingValue".into(), FieldSpec::from_source("b"));
            },
            "mapping.fields.reading_value: output key \"readingValue\" collides with mapping.fields.readingValue (both normalise to it)",
        ),
        (
            |c| {
                c.fields.insert("alert_id".into(), FieldSpec::from_source("a"));
            },
            "mapping.fields.alert_id: output key \"alertId\" collides with mapping.alert_id_key (both normalise to it)",
        ),
        (
            |c| c.catch_all_key = "alert-id".into(),
            "mapping.catch_all_key: output key \"alertId\" collides with mapping.alert_id_key (both normalise to it)",
        ),
        (
            |c| {
                c.fields.insert("9lives".into(), FieldSpec::from_source("a"));
            },
            "mapping.fields.9lives: \"9lives\" cannot become a legal output key under key_case = camelCase (it needs an ASCII letter first and at most 128 characters)",
        ),
        (
            |c| {
                c.fields.insert("site".into(), FieldSpec::from_source("{site}"));
            },
            "mapping.fields.site: {site} is not a placeholder of mapping.topic_pattern \"\"",
        ),
        (
            |c| {
                c.fields.insert("x".into(), FieldSpec::default());
            },
            "mapping.fields.x: set exactly one of `from` and `value`",
        ),
        (
            |c| {
                c.fields.insert(
                    "x".into(),
                    FieldSpec {
                        value: Some(json!("abc")),
                        kind: FieldType::Integer,
                        ..FieldSpec::default()
                    },
                );
            },
            "mapping.fields.x: value \"abc\" is string \"abc\", not a integer",
        ),
        (
            |c| c.topic_pattern = "a/#/b".into(),
            "mapping.topic_pattern: \"a/#/b\" has '#' before its last level",
        ),
        (
            |c| c.max_data_bytes = 100,
            "mapping.max_data_bytes: 100 is outside the allowed range 1024..=512000",
        ),
        (|c| c.max_depth = 0, "mapping.max_depth: 0 is outside the allowed range 1..=128"),
        (
            |c| c.max_keys = 0,
            "mapping.max_keys: 0 is outside the allowed range 1..=1000000",
        ),
        (
            |c| c.max_keys = 1_000_001,
            "mapping.max_keys: 1000001 is outside the allowed range 1..=1000000",
        ),
        (
            |c| c.required = vec!["{site}".into()],
            "mapping.required[0]: invalid source \"{site}\": must be a payload path, not a topic placeholder",
        ),
        (
            |c| c.critical_levels = vec![" ".into()],
            "mapping.critical_levels[0]: a level name cannot be empty",
        ),
        (
            |c| c.coalesce.enabled = true,
            "mapping.coalesce.site: {site} is not a placeholder of mapping.topic_pattern \"\"",
        ),
        (
            |c| {
                c.coalesce.enabled = true;
                c.coalesce.window_ms = 5;
            },
            "mapping.coalesce.window_ms: 5 is outside the allowed range 1000..=86400000",
        ),
    ];
    for (edit, want) in table {
        let mut cfg = MappingConfig::default();
        edit(&mut cfg);
        match Mapper::new(&cfg) {
            Ok(_) => panic!("accepted, wanted: {want}"),
            Err(e) => assert_eq!(e.to_string(), *want),
        }
    }
}

#[test]
fn unknown_config_keys_and_bad_field_tables_fail_to_deserialize() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // only the error matters
    struct File {
        mapping: MappingConfig,
    }
    for (text, needle) in [
        (
            "[mapping]\nkey_cse = \"camelCase\"",
            "unknown field `key_cse`",
        ),
        ("[mapping]\nkey_case = \"kebab\"", "unknown variant `kebab`"),
        (
            "[mapping.fields]\nx = { frm = \"a\" }",
            "unknown field `frm`",
        ),
        ("[mapping.fields]\nx = 5", "a source string"),
        ("[mapping.coalesce]\nwindow = 5", "unknown field `window`"),
    ] {
        match toml::from_str::<File>(text) {
            Ok(f) => panic!("{text}: accepted {f:?}"),
            Err(e) => assert!(e.to_string().contains(needle), "{text}: {e}"),
        }
    }
}

#[test]
fn config_round_trips_through_serde() {
    let mut cfg = MappingConfig::default();
    cfg.fields
        .insert("deviceId".into(), FieldSpec::from_source("device_id"));
    cfg.fields.insert(
        "gatewayId".into(),
        FieldSpec {
            value: Some(json!("gw")),
            ..FieldSpec::default()
        },
    );
    let text = match toml::to_string(&cfg) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let back: MappingConfig = match toml::from_str(&text) {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{text}"),
    };
    assert_eq!(back, cfg);
    let empty: MappingConfig = match toml::from_str("") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(empty, MappingConfig::default());
}

#[test]
fn catch_all_is_truncated_with_a_marker_to_fit_the_budget() {
    let m = mapper_with(|c| {
        c.max_data_bytes = 1024;
        c.fields
            .insert("deviceId".into(), FieldSpec::from_source("device_id"));
    });
    let log = "pump cycle ok; ".repeat(200);
    let payload = bytes(&json!({"device_id": "p7", "log": log}));
    let out = ok(&m, &payload);
    let extra = out
        .data
        .get("extra")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let full_len = serde_json::to_string(&json!({"log": log}))
        .map(|s| s.len())
        .unwrap_or(0);
    assert!(extra.starts_with(r#"{"log":"pump cycle ok; "#), "{extra}");
    assert!(
        extra.ends_with(&format!("...[truncated: {full_len} bytes in total]")),
        "{extra}"
    );
    assert!(
        out.serialized_len <= 1024 && out.serialized_len > 1000,
        "{}",
        out.serialized_len
    );
    assert!(
        matches!(out.notes.as_slice(), [Note::TruncatedExtra { orig_len, .. }] if *orig_len == full_len)
    );
}

#[test]
fn explicitly_mapped_fields_over_the_budget_are_rejected_naming_the_largest() {
    let m = mapper_with(|c| {
        c.max_data_bytes = 1024;
        c.fields
            .insert("deviceId".into(), FieldSpec::from_source("device_id"));
        c.fields.insert("log".into(), FieldSpec::from_source("log"));
    });
    let r = err(
        &m,
        &bytes(&json!({"device_id": "p7", "log": "x y ".repeat(400)})),
    );
    assert_eq!(r.kind, RejectionKind::OverBudget);
    assert_eq!(r.field.as_deref(), Some("log"));
    assert!(
        r.reason
            .contains("over mapping.max_data_bytes = 1024; largest field `log` is 1602 bytes"),
        "{}",
        r.reason
    );
}

#[test]
fn binary_blobs_are_stripped_with_a_marker_or_dead_lettered() {
    let snapshot = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ".repeat(100);
    let payload =
        bytes(&json!({"device_id": "p7", "camera": {"snapshot": snapshot, "id": "cam1"}}));

    let strip = mapper_with(|_| {});
    let out = ok(&strip, &payload);
    assert_eq!(
        out.data.get("camera"),
        Some(&json!({"snapshot": "[binary value stripped: 4400 bytes]", "id": "cam1"}))
    );
    assert_eq!(
        out.notes,
        vec![Note::StrippedBlob {
            field: "camera.snapshot".into(),
            len: 4400
        }]
    );

    // In the catch-all the payload path is reported.
    let explicit = mapper_with(|c| {
        c.fields
            .insert("deviceId".into(), FieldSpec::from_source("device_id"));
    });
    let out = ok(&explicit, &payload);
    assert_eq!(
        out.data.get("extra"),
        Some(&json!(
            r#"{"camera":{"snapshot":"[binary value stripped: 4400 bytes]","id":"cam1"}}"#
        ))
    );

    let dead = mapper_with(|c| c.blob_policy = BlobPolicy::DeadLetter);
    let r = err(&dead, &payload);
    assert_eq!(r.kind, RejectionKind::BinaryBlob);
    assert_eq!(
        r.reason,
        "field `camera.snapshot` holds a binary-looking value (4400 bytes) and mapping.blob_policy = \"dead_letter\""
    );
}

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
fn coalescing_fields_are_resolved_only_when_enabled() {
    let off = mapper_with(|c| c.topic_pattern = "plant/{site}/alerts/{device}".into());
    let out = ok(&off, br#"{"device_id":"p7"}"#);
    assert_eq!((out.site, out.device), (None, None));
    let on = mapper_with(|c| {
        c.topic_pattern = "plant/{site}/alerts/{device}".into();
        c.coalesce.enabled = true;
    });
    let out = ok(&on, br#"{"device_id":"p7"}"#);
    assert_eq!(
        (out.site.as_deref(), out.device.as_deref()),
        (Some("berlin"), Some("p7"))
    );
}

#[test]
fn summaries_map_to_a_budgeted_alert_under_the_key_policy() {
    let m = mapper_with(|c| {
        c.max_data_bytes = 1024;
        c.topic_pattern = "plant/{site}/alerts/{device}".into();
        c.coalesce = CoalesceConfig {
            enabled: true,
            min_count: 1,
            ..CoalesceConfig::default()
        };
    });
    // What the agent's coalescer collects for one window of 300 warnings from one site.
    let devices: Vec<String> = (0..300u64).map(|i| format!("pump-{i:03}")).collect();
    let site = ok(&m, &bytes(&json!({"device_id": "pump-000"}))).site;
    let summaries = [Summary {
        site: site.unwrap_or_default(),
        window_start_ms: 0,
        window_end_ms: 60_000,
        count: 300,
        delivered_individually: 0,
        first_ms: 0,
        last_ms: 299,
        worst_level: Some("warning".into()),
        critical: false,
        alert_ids: devices.iter().map(|d| format!("id-{d}")).collect(),
        devices,
    }];
    assert_eq!(summaries.len(), 1);
    let out = m.map_summary(&summaries[0]);
    assert!(out.serialized_len <= 1024 && out.serialized_len == json_len(&out.data));
    assert!(out.data.keys().all(|k| is_legal_key(k)));
    assert_eq!(out.data.get("summary"), Some(&json!(true)));
    assert_eq!(out.data.get("site"), Some(&json!("berlin")));
    assert_eq!(out.data.get("alertCount"), Some(&json!(300)));
    assert_eq!(out.data.get("deviceCount"), Some(&json!(300)));
    assert_eq!(out.data.get("alertLevel"), Some(&json!("warning")));
    let devices = out
        .data
        .get("devices")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        devices.starts_with("pump-000,pump-001,") && devices.ends_with("...[300 devices in total]"),
        "{devices}"
    );
    assert_eq!(out.notes, vec![Note::TruncatedDevices { total: 300 }]);
    assert_eq!(out.priority, Priority::Normal);
    // Stable id for the same summary.
    assert_eq!(m.map_summary(&summaries[0]).alert_id, out.alert_id);
}

#[test]
fn mapper_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Mapper>();
}

#[test]
fn pass_through_spills_the_largest_fields_into_the_catch_all_to_fit_the_budget() {
    let m = mapper_with(|c| c.max_data_bytes = 1024);
    let payload = bytes(&json!({
        "device_id": "p7",
        "alert_level": "minor",
        "log": "x y ".repeat(400),
        "trace": "a b ".repeat(100),
        "€": 1
    }));
    let out = ok(&m, &payload);
    assert_eq!(out.data.get("deviceId"), Some(&json!("p7")));
    assert_eq!(out.data.get("alertLevel"), Some(&json!("minor")));
    assert_eq!(out.data.get("log"), None);
    let extra = out
        .data
        .get("extra")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(extra.starts_with(r#"{"€":1,"log":"x y x y"#), "{extra}");
    assert!(extra.contains("...[truncated: "), "{extra}");
    assert!(out.serialized_len <= 1024);
    assert_eq!(
        &out.notes[..2],
        &[
            Note::UnmappableKey {
                field: "€".into()
            },
            Note::SpilledToCatchAll {
                field: "log".into()
            }
        ]
    );
    // Small payloads are untouched.
    let small = ok(&m, br#"{"device_id":"p7"}"#);
    assert_eq!(small.notes, vec![]);
}

/// `{"device_id":"SN-1029384756","alert_level":"warning","k0":0,"k1":1,...}` with `keys` keys.
fn many_keys(keys: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"device_id":"SN-1029384756","alert_level":"warning""#);
    for i in 0..keys - 2 {
        s.push_str(&format!(r#","k{i}":{}"#, i % 10));
    }
    s.push('}');
    s.into_bytes()
}

/// Issue 9: with thousands of small fields, pass-through spilled the largest field first, which
/// was `deviceId` (a 13-character string beats every `"k123":4`): the workflow got the bulk and
/// lost the device. Identifying fields (required, priority and device/site fields) now go last.
#[test]
fn pass_through_keeps_identifying_fields_and_spills_the_bulk() {
    let m = mapper_with(|c| c.max_keys = 10_000);
    let out = ok(&m, &many_keys(2_000));
    assert_eq!(out.data.get("deviceId"), Some(&json!("SN-1029384756")));
    assert_eq!(out.data.get("alertLevel"), Some(&json!("warning")));
    let spilled: Vec<&str> = out
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::SpilledToCatchAll { field } => Some(field.as_str()),
            _ => None,
        })
        .collect();
    assert!(spilled.iter().all(|f| f.starts_with('k')), "{spilled:?}");
    // Every payload field is in `data` or named as spilled (truncation is noted separately).
    let kept = out.data.keys().filter(|k| k.starts_with('k')).count();
    assert_eq!(kept + spilled.len(), 1_998);
    assert!(kept > 0, "fields that fit stay mapped");
    assert!(matches!(
        out.notes.last(),
        Some(Note::TruncatedExtra { .. })
    ));

    // Configured required fields are identifying too; when even they do not fit, they are
    // spilled last, largest first.
    let m = mapper_with(|c| {
        c.max_data_bytes = 1024;
        c.required = vec!["serial".into()];
    });
    let payload = bytes(&json!({
        "serial": "S-0001",
        "log": "x y ".repeat(300),
        "device_id": "d ".repeat(500),
        "note": "n ".repeat(100),
    }));
    let out = ok(&m, &payload);
    assert_eq!(out.data.get("serial"), Some(&json!("S-0001")));
    let order: Vec<&Note> = out
        .notes
        .iter()
        .filter(|n| matches!(n, Note::SpilledToCatchAll { .. }))
        .collect();
    assert_eq!(
        order,
        [
            &Note::SpilledToCatchAll {
                field: "log".into()
            },
            &Note::SpilledToCatchAll {
                field: "note".into()
            },
            &Note::SpilledToCatchAll {
                field: "deviceId".into()
            },
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

/// Issue 9: the same 100 000 keys with `max_keys` raised map in O(n log n) (this test would run
/// for hours in a debug build with the old quadratic spill), and the result is exact.
#[test]
fn a_payload_of_100_000_keys_maps_under_a_raised_max_keys_with_identifying_fields_kept() {
    let m = mapper_with(|c| {
        c.max_payload_bytes = 2 << 20;
        c.max_keys = 200_000;
    });
    let payload = many_keys(100_000);
    let out = ok(&m, &payload);
    assert_eq!(out.data.get("deviceId"), Some(&json!("SN-1029384756")));
    assert_eq!(out.data.get("alertLevel"), Some(&json!("warning")));
    let spilled = out
        .notes
        .iter()
        .filter(|n| matches!(n, Note::SpilledToCatchAll { .. }))
        .count();
    let kept = out.data.keys().filter(|k| k.starts_with('k')).count();
    assert_eq!(kept + spilled, 99_998);
    assert!(kept > 0);
    // The biggest fields went first: no kept `kN` is longer than a spilled one.
    let longest_kept = out
        .data
        .keys()
        .filter(|k| k.starts_with('k'))
        .map(String::len)
        .max();
    let shortest_spilled = out
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::SpilledToCatchAll { field } => Some(field.len()),
            _ => None,
        })
        .min();
    assert!(
        longest_kept <= shortest_spilled,
        "{longest_kept:?} {shortest_spilled:?}"
    );
    let Some(Note::TruncatedExtra { orig_len, .. }) = out.notes.last() else {
        panic!("last note: {:?}", out.notes.last());
    };
    let extra = out
        .data
        .get("extra")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(extra.ends_with(&format!("...[truncated: {orig_len} bytes in total]")));
    // The explicit mapping takes the same payload too: declared fields, the rest in `extra`.
    let m = mapper_from_toml(
        r#"
        [mapping]
        max_payload_bytes = 2097152
        max_keys = 200000

        [mapping.fields]
        deviceId = "device_id"
        alertLevel = "alert_level"
        "#,
    );
    let out = ok(&m, &payload);
    assert_eq!(out.data.get("deviceId"), Some(&json!("SN-1029384756")));
    assert!(matches!(
        out.notes.last(),
        Some(Note::TruncatedExtra { .. })
    ));
}

/// Many values under one long key: each note's path is clipped, so the notes stay linear in the
/// payload size (a 32 KiB key above 5 000 blobs used to be copied into every note).
#[test]
fn note_paths_are_clipped_so_notes_stay_linear_in_the_payload() {
    let m = mapper_with(|c| c.max_payload_bytes = 1 << 20);
    let key = "k".repeat(32 * 1024);
    let blob = "QUJD".repeat(64);
    let payload = format!(
        r#"{{"{key}":[{}],"n":{{"{key}":[{}]}}}}"#,
        vec![format!("\"{blob}\""); 100].join(","),
        vec!["1e400"; 100].join(","),
    );
    let out = ok(&m, payload.as_bytes());
    let mut blobs = 0;
    let mut huge = 0;
    for n in &out.notes {
        match n {
            Note::StrippedBlob { field, len } => {
                blobs += 1;
                assert_eq!(*len, blob.len());
                assert!(
                    field.len() <= 256 + '…'.len_utf8() && field.ends_with('…'),
                    "{}",
                    field.len()
                );
            }
            Note::HugeNumber { field } => {
                huge += 1;
                assert!(
                    field.len() <= 256 + '…'.len_utf8() && field.ends_with('…'),
                    "{}",
                    field.len()
                );
                assert!(field.starts_with("n.kkk"), "{field}");
            }
            _ => {}
        }
    }
    assert_eq!((blobs, huge), (100, 100));
}
