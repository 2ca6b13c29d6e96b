//! The payload contract holds for any input: `Mapper::map` never panics and yields either a body
//! within the budget with only legal keys (at every depth) whose `serialized_len` is exact, or a
//! rejection with a reason; `Mapper::identify` agrees with `map` on the alert id and lane.
//!
//! Input layout: byte 0 selects one of four mappings (pass-through camelCase; snake_case with a
//! 1 KiB budget and dead-lettered blobs; preserve with depth 4; explicit fields with a catch-all),
//! then the topic up to the first NUL byte, then the payload.
//! Run: `cd fuzz && cargo +nightly fuzz run map_payload -- -max_total_time=60`.
#![no_main]

use std::sync::OnceLock;

use alertbridge_payload::{
    is_legal_key, BlobPolicy, FieldSpec, FieldType, KeyCase, Mapper, MappingConfig,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn mappers() -> &'static [(Mapper, usize)] {
    static MAPPERS: OnceLock<Vec<(Mapper, usize)>> = OnceLock::new();
    MAPPERS.get_or_init(|| {
        let base = MappingConfig {
            topic_pattern: "plant/{site}/alerts/{device}".into(),
            ..MappingConfig::default()
        };
        let mut explicit = MappingConfig {
            max_data_bytes: 1024,
            required: vec!["device_id".into()],
            ..base.clone()
        };
        explicit.fields.insert("deviceId".into(), FieldSpec::from_source("device_id"));
        explicit.fields.insert("site".into(), FieldSpec::from_source("{site}"));
        explicit.fields.insert(
            "readingValue".into(),
            FieldSpec {
                kind: FieldType::Number,
                ..FieldSpec::from_source("sensor.reading")
            },
        );
        explicit.fields.insert("sensor".into(), FieldSpec::from_source("sensor"));
        let configs = vec![
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
                ..base
            },
            explicit,
        ];
        configs
            .into_iter()
            .map(|c| {
                let budget = c.max_data_bytes;
                (Mapper::new(&c).expect("fuzz mappings are valid"), budget)
            })
            .collect()
    })
}

fn all_keys_legal(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().all(|(k, v)| is_legal_key(k) && all_keys_legal(v)),
        Value::Array(a) => a.iter().all(all_keys_legal),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mappers = mappers();
    let (mapper, budget) = &mappers[usize::from(selector) % mappers.len()];
    let (topic, payload) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (String::from_utf8_lossy(&rest[..i]).into_owned(), &rest[i + 1..]),
        None => (String::new(), rest),
    };
    let id = mapper.identify(&topic, payload);
    assert!(!id.alert_id.is_empty());
    match mapper.map(&topic, payload) {
        Ok(out) => {
            let data = Value::Object(out.data.clone());
            let real = serde_json::to_vec(&data).expect("a Value serializes").len();
            assert_eq!(out.serialized_len, real);
            assert!(real <= *budget, "{real} > {budget}");
            assert!(all_keys_legal(&data), "illegal key in {data}");
            assert_eq!(out.alert_id, id.alert_id);
            assert_eq!(out.priority, id.priority);
        }
        Err(r) => assert!(!r.reason.trim().is_empty()),
    }
});
