//! Storm summaries and the coalescing fields.

use super::*;

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
    let mut coalescer = Coalescer::new(&CoalesceConfig {
        enabled: true,
        min_count: 1,
        ..CoalesceConfig::default()
    });
    for i in 0..300u64 {
        let p = bytes(&json!({"device_id": format!("pump-{i:03}"), "alert_level": "warning"}));
        let id = m.identify(TOPIC, &p);
        let mapped = ok(&m, &p);
        coalescer.offer(i, &id, &mapped, mapped.site.as_deref());
    }
    let summaries: Vec<Summary> = coalescer.flush_all();
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
