//! The data budget: spilling, truncation and over-budget rejections.

use super::*;

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
