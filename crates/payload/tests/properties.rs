//! Property tests of the payload contract: any input yields either a valid body within budget with
//! only legal keys, or a rejection with a reason; `identify` agrees with `map`; normalisation is
//! legal and idempotent. (That coalescing loses no alert is a property of the agent's drain,
//! which coalesces.) Case counts are bounded so the suite stays fast.

use alertbridge_payload::{
    is_legal_key, normalize_key, BlobPolicy, CoalesceConfig, FieldSpec, FieldType, KeyCase, Mapper,
    MappingConfig,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const TOPIC_PATTERN: &str = "plant/{site}/alerts/{device}";

fn config_variants() -> Vec<MappingConfig> {
    let base = MappingConfig {
        topic_pattern: TOPIC_PATTERN.into(),
        ..MappingConfig::default()
    };
    let mut explicit = MappingConfig {
        max_data_bytes: 1024,
        required: vec!["device_id".into()],
        ..base.clone()
    };
    explicit
        .fields
        .insert("deviceId".into(), FieldSpec::from_source("device_id"));
    explicit
        .fields
        .insert("site".into(), FieldSpec::from_source("{site}"));
    explicit.fields.insert(
        "readingValue".into(),
        FieldSpec {
            kind: FieldType::Number,
            ..FieldSpec::from_source("sensor.reading")
        },
    );
    explicit
        .fields
        .insert("nested".into(), FieldSpec::from_source("sensor"));
    vec![
        base.clone(),
        MappingConfig {
            key_case: KeyCase::SnakeCase,
            max_data_bytes: 1024,
            blob_policy: BlobPolicy::DeadLetter,
            ..base.clone()
        },
        MappingConfig {
            key_case: KeyCase::Preserve,
            alert_id_field: "meta.id".into(),
            max_depth: 4,
            ..base.clone()
        },
        explicit,
        MappingConfig {
            coalesce: CoalesceConfig {
                enabled: true,
                ..CoalesceConfig::default()
            },
            ..base
        },
    ]
}

fn mappers() -> Vec<(Mapper, usize)> {
    config_variants()
        .into_iter()
        .map(|c| match Mapper::new(&c) {
            Ok(m) => (m, c.max_data_bytes),
            Err(e) => panic!("{e}"),
        })
        .collect()
}

fn all_keys_legal(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().all(|(k, v)| is_legal_key(k) && all_keys_legal(v)),
        Value::Array(a) => a.iter().all(all_keys_legal),
        _ => true,
    }
}

/// Checks the contract for one input on one mapper.
fn check(m: &Mapper, budget: usize, topic: &str, payload: &[u8]) -> Result<(), TestCaseError> {
    let id = m.identify(topic, payload);
    prop_assert!(!id.alert_id.is_empty());
    match m.map(topic, payload) {
        Ok(out) => {
            let data = Value::Object(out.data.clone());
            let real = serde_json::to_vec(&data)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            prop_assert_eq!(out.serialized_len, real);
            prop_assert!(real <= budget, "{} > {}", real, budget);
            prop_assert!(all_keys_legal(&data), "illegal key in {}", data);
            prop_assert_eq!(
                out.data.get(m.alert_id_key()),
                Some(&Value::String(out.alert_id.clone()))
            );
            prop_assert_eq!(&id.alert_id, &out.alert_id);
            prop_assert_eq!(id.priority, out.priority);
        }
        Err(r) => {
            prop_assert!(!r.reason.trim().is_empty());
            prop_assert!(!r.kind.as_str().is_empty());
        }
    }
    Ok(())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z_]{0,8}",
        2 => "[A-Za-z0-9 _.-]{0,12}",
        1 => "\\PC{0,6}",
        1 => prop::sample::select(vec![
            "alertId", "alert_id", "extra", "EXTRA", "device_id", "deviceId", "device-id", "sensor", "meta", "id",
            "alert_level", "severity",
        ])
        .prop_map(str::to_owned),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::String),
        prop::sample::select(vec!["critical", "CRITICAL", "warning", "info", ""])
            .prop_map(Value::from),
        "[A-Za-z0-9+/]{250,600}".prop_map(Value::String),
        (1usize..4000).prop_map(|n| Value::String("word ".repeat(n / 5))),
        prop::collection::vec(0u8..=255, 250..300).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn payload_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), value()), 0..10).prop_map(|kv| kv.into_iter().collect())
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,6}".prop_map(|s| format!("plant/{s}/alerts/pump-1")),
        "\\PC{0,20}",
    ]
}

/// Raw fragments spliced into valid payloads: the edge cases of rule 9.
const FRAGMENTS: &[&[u8]] = &[
    b"123456789012345678901234567890",
    b"1e999",
    b"-0",
    b"\"a\":1,\"a\":2,",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\"\\ud800\"",
    b"null",
    b"}",
    b",",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn json_objects_map_to_valid_bodies_or_reasoned_rejections(obj in payload_object(), topic in topic()) {
        let payload = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
        for (m, budget) in mappers() {
            check(&m, budget, &topic, &payload)?;
        }
    }

    #[test]
    fn spliced_payloads_map_to_valid_bodies_or_reasoned_rejections(
        obj in payload_object(),
        at in any::<prop::sample::Index>(),
        frag in prop::sample::select(FRAGMENTS),
    ) {
        let mut payload = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
        let pos = at.index(payload.len() + 1);
        payload.splice(pos..pos, frag.iter().copied());
        for (m, budget) in mappers() {
            check(&m, budget, "plant/berlin/alerts/p1", &payload)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        for (m, budget) in mappers() {
            check(&m, budget, "t", &payload)?;
        }
    }

    #[test]
    fn normalised_keys_are_legal_and_idempotent(key in "\\PC{0,24}") {
        for case in [KeyCase::CamelCase, KeyCase::SnakeCase, KeyCase::Preserve] {
            if let Some(k) = normalize_key(&key, case) {
                prop_assert!(is_legal_key(&k), "{:?} -> {:?}", key, k);
                prop_assert_eq!(normalize_key(&k, case), Some(k.clone()));
            }
        }
    }
}
