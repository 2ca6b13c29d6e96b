//! The broker restarts mid-stream: the agent reconnects, resumes its persistent session and
//! loses nothing; acks of the old connection are never sent on the new one (I2).

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    const N: usize = 1500;
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = Agent::start(port, &sim, &AgentOptions::default());
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(port, "plant-restart", cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let publisher = tokio::spawn(async move {
        publish_alerts(&plant, 0, N, 2).await;
        plant
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    let plant = publisher.await.expect("publisher");

    assert!(
        wait_until(Duration::from_secs(40), || plant.acked_count() == N).await,
        "broker acked {} of {N}",
        plant.acked_count()
    );
    let acked = plant.acked_ids();
    let done = wait_until(Duration::from_secs(40), || missing(&acked, &sim).is_empty()).await;
    let lost = missing(&acked, &sim);
    assert!(
        done,
        "LOST {} acked alerts, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        agent.logs()
    );
    assert_eq!(agent.stop(), Some(0), "{}", agent.logs());
    cancel.cancel();
    let _ = task.await;
}
