//! Genesys answers 503 for a while and then is down completely: nothing is lost, everything is
//! delivered after recovery, and the agent kept ingesting meanwhile.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_503_delivers_everything_after_recovery() {
    const N: usize = 600;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    sim.set_faults(Faults {
        error_rate_503: 0.5,
        ..Faults::default()
    });
    let mut agent = Agent::start(
        broker.port,
        &sim,
        &AgentOptions {
            breaker_failures: 10,
            breaker_cooldown_ms: 300,
            ..AgentOptions::default()
        },
    );
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-storm", cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    publish_alerts(&plant, 0, N / 2, 5).await;
    sim.outage_for(Duration::from_secs(3));
    publish_alerts(&plant, N / 2, N / 2, 5).await;
    // during the outage the broker still gets every ack: ingest does not depend on Genesys
    assert!(
        wait_until(Duration::from_secs(20), || plant.acked_count() == N).await,
        "acked {} of {N}",
        plant.acked_count()
    );
    let acked = plant.acked_ids();
    let done = wait_until(Duration::from_secs(45), || missing(&acked, &sim).is_empty()).await;
    let lost = missing(&acked, &sim);
    assert!(
        done,
        "LOST {}: {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        agent.logs()
    );
    let stats = sim.stats();
    assert!(
        stats.by_status.get(&503).copied().unwrap_or(0) > 0,
        "the storm really happened: {stats:?}"
    );
    assert_eq!(agent.stop(), Some(0));
    cancel.cancel();
    let _ = task.await;
}
