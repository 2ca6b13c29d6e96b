//! Required fields, pass-through and explicit mapping.

use super::*;

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
fn an_mqtt5_user_property_is_a_source_and_missing_it_names_the_property() {
    let m = mapper_from_toml(
        r#"
        [mapping]
        [mapping.fields]
        deviceId = "device_id"
        site = "$props.site"
        line = { from = "$props.line", required = true }
        "#,
    );
    let payload = bytes(&json!({"device_id": "p7", "alert_level": "critical"}));
    let props = vec![
        ("line".to_string(), "4".to_string()),
        ("site".to_string(), "north".to_string()),
        ("site".to_string(), "south".to_string()),
    ];
    let out = m
        .map_with_props(TOPIC, &payload, &props)
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(
        data(&out)["site"],
        "north",
        "the first value of a repeated name"
    );
    assert_eq!(data(&out)["line"], "4");
    // MQTT 3.1.1 (no properties): the required one is missing, and the rejection says why.
    let err = m.map(TOPIC, &payload).expect_err("line is required");
    assert!(
        err.reason.contains("$props.line") && err.reason.contains("MQTT 5 user property"),
        "{}",
        err.reason
    );
}
