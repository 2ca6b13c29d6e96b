//! The normal case: every QoS 1 alert reaches Genesys exactly once, in the real request shape;
//! malformed payloads become dead letters with a reason.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_reaches_genesys_exactly_once() {
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = Agent::start(broker.port, &sim, &AgentOptions::default());
    let cancel = CancellationToken::new();
    let (mut plant, task) = Plant::connect(broker.port, "plant-spine", cancel.clone());

    // give the agent its subscription first (its session then queues what it misses anyway)
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_alerts(&plant, 0, 300, 10).await;
    plant
        .publish_malformed(b"TEMP=85;ALARM")
        .await
        .expect("publish");
    plant.publish_malformed(b"[1,2,3]").await.expect("publish");

    let all_acked = wait_until(Duration::from_secs(20), || plant.acked_count() == 302).await;
    assert!(all_acked, "broker acked {} of 302", plant.acked_count());
    let acked: std::collections::HashSet<String> = plant
        .acked_ids()
        .into_iter()
        .filter(|id| !id.starts_with("malformed-"))
        .collect();
    let delivered = wait_until(Duration::from_secs(30), || missing(&acked, &sim).is_empty()).await;
    assert!(
        delivered,
        "missing: {:?}\n{}",
        missing(&acked, &sim),
        agent.logs()
    );

    let counts = accepted_counts(&sim);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates in the normal case: {dups:?}");
    assert_eq!(counts.len(), 300);

    // the real request shape: flowId + inputData with the alert id and the device fields
    let a = sim.accepted().into_iter().next().expect("one accepted");
    assert_eq!(a.body["flowId"], FLOW);
    let input = &a.body["inputData"];
    assert!(input.is_object(), "{}", a.body);
    assert!(
        input.to_string().contains("SN-"),
        "device id mapped: {input}"
    );

    assert_eq!(
        agent.stop(),
        Some(0),
        "clean exit on SIGTERM\n{}",
        agent.logs()
    );
    let out = agent.cli(&["dead-letters", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "both malformed payloads dead-lettered: {lines:?}"
    );
    for l in &lines {
        assert_eq!(l["kind"], "Malformed");
        assert!(!l["reason"].as_str().unwrap_or("").is_empty());
    }
    let status = agent.cli(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(s["pending"], 0);
    assert_eq!(s["dead_letters"], 2);
    cancel.cancel();
    let _ = task.await;
}
