//! MQTT 5 (`mqtt.protocol = "5"`) against the harness's mosquitto: the same guarantee as 3.1.1
//! (every broker-acked alert delivered, across kill -9), the session kept across an agent
//! outage by the Session Expiry Interval, and what a v5 publisher sets (message expiry, user
//! properties) reaching the alert.

use std::time::Duration;

use crate::support::*;

/// Agent options speaking MQTT 5, plus `mqtt` keys of the test.
fn v5(mqtt: &str) -> AgentOptions {
    AgentOptions {
        mqtt_extra: format!("protocol = \"5\"\n{mqtt}"),
        ..AgentOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_alerts_are_delivered_and_a_kill9_mid_burst_loses_no_acked_alert() {
    const N: usize = 2000;
    const KILLS: usize = 3;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        rate_per_sec: 400.0,
        burst: 50,
        max_in_flight: 8,
        ..v5("receive_maximum = 32")
    };
    let mut agent = Agent::start(broker.port, &sim, &opts);
    wait_subscribed(&agent).await;
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-v5-crash", cancel.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let publisher = tokio::spawn(async move {
        publish_alerts(&plant, 0, N, 4).await;
        plant
    });
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(400 + fastrand::u64(0..400))).await;
        agent.restart(); // SIGKILL, then start on the same store
    }
    let plant = publisher.await.expect("publisher");
    assert_all_acked(&plant, N, Duration::from_secs(30)).await;
    let acked = plant.acked_ids();
    assert_all_delivered(&acked, &sim, &agent, Duration::from_secs(60)).await;

    let counts = accepted_counts(&sim);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let bound = KILLS * (opts.max_in_flight + (opts.rate_per_sec * 0.5) as usize);
    println!(
        "v5 kill9: kills={KILLS} published={N} acked={} delivered={} duplicates={duplicates} bound={bound}",
        acked.len(),
        counts.len()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the bound {bound}"
    );
    assert!(
        agent.logs().contains("session_expiry_secs="),
        "the session expiry in force is logged at the CONNACK\n{}",
        agent.logs()
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
}

/// Alerts published while the agent is stopped wait in its MQTT 5 session (Session Expiry
/// Interval, default 7 days) and are delivered when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v5_session_keeps_alerts_published_while_the_agent_is_down() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut s = Scenario::start_subscribed("plant-v5-outage", sim, &v5("")).await;
    assert_eq!(s.agent.stop(), Some(0), "clean stop\n{}", s.agent.logs());
    publish_alerts(&s.plant, 0, 100, 10).await;
    assert_all_acked(&s.plant, 100, Duration::from_secs(10)).await;
    s.agent.start_again();
    let acked = s.acked_alert_ids();
    assert_all_delivered(&acked, &s.sim, &s.agent, Duration::from_secs(30)).await;
    assert!(
        s.agent
            .logs()
            .contains("session_present=true session_expiry_secs=604800"),
        "the restarted agent resumed its 7-day session\n{}",
        s.agent.logs()
    );
    s.finish().await;
}
