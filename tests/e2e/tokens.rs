//! Tokens expiring every few seconds: the agent refreshes before expiry, so no request is ever
//! answered 401 and no delivery fails or waits for a token.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_cause_no_failed_delivery_and_no_gap() {
    let s = Scenario::start_subscribed(
        "plant-tokens",
        sim(Duration::from_secs(3)).await,
        &AgentOptions::default(),
    )
    .await;
    let (sim, agent, plant) = (&s.sim, &s.agent, &s.plant);

    // a steady trickle across several token lifetimes
    for i in 0..40 {
        publish_alerts(plant, i * 10, 10, 0).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_all_acked(plant, 400, Duration::from_secs(20)).await;
    let acked = plant.acked_ids();
    assert_all_delivered(&acked, sim, agent, Duration::from_secs(30)).await;
    let stats = sim.stats();
    assert_eq!(
        stats.by_status.get(&401).copied().unwrap_or(0),
        0,
        "a token expired in use: {stats:?}"
    );
    assert!(stats.tokens_issued >= 3, "tokens were refreshed: {stats:?}");
    let dups: usize = accepted_counts(sim).values().map(|n| n - 1).sum();
    assert_eq!(dups, 0);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_replaced_and_the_alert_delivered() {
    let s = Scenario::start_subscribed(
        "plant-revoke",
        sim(Duration::from_secs(3600)).await,
        &AgentOptions::default(),
    )
    .await;
    let (sim, agent, plant) = (&s.sim, &s.agent, &s.plant);
    publish_alerts(plant, 0, 20, 0).await;
    assert!(
        wait_until(Duration::from_secs(20), || accepted_counts(sim).len() == 20).await,
        "{}",
        agent.logs()
    );
    sim.revoke_tokens();
    publish_alerts(plant, 20, 20, 0).await;
    assert_all_acked(plant, 40, Duration::from_secs(20)).await;
    let acked = plant.acked_ids();
    assert_all_delivered(&acked, sim, agent, Duration::from_secs(20)).await;
    assert!(
        sim.stats().by_status.get(&401).copied().unwrap_or(0) >= 1,
        "the revocation was seen"
    );
    s.finish().await;
}
