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
    let (plant, task) = Plant::connect_with(port, "plant-restart", true, cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let publisher = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(11);
        for i in 0..N {
            let (t, b, id) = alert(i, &mut rng);
            // one at a time, so which publishes the broker acked is known exactly
            plant
                .publish_confirmed(t, b, id, Duration::from_secs(2))
                .await
                .expect("publish queued");
        }
        plant
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    let plant = publisher.await.expect("publisher");

    // The publisher is a plain rumqttc client: a publish in flight when the broker went down may
    // never be acked to it, and then the guarantee does not cover it. What the broker acked is
    // the set that must arrive.
    wait_until(Duration::from_secs(20), || plant.acked_count() == N).await;
    assert!(
        plant.acked_count() >= N * 9 / 10,
        "broker acked only {} of {N}",
        plant.acked_count()
    );
    let acked = plant.acked_ids();
    // the broker really kept our session across its restarts (else this test proves little)
    assert_logged(
        &agent,
        "session_present=true",
        Duration::from_secs(10),
        "agent never resumed its session",
    )
    .await;
    assert_all_delivered(&acked, &sim, &agent, Duration::from_secs(40)).await;
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
}
