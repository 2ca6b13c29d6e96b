//! Alert identity (issue 9, point 1): a repeat is a new alert, a redelivery is not.
//!
//! The bug: a device repeating a persisting alarm with a byte-identical payload (many PLCs send
//! `{"device":"pump-3","alarm":"HIGH_TEMP"}` with no timestamp) got every repeat acked and never
//! delivered, for as long as its id stayed in a 100 000-id window; two devices sending
//! `"alert_id": 1` lost alerts the same way. Now only an MQTT redelivery (DUP=1) of an alert
//! persisted within a few minutes is a duplicate, and identity is (topic, alert id).

use std::time::Duration;

use crate::support::*;

const BODY: &str = r#"{"alert_id":"pump-3-HIGH_TEMP","device_id":"SN-3","alert_level":"warning","reading_value":91.5}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_identical_first_publishes_seconds_apart_are_delivered_twice() {
    let sim = sim(Duration::from_secs(3600)).await;
    let s = Scenario::start_subscribed("plant-repeat", sim, &AgentOptions::default()).await;
    let topic = "plant/line-3/alerts/pump-3".to_string();
    s.plant
        .publish(topic.clone(), BODY.into(), "repeat-1".into())
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.plant
        .publish(topic, BODY.into(), "repeat-2".into())
        .await
        .expect("publish");
    s.wait_acked(2, Duration::from_secs(20)).await;
    assert!(
        wait_until(Duration::from_secs(20), || accepted_counts(&s.sim)
            .get("pump-3-HIGH_TEMP")
            .copied()
            == Some(2))
        .await,
        "both repeats delivered: {:?}\n{}",
        accepted_counts(&s.sim),
        s.agent.logs()
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_alert_id_on_two_topics_is_delivered_for_both() {
    let sim = sim(Duration::from_secs(3600)).await;
    let s = Scenario::start_subscribed("plant-two-devices", sim, &AgentOptions::default()).await;
    let body = r#"{"alert_id":"1","alert_level":"warning","reading_value":1.0}"#;
    for (i, device) in ["pump-1", "pump-2"].iter().enumerate() {
        s.plant
            .publish(
                format!("plant/line-1/alerts/{device}"),
                body.into(),
                format!("dev-{i}"),
            )
            .await
            .expect("publish");
    }
    s.wait_acked(2, Duration::from_secs(20)).await;
    assert!(
        wait_until(Duration::from_secs(20), || s.sim.accepted().len() == 2).await,
        "both devices' alert 1 delivered: {:?}\n{}",
        accepted_counts(&s.sim),
        s.agent.logs()
    );
    s.finish().await;
}

/// The agent dies after the fsync and before the PUBACK (fault injection): the broker
/// redelivers the publish with DUP=1 to the restarted agent. With the window on, it is
/// recognised and delivered once; with `dedup_window = 0` the window is really off and the
/// redelivery is stored (and delivered) again.
async fn crash_between_fsync_and_puback(store_extra: &str) -> usize {
    let sim = sim(Duration::from_secs(3600)).await;
    // Genesys down during the first run, so the crash cannot race a delivery.
    sim.outage_for(Duration::from_secs(3600));
    let opts = AgentOptions {
        store_extra: store_extra.into(),
        ..AgentOptions::with_admin()
    };
    let broker = Mosquitto::start();
    let mut agent = Agent::start(broker.port, &sim, &opts);
    wait_subscribed(&agent).await;
    agent.kill9();
    agent.set_env(&[("ALERTBRIDGE_FAULT_ABORT_AFTER_FSYNC", "1")]);
    agent.start_again();
    wait_subscribed(&agent).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let (plant, task) =
        alertbridge::demo::plant::Plant::connect(broker.port, "plant-dup", cancel.clone());
    plant
        .publish(
            "plant/line-9/alerts/press-1".into(),
            r#"{"alert_id":"press-1-JAM","alert_level":"critical"}"#.into(),
            "press-1-JAM".into(),
        )
        .await
        .expect("publish");
    let exited = tokio::task::block_in_place(|| agent.wait_exit(Duration::from_secs(20)));
    assert!(
        exited.is_some(),
        "the fault aborted the agent\n{}",
        agent.logs()
    );
    sim.set_faults(Faults::default());
    agent.set_env(&[]);
    agent.start_again();
    assert!(
        wait_until(Duration::from_secs(20), || accepted_counts(&sim)
            .contains_key("press-1-JAM"))
        .await,
        "delivered after the restart\n{}",
        agent.logs()
    );
    // Give a second copy, if any, time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = accepted_counts(&sim)
        .get("press-1-JAM")
        .copied()
        .unwrap_or(0);
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_fsync_and_puback_delivers_the_redelivered_alert_once() {
    assert_eq!(crash_between_fsync_and_puback("").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_dedup_window_really_disables_it() {
    assert_eq!(crash_between_fsync_and_puback("dedup_window = 0").await, 2);
}
