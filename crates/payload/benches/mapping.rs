//! Mapping throughput, single core: `cargo bench -p alertbridge-payload`.
//!
//! Plain `std::time` (no bench framework): each case runs for about one second after a warm-up and
//! prints alerts/s and ns/alert. Cases: a typical ~300-byte alert and a ~6 KB alert, each through
//! the default pass-through mapping and through an explicit mapping with a catch-all; then the
//! worst cases of issue 9 (many small keys): ~6 600 keys filling the default 64 KiB payload limit
//! (with `max_keys` raised, and at the default, where it is rejected), and 100 000 keys
//! (`max_payload_bytes` raised to 2 MiB so the size limit does not stop them: rejected at the
//! default `max_keys`, mapped with it raised).
//! A slow case runs single mappings until one second has passed (at least one), so a case that
//! takes minutes per mapping still prints one row.
//!
//! `cargo bench -p alertbridge-payload -- keys` runs only the cases whose name contains `keys`.

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

/// `{"device_id":"SN-1029384756","alert_level":"warning","k0":0,"k1":1,...}`: the two
/// identifying fields first, then small keys until the payload has `keys` keys in total, or until
/// one more key would make it larger than `max_bytes`.
fn many_keys(keys: usize, max_bytes: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"device_id":"SN-1029384756","alert_level":"warning""#);
    for i in 0..keys.saturating_sub(2) {
        let item = format!(r#","k{i}":{}"#, i % 10);
        if s.len() + item.len() + 1 > max_bytes {
            break;
        }
        s.push_str(&item);
    }
    s.push('}');
    s.into_bytes()
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

fn outcome(mapper: &Mapper, payload: &[u8]) -> String {
    match mapper.map(TOPIC, payload) {
        Ok(m) => format!("ok, {} notes", m.notes.len()),
        Err(r) => format!("rejected: {}", r.kind),
    }
}

/// Measures `mapper.map` on `payload` and prints one row. `expect_ok`: the case is meant to be a
/// successful mapping; if it is not, it would measure the wrong path, so it says so and stops.
fn run(filter: &str, name: &str, mapper: &Mapper, payload: &[u8], expect_ok: bool) {
    if !name.contains(filter) {
        return;
    }
    if expect_ok {
        if let Err(r) = mapper.map(TOPIC, payload) {
            println!("{name}: rejected: {r}");
            return;
        }
    }
    // One timed call decides between batches of 100 (fast cases) and single calls (slow ones).
    let first = Instant::now();
    let _ = black_box(mapper.map(black_box(TOPIC), black_box(payload)));
    let one = first.elapsed();
    let batch: u64 = if one < Duration::from_millis(10) {
        100
    } else {
        1
    };
    if one < Duration::from_millis(200) {
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(200) {
            let _ = black_box(mapper.map(black_box(TOPIC), black_box(payload)));
        }
    }
    let mut n: u64 = 0;
    let start = Instant::now();
    let elapsed = loop {
        for _ in 0..batch {
            let _ = black_box(mapper.map(black_box(TOPIC), black_box(payload)));
        }
        n += batch;
        let e = start.elapsed();
        if e >= Duration::from_secs(1) {
            break e;
        }
    };
    let ns = elapsed.as_nanos() as f64 / n as f64;
    println!(
        "{name:<32} {:>8} {:>12.1} {:>14.0}  {} ({n} runs)",
        payload.len(),
        1e9 / ns,
        ns,
        outcome(mapper, payload)
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
    // Cases whose name contains the first argument that is not a flag (cargo passes `--bench`).
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let (small, big) = (typical(), large());
    println!("mapping throughput, single thread");
    println!(
        "{:<32} {:>8} {:>12} {:>14}  outcome",
        "case", "bytes", "alerts/s", "ns/alert"
    );
    run(&filter, "typical, pass-through", &pass, &small, true);
    run(
        &filter,
        "typical, explicit + catch-all",
        &expl,
        &small,
        true,
    );
    run(&filter, "6 KB, pass-through", &pass, &big, true);
    run(&filter, "6 KB, explicit + catch-all", &expl, &big, true);

    // Worst cases: many small keys. At the default 64 KiB limit about 6 600 keys fit; they are
    // over the default max_keys (1 024), so it is raised for these rows to measure the mapping.
    let raised = |cfg: MappingConfig| match Mapper::new(&MappingConfig {
        max_keys: 200_000,
        ..cfg
    }) {
        Ok(m) => m,
        Err(e) => panic!("raised config: {e}"),
    };
    let pass_raised = raised(MappingConfig::default());
    let expl_raised = raised(explicit());
    let limit = MappingConfig::default().max_payload_bytes;
    let full = many_keys(usize::MAX, limit);
    run(
        &filter,
        "6 600 keys, pass-through",
        &pass_raised,
        &full,
        true,
    );
    run(
        &filter,
        "6 600 keys, explicit + catch-all",
        &expl_raised,
        &full,
        true,
    );
    run(&filter, "6 600 keys, default max_keys", &pass, &full, false);
    // 100 000 keys (about 1.1 MB), with the payload limit raised so that size does not stop it:
    // at the default max_keys it is rejected at key 1 025; with max_keys raised, fully mapped.
    let wide = MappingConfig {
        max_payload_bytes: 2 << 20,
        ..MappingConfig::default()
    };
    let wide_raised = raised(wide.clone());
    let wide = match Mapper::new(&wide) {
        Ok(m) => m,
        Err(e) => panic!("wide config: {e}"),
    };
    let huge = many_keys(100_000, usize::MAX);
    run(&filter, "100 000 keys, pass-through", &wide, &huge, false);
    run(
        &filter,
        "100 000 keys, max_keys raised",
        &wide_raised,
        &huge,
        true,
    );
    if !filter.is_empty() {
        return;
    }
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
