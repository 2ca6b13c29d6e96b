//! Tokens expiring every few seconds: the agent refreshes before expiry, so no request is ever
//! answered 401 and no delivery fails or waits for a token.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_cause_no_failed_delivery_and_no_gap() {
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3)).await;
    let mut agent = Agent::start(broker.port, &sim, &AgentOptions::default());
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-tokens", cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // a steady trickle across several token lifetimes
    for i in 0..40 {
        publish_alerts(&plant, i * 10, 10, 0).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(wait_until(Duration::from_secs(20), || plant.acked_count() == 400).await);
    let acked = plant.acked_ids();
    assert!(
        wait_until(Duration::from_secs(30), || missing(&acked, &sim).is_empty()).await,
        "{}",
        agent.logs()
    );
    let stats = sim.stats();
    assert_eq!(
        stats.by_status.get(&401).copied().unwrap_or(0),
        0,
        "a token expired in use: {stats:?}"
    );
    assert!(stats.tokens_issued >= 3, "tokens were refreshed: {stats:?}");
    let dups: usize = accepted_counts(&sim).values().map(|n| n - 1).sum();
    assert_eq!(dups, 0);
    assert_eq!(agent.stop(), Some(0));
    cancel.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_replaced_and_the_alert_delivered() {
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = Agent::start(broker.port, &sim, &AgentOptions::default());
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-revoke", cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_alerts(&plant, 0, 20, 0).await;
    assert!(
        wait_until(Duration::from_secs(20), || accepted_counts(&sim).len()
            == 20)
        .await,
        "{}",
        agent.logs()
    );
    sim.revoke_tokens();
    publish_alerts(&plant, 20, 20, 0).await;
    assert!(wait_until(Duration::from_secs(20), || plant.acked_count() == 40).await);
    let acked = plant.acked_ids();
    assert!(
        wait_until(Duration::from_secs(20), || missing(&acked, &sim).is_empty()).await,
        "{}",
        agent.logs()
    );
    assert!(
        sim.stats().by_status.get(&401).copied().unwrap_or(0) >= 1,
        "the revocation was seen"
    );
    assert_eq!(agent.stop(), Some(0));
    cancel.cancel();
    let _ = task.await;
}
