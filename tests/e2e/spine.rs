//! The normal case: every QoS 1 alert reaches Genesys exactly once, in the real request shape;
//! malformed payloads become dead letters with a reason.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_reaches_genesys_exactly_once() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut s = Scenario::start_subscribed("plant-spine", sim, &AgentOptions::default()).await;
    publish_alerts(&s.plant, 0, 300, 10).await;
    s.plant
        .publish_malformed(b"TEMP=85;ALARM")
        .await
        .expect("publish");
    s.plant
        .publish_malformed(b"[1,2,3]")
        .await
        .expect("publish");

    assert_all_acked(&s.plant, 302, Duration::from_secs(20)).await;
    let acked = s.acked_alert_ids();
    assert_all_delivered(&acked, &s.sim, &s.agent, Duration::from_secs(30)).await;

    let counts = accepted_counts(&s.sim);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates in the normal case: {dups:?}");
    assert_eq!(counts.len(), 300);

    // the real request shape: flowId + inputData with the alert id and the device fields
    let a = s.sim.accepted().into_iter().next().expect("one accepted");
    assert_eq!(a.body["flowId"], FLOW);
    let input = &a.body["inputData"];
    assert!(input.is_object(), "{}", a.body);
    assert!(
        input.to_string().contains("SN-"),
        "device id mapped: {input}"
    );

    // clean exit on SIGTERM
    s.stop().await;
    let out = s.agent.cli(&["dead-letters", "--json"]);
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
    let status = s.agent.cli(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(st["pending"], 0);
    assert_eq!(st["dead_letters"], 2);

    // Issue 9, point 8 (I6): the client secret is in no log line, no status output and no file
    // of the store (segments, checkpoint, dead letters, receipts).
    let secret = std::fs::read_to_string(s.agent.secret_path()).expect("secret");
    let secret = secret.trim();
    assert!(
        !s.agent.logs().contains(secret),
        "the secret is in a log line"
    );
    assert!(!String::from_utf8_lossy(&status.stdout).contains(secret));
    let mut files = vec![s.agent.dir.path().join("wal")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .expect("list")
                    .map(|e| e.expect("entry").path()),
            );
        } else {
            let bytes = std::fs::read(&path).expect("read store file");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret is in {}",
                path.display()
            );
        }
    }
    s.finish().await;
}
