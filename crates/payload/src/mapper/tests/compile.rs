//! Config checks: every problem named by its key; serde round trips.

use super::*;

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
