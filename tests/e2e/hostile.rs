//! Hostile input and a hostile disk (issue 9, point 6).

use std::time::Duration;

use crate::support::*;

/// The bug: a publish above rumqttc's 16 MiB packet limit dropped the connection, the persistent
/// session resent it on every reconnect, and nothing behind it was ever delivered. Now any
/// MQTT-legal publish is read, dead-lettered as `Oversize` (1 KiB prefix + length + SHA-256) and
/// acked, and the alerts behind it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_bigger_than_16_mib_is_dead_lettered_and_the_alerts_behind_it_flow() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut s = Scenario::start_subscribed("plant-huge", sim, &AgentOptions::with_admin()).await;
    let huge = vec![b'x'; 20 << 20];
    s.plant
        .publish_malformed(&huge)
        .await
        .expect("publish 20 MiB");
    publish_alerts(&s.plant, 0, 20, 5).await;
    s.wait_acked(21, Duration::from_secs(60)).await;
    let good = s.acked_alert_ids();
    assert_all_delivered(&good, &s.sim, &s.agent, Duration::from_secs(30)).await;
    let st = s
        .status_until(Duration::from_secs(20), |st| st["dead_letters"] == 1)
        .await;
    // Acked once: not redelivered over and over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.agent.status().expect("status")["dead_letters"], 1, "{st}");
    s.stop().await;
    let dead = s.agent.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["kind"], "Oversize");
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("20971520 bytes") && reason.contains("sha256"),
        "{reason}"
    );
    assert_eq!(dead[0]["payload"].as_str().map(str::len), Some(1024));
    s.finish().await;
}

/// The bug: deleting (or unmounting) the store while the agent ran let it ack alerts into
/// deleted files; after a restart they were gone. Now the group commit checks the store is the
/// one it opened: the agent stops acking and exits non-zero, and the broker keeps every publish
/// from then on, delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_stops_acking_and_exits_non_zero_and_the_broker_keeps_the_alerts() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut s = Scenario::start_subscribed("plant-vanish", sim, &AgentOptions::default()).await;
    publish_alerts(&s.plant, 0, 5, 5).await;
    s.wait_accepted(5, Duration::from_secs(20)).await;
    let store = s.agent.dir.path().join("wal");
    std::fs::remove_dir_all(&store).expect("delete the store");
    publish_alerts(&s.plant, 5, 5, 5).await;
    let exit = tokio::task::block_in_place(|| s.agent.wait_exit(Duration::from_secs(20)));
    let exit = exit.expect("the agent stops by itself");
    assert!(
        !exit.success(),
        "non-zero exit: {exit:?}\n{}",
        s.agent.logs()
    );
    assert!(
        s.agent.logs().contains("vanished"),
        "the reason is logged\n{}",
        s.agent.logs()
    );
    // Restarted (systemd would), on a new empty store: the broker still had the later alerts.
    s.agent.start_again();
    let later: std::collections::HashSet<String> =
        (5..10).map(|i| format!("alert-{i:07}")).collect();
    assert_all_delivered(&later, &s.sim, &s.agent, Duration::from_secs(30)).await;
    s.finish().await;
}
