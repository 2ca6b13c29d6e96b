//! Mapping throughput, single core: `cargo bench -p alertbridge-payload`.
//!
//! Plain `std::time` (no bench framework): each case runs for about one second after a warm-up and
//! prints alerts/s and ns/alert. Cases: a typical ~300-byte alert and a ~6 KB alert, each through
//! the default pass-through mapping and through an explicit mapping with a catch-all.

use std::hint::black_box;
use std::time::{Duration, Instant};

use alertbridge_payload::{FieldSpec, FieldType, Mapper, MappingConfig};
use serde_json::{json, Value};

const TOPIC: &str = "plant/berlin/alerts/pump-7";

fn typical() -> Vec<u8> {
    let v = json!({
        "alert_id": "7f3c2a9e-1b4d-4c8e-9f00-5a6b7c8d9e0f",
        "device_id": "SN-1029384756",
        "sensor_type": "temperature_probe",
        "alert_level": "critical",
        "reading_value": 85.4,
        "threshold": 80.0,
        "threshold_exceeded": true,
        "timestamp_ms": 1678892340000u64,
        "firmware": "2.14.1",
        "sensor": {"reading": 85.4, "unit": "C", "raw": 3172},
        "location": "hall 3, line B"
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn large() -> Vec<u8> {
    let mut v = match serde_json::from_slice::<Value>(&typical()) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let history: Vec<Value> = (0..140)
        .map(|i| json!({"t": 1678892340000u64 + i * 1000, "v": 80.0 + (i as f64) * 0.05, "ok": i % 7 != 0}))
        .collect();
    v.insert("history".into(), Value::Array(history));
    v.insert(
        "note".into(),
        json!("temperature rising steadily over the last minutes on line B"),
    );
    serde_json::to_vec(&Value::Object(v)).unwrap_or_default()
}

fn explicit() -> MappingConfig {
    let mut cfg = MappingConfig {
        topic_pattern: "plant/{site}/alerts/{device}".into(),
        required: vec!["device_id".into(), "alert_level".into()],
        ..MappingConfig::default()
    };
    for (key, src) in [
        ("deviceId", "device_id"),
        ("sensorType", "sensor_type"),
        ("alertLevel", "alert_level"),
        ("thresholdExceeded", "threshold_exceeded"),
        ("timestampMs", "timestamp_ms"),
        ("site", "{site}"),
    ] {
        cfg.fields.insert(key.into(), FieldSpec::from_source(src));
    }
    cfg.fields.insert(
        "readingValue".into(),
        FieldSpec {
            kind: FieldType::Number,
            ..FieldSpec::from_source("sensor.reading")
        },
    );
    cfg
}

fn run(name: &str, mapper: &Mapper, payload: &[u8]) {
    // Fail loudly if a bench case is not a successful mapping: it would measure the wrong path.
    if let Err(r) = mapper.map(TOPIC, payload) {
        println!("{name}: rejected: {r}");
        return;
    }
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        let _ = black_box(mapper.map(black_box(TOPIC), black_box(payload)));
    }
    let mut n: u64 = 0;
    let start = Instant::now();
    let elapsed = loop {
        for _ in 0..100 {
            let _ = black_box(mapper.map(black_box(TOPIC), black_box(payload)));
        }
        n += 100;
        let e = start.elapsed();
        if e >= Duration::from_secs(1) {
            break e;
        }
    };
    let ns = elapsed.as_nanos() as f64 / n as f64;
    println!(
        "{name:<32} {:>8} {:>12.0} {:>10.0}",
        payload.len(),
        1e9 / ns,
        ns
    );
}

fn main() {
    let pass = match Mapper::new(&MappingConfig::default()) {
        Ok(m) => m,
        Err(e) => panic!("default config: {e}"),
    };
    let expl = match Mapper::new(&explicit()) {
        Ok(m) => m,
        Err(e) => panic!("explicit config: {e}"),
    };
    let (small, big) = (typical(), large());
    println!("mapping throughput, single thread");
    println!(
        "{:<32} {:>8} {:>12} {:>10}",
        "case", "bytes", "alerts/s", "ns/alert"
    );
    run("typical, pass-through", &pass, &small);
    run("typical, explicit + catch-all", &expl, &small);
    run("6 KB, pass-through", &pass, &big);
    run("6 KB, explicit + catch-all", &expl, &big);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_millis(500) {
        let _ = black_box(serde_json::from_slice::<Value>(black_box(&small)));
        n += 1;
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{:<32} {:>8} {:>12.0} {:>10.0}",
        "(baseline: serde_json parse)",
        small.len(),
        1e9 / ns,
        ns
    );
    let id = Instant::now();
    let mut n = 0u64;
    while id.elapsed() < Duration::from_millis(500) {
        black_box(pass.identify(black_box(TOPIC), black_box(&small)));
        n += 1;
    }
    let ns = id.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{:<32} {:>8} {:>12.0} {:>10.0}",
        "identify, typical",
        small.len(),
        1e9 / ns,
        ns
    );
}
