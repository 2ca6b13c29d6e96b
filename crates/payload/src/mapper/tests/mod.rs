//! Table-driven tests, one file per rule of the payload contract; the builders they share are
//! here.

use super::*;
use crate::config::{CoalesceConfig, FieldSpec, MappingConfig};
use crate::size::json_len;
use crate::{is_legal_key, Coalescer, Summary};
use serde_json::json;

mod blob_policy;
mod budget;
mod coercion;
mod compile;
mod fields;
mod identity;
mod keys;
mod parse;
mod summary;

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

/// `{"device_id":"SN-1029384756","alert_level":"warning","k0":0,"k1":1,...}` with `keys` keys.
fn many_keys(keys: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"device_id":"SN-1029384756","alert_level":"warning""#);
    for i in 0..keys - 2 {
        s.push_str(&format!(r#","k{i}":{}"#, i % 10));
    }
    s.push('}');
    s.into_bytes()
}

#[test]
fn mapper_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Mapper>();
}
