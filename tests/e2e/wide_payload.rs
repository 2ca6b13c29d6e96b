//! Hostile input (issue 9, item 6): a payload with thousands of small keys cost seconds of CPU
//! per mapping (a quadratic spill into the catch-all), in ingest and again in the drain, while
//! nothing else moved. Above `mapping.max_keys` it is now a dead letter whose reason names the
//! count and the limit, and the alerts around it are delivered as usual.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_max_keys_is_dead_lettered_with_its_count_and_alerts_around_it_flow() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut rig = Scenario::start_subscribed("plant-wide", sim, &AgentOptions::default()).await;
    let before = rig.publish("before", 0..5, "major").await;
    // About 6 600 keys: as many as fit the default 64 KiB payload limit.
    let mut wide = String::from(r#"{"device_id":"SN-1029384756","alert_level":"major""#);
    let mut keys = 2;
    while wide.len() < 65_000 {
        wide.push_str(&format!(r#","k{keys}":0"#));
        keys += 1;
    }
    wide.push('}');
    rig.plant
        .publish_malformed(wide.as_bytes())
        .await
        .expect("publish");
    let after = rig.publish("after", 0..5, "major").await;
    rig.wait_acked(11, Duration::from_secs(15)).await;
    rig.wait_accepted(10, Duration::from_secs(15)).await;
    rig.stop().await;

    let got = accepted_counts(&rig.sim);
    for id in before.iter().chain(&after) {
        assert_eq!(got.get(id), Some(&1), "{id}: {got:?}");
    }
    let dead = rig.agent.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["kind"], "Malformed", "{:#}", dead[0]);
    assert_eq!(
        dead[0]["reason"],
        format!("payload has {keys} keys (objects at every depth), over mapping.max_keys = 1024"),
    );
    rig.finish().await;
}
