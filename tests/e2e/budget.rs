//! Disk budget (issue 4, point 8): at `store.max_bytes` ingest stops acking and the broker keeps
//! the alerts; nothing in the log is deleted to make room; once deliveries free space, ingest
//! resumes by itself and every alert the broker acked to the plant is delivered.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budget_holds_alerts_at_the_broker_and_loses_nothing_when_space_frees() {
    const N: usize = 4000;
    let sim = sim(Duration::from_secs(3600)).await;
    // Genesys is down: nothing drains, so the log only grows.
    sim.outage_for(Duration::from_secs(3600));
    let opts = AgentOptions {
        // ~300 B per stored alert: the budget holds roughly a third of the burst
        store_extra: "max_bytes = 409600\nsegment_bytes = 65536".into(),
        breaker_cooldown_ms: 300,
        breaker_failures: 3,
        ..AgentOptions::with_admin()
    };
    let s = Scenario::start_subscribed("plant-budget", sim, &opts).await;
    let (sim, agent, plant) = (&s.sim, &s.agent, &s.plant);
    publish_alerts(plant, 0, N, 20).await;

    // The broker accepted every publish from the plant (it queues for our session) ...
    assert_all_acked(plant, N, Duration::from_secs(20)).await;
    // ... but the agent holds back at its budget: it reports it, and has stored only part.
    let held = agent.wait_backpressure(Duration::from_secs(20)).await;
    let status = agent.status().expect("status");
    assert!(held, "backpressure reported: {status}\n{}", agent.logs());
    let pending = status["pending"].as_u64().unwrap_or(0);
    assert!(
        pending > 0 && (pending as usize) < N,
        "only part stored while over budget: {status}"
    );
    let acked_by_agent = status["counters"]["acked"].as_u64().unwrap_or(0);
    assert!(
        (acked_by_agent as usize) < N,
        "the agent must not ack beyond its budget: {status}"
    );
    assert_eq!(
        status["dead_letters"], 0,
        "nothing deleted or dead-lettered to make room"
    );

    // Genesys comes back: deliveries free space, ingest resumes by itself, nothing is lost.
    sim.set_faults(Faults::default());
    let acked = plant.acked_ids();
    assert_all_delivered(&acked, sim, agent, Duration::from_secs(60)).await;
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .status()
            .is_some_and(|s| s["counters"]["backpressure"] == false))
        .await,
        "backpressure cleared"
    );
    s.finish().await;
}
