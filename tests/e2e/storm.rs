//! Genesys answers 503 for a while and then is down completely: nothing is lost, everything is
//! delivered after recovery, and the agent kept ingesting meanwhile.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_503_delivers_everything_after_recovery() {
    const N: usize = 600;
    let sim = sim(Duration::from_secs(3600)).await;
    sim.set_faults(Faults {
        error_rate_503: 0.5,
        ..Faults::default()
    });
    let opts = AgentOptions {
        breaker_failures: 10,
        breaker_cooldown_ms: 300,
        ..AgentOptions::default()
    };
    let s = Scenario::start_subscribed("plant-storm", sim, &opts).await;
    let (sim, agent, plant) = (&s.sim, &s.agent, &s.plant);

    publish_alerts(plant, 0, N / 2, 5).await;
    sim.outage_for(Duration::from_secs(3));
    publish_alerts(plant, N / 2, N / 2, 5).await;
    // during the outage the broker still gets every ack: ingest does not depend on Genesys
    assert_all_acked(plant, N, Duration::from_secs(20)).await;
    let acked = plant.acked_ids();
    assert_all_delivered(&acked, sim, agent, Duration::from_secs(45)).await;
    let stats = sim.stats();
    assert!(
        stats.by_status.get(&503).copied().unwrap_or(0) > 0,
        "the storm really happened: {stats:?}"
    );
    s.finish().await;
}
