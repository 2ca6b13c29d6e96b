//! The broker restarts mid-stream: the agent reconnects, resumes its persistent session and
//! loses nothing; acks of the old connection are never sent on the new one (I2). A broker that
//! comes back without the session (no persistence) is reported as a lost session (S2).

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
    assert!(
        !agent.logs().contains("MQTT SESSION LOST"),
        "a resumed session is not a lost one (S2)\n{}",
        agent.logs()
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
}

/// S2 in MQTT 3.1.1: a broker restarted without persistence has forgotten the agent's session,
/// and with it every alert queued for it; alerts published before the agent subscribed again
/// were never queued. The agent used to reconnect and subscribe again silently. Now it warns
/// `MQTT SESSION LOST` (it held a subscription on that session in this process), counts it in
/// status, and delivers what is published on the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_without_persistence_is_reported_as_a_lost_session() {
    let mut broker = Mosquitto::start_with(&[], "persistence false");
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = Agent::start(broker.port, &sim, &AgentOptions::with_admin());
    wait_subscribed(&agent).await;
    assert!(
        !agent.logs().contains("MQTT SESSION LOST"),
        "a first start reports no lost session\n{}",
        agent.logs()
    );
    broker.restart();
    assert_logged(
        &agent,
        "MQTT SESSION LOST",
        Duration::from_secs(20),
        "the agent did not report the session the broker forgot",
    )
    .await;
    let logs = agent.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("MQTT SESSION LOST"))
        .expect("the warning line");
    for part in [
        "a SUBACK this process saw",
        "disconnected_ms=",
        "persistence",
        "persistent_client_expiration",
    ] {
        assert!(warning.contains(part), "{part:?} missing from: {warning}");
    }
    assert!(
        !warning.contains("session_expiry_secs"),
        "MQTT 3.1.1 has no session expiry: {warning}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || agent.status().is_some_and(
            |st| {
                st["counters"]["sessions_lost"] == 1 && st["counters"]["subscriptions_held"] == 1
            }
        ))
        .await,
        "status: {:#?}\n{}",
        agent.status(),
        agent.logs()
    );
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-no-persistence", cancel.clone());
    publish_alerts(&plant, 0, 20, 5).await;
    assert_all_acked(&plant, 20, Duration::from_secs(10)).await;
    assert_all_delivered(&plant.acked_ids(), &sim, &agent, Duration::from_secs(20)).await;
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
}
