//! Key policies at every depth; collisions and illegal keys.

use super::*;

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
