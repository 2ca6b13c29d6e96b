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

    let acked =
        publish_while_killing(plant, &mut agent, N, KILLS, Duration::from_millis(400)).await;
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
    assert!(
        !s.agent.logs().contains("MQTT SESSION LOST"),
        "neither the first start nor a restart within the session expiry is a lost session (S2)\n{}",
        s.agent.logs()
    );
    s.finish().await;
}

/// S2: the broker discards the agent's MQTT 5 session once the agent has been away longer than
/// `session_expiry_secs`, and with it the alerts queued for the agent; alerts published after
/// that are not queued for anyone. Until S2 the restarted agent subscribed again and said
/// nothing. Now it warns `MQTT SESSION LOST` (naming the expiry and the store's record of the
/// session), `status` counts it, and what is published after its return is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_expired_while_the_agent_was_stopped_is_reported_and_new_alerts_flow() {
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..v5("session_expiry_secs = 2")
    };
    let mut s = Scenario::start_subscribed("plant-v5-expired", sim, &opts).await;
    s.publish("before", 0..5, "critical").await;
    s.wait_accepted(5, Duration::from_secs(20)).await;
    assert_eq!(s.agent.stop(), Some(0), "clean stop\n{}", s.agent.logs());

    // Published while the agent is away: queued in its session, then discarded with it.
    let gap = s.publish("gap", 0..10, "critical").await;
    s.wait_acked(15, Duration::from_secs(10)).await;
    assert!(
        wait_until(Duration::from_secs(20), || s
            .broker
            .log()
            .contains("Expiring client alertbridge-e2e"))
        .await,
        "mosquitto did not expire the session\n{}",
        s.broker.log()
    );
    s.agent.start_again();
    assert_logged(
        &s.agent,
        "MQTT SESSION LOST",
        Duration::from_secs(15),
        "the restarted agent did not report the expired session",
    )
    .await;
    let logs = s.agent.logs();
    let (first_run, second_run) = logs.split_once("--- run 2 ---").expect("two runs");
    assert!(
        !first_run.contains("MQTT SESSION LOST"),
        "a first start reports no lost session\n{logs}"
    );
    let warning = second_run
        .lines()
        .find(|l| l.contains("MQTT SESSION LOST"))
        .expect("the warning line");
    for part in [
        "WARN",
        "client_id=\"alertbridge-e2e\"",
        "session_expiry_secs=2",
        "mqtt-session.json",
        "may never have been queued",
        "raise what is missing by hand",
    ] {
        assert!(warning.contains(part), "{part:?} missing from: {warning}");
    }
    let st = s
        .status_until(Duration::from_secs(15), |st| {
            st["counters"]["sessions_lost"] == 1 && st["counters"]["subscriptions_held"] == 1
        })
        .await;
    assert!(
        st["counters"]["session_lost_at_ms"].as_u64().is_some(),
        "{st:#}"
    );
    let text = s.agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("broker session: LOST 1 time(s) since start"),
        "{text}"
    );

    // Back on a new session: what is published now is delivered; the gap is what the warning
    // is about.
    let after = s.publish("after", 0..10, "critical").await;
    let after: std::collections::HashSet<String> = after.into_iter().collect();
    assert_all_delivered(&after, &s.sim, &s.agent, Duration::from_secs(30)).await;
    let counts = accepted_counts(&s.sim);
    let lost: Vec<_> = gap.iter().filter(|id| counts.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "alerts of the expired session arrived after all ({lost:?}): the test no longer shows the loss"
    );
    s.finish().await;
}

/// A v5 publisher's message expiry is the alert's TTL: with Genesys failing, an alert with a 2 s
/// expiry is dead-lettered `Expired` naming the publisher's expiry; one with 600 s is
/// delivered once Genesys recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_message_expiry_becomes_the_alert_ttl() {
    let mut s = Scenario::start_failing("plant-v5-expiry", 503, &v5("")).await;
    let port = s.broker.port;
    let short = r#"{"alert_id":"exp-short","device_id":"p7","alert_level":"critical"}"#;
    let long = r#"{"alert_id":"exp-long","device_id":"p8","alert_level":"critical"}"#;
    tokio::task::block_in_place(|| {
        publish_v5(
            port,
            "plant/north/alerts/p7",
            short,
            &[("message-expiry-interval", "2")],
        );
        publish_v5(
            port,
            "plant/north/alerts/p8",
            long,
            &[("message-expiry-interval", "600")],
        );
    });
    assert_logged(
        &s.agent,
        "publisher's MQTT 5 message expiry",
        Duration::from_secs(20),
        "the 2 s alert was not dead-lettered by its publisher's expiry",
    )
    .await;
    s.sim.set_faults(Faults::default());
    s.wait_accepted(1, Duration::from_secs(20)).await;
    s.stop().await;

    let counts = accepted_counts(&s.sim);
    assert_eq!(counts.get("exp-long"), Some(&1), "{counts:?}");
    assert!(!counts.contains_key("exp-short"), "{counts:?}");
    let letters = s.agent.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["kind"], "Expired");
    assert!(letters[0].to_string().contains("exp-short"), "{letters:#?}");
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("publisher's MQTT 5 message expiry of") && reason.contains("attempt(s)"),
        "{reason}"
    );
    s.finish().await;
}

/// A v5 publisher's user property reaches the Genesys payload through `$props.site` in the
/// mapping, also for an alert that waited in the store across a kill -9 (the properties are
/// kept with the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_properties_reach_the_mapping_across_a_kill9() {
    let opts = AgentOptions {
        extra: "[mapping.fields]\ndeviceId = \"device_id\"\nsite = \"$props.site\"\n".into(),
        ..v5("")
    };
    let mut s = Scenario::start_failing("plant-v5-props", 503, &opts).await;
    let port = s.broker.port;
    let payload = r#"{"alert_id":"props-1","device_id":"p7","alert_level":"critical"}"#;
    tokio::task::block_in_place(|| {
        publish_v5(
            port,
            "plant/north/alerts/p7",
            payload,
            &[("user-property", "site north")],
        );
    });
    // Stored and tried once (Genesys answered 503): it now waits in the log.
    assert!(
        wait_until(Duration::from_secs(20), || !launches(&s.sim).is_empty()).await,
        "no delivery attempt\n{}",
        s.agent.logs()
    );
    s.agent.restart(); // SIGKILL, then start on the same store
    s.sim.set_faults(Faults::default());
    s.wait_accepted(1, Duration::from_secs(20)).await;
    let accepted = s.sim.accepted();
    let input = &accepted[0].body["inputData"];
    assert_eq!(input["site"], "north", "{input}");
    assert_eq!(input["deviceId"], "p7", "{input}");
    s.finish().await;
}

/// mosquitto's dynamic security plugin with a role that may subscribe only to `site/#`: the
/// agent's `plant/+/alerts/#` is refused at SUBSCRIBE, and the MQTT 5 reason code (0x87
/// NotAuthorized) is in the journal and in `/ready`'s reasons.
const DYNSEC: &str = r#"{
  "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true,
                       "subscribe": false, "unsubscribe": true},
  "clients": [],
  "groups": [{"groupname": "anon", "roles": [{"rolename": "site-reader"}]}],
  "anonymousGroup": "anon",
  "roles": [{"rolename": "site-reader", "acls": [
    {"acltype": "subscribePattern", "topic": "site/#", "priority": 0, "allow": true}]}]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_v5_subscription_logs_its_reason_code_and_the_agent_is_not_ready() {
    let broker = Mosquitto::start_with(
        &[("dynsec.json", DYNSEC)],
        "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\nplugin_opt_config_file @DIR@/dynsec.json",
    );
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..v5("")
    };
    let mut agent = Agent::start(broker.port, &sim, &opts);
    assert_logged(
        &agent,
        "SUBACK 0x87 NotAuthorized",
        Duration::from_secs(15),
        "the refusal's reason code is not in the journal",
    )
    .await;
    assert!(
        agent.logs().contains("SUBSCRIPTION REFUSED"),
        "{}",
        agent.logs()
    );
    let ready = agent.get("/ready");
    assert!(
        ready.as_ref().is_some_and(|(code, body)| *code == 503
            && body["reasons"]
                .to_string()
                .contains("SUBACK 0x87 NotAuthorized")),
        "not ready, naming the reason code: {ready:?}"
    );
    assert_clean_exit(&mut agent);
}

/// MQTT 5 Retain Handling 1: a retained alert is delivered once, and not replayed by the
/// broker when the restarted agent subscribes again on its resumed session (MQTT 3.1.1 replays
/// it at every start, where only the duplicate window recognises it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_alert_is_not_replayed_when_the_v5_agent_restarts() {
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let payload = r#"{"alert_id":"retained-1","device_id":"p7","alert_level":"critical"}"#;
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv5",
        ])
        .args([
            "-q",
            "1",
            "-r",
            "-t",
            "plant/north/alerts/p7",
            "-m",
            payload,
        ])
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut agent = Agent::start(broker.port, &sim, &v5(""));
    assert!(
        wait_until(Duration::from_secs(20), || accepted_counts(&sim)
            .contains_key("retained-1"))
        .await,
        "the retained alert is delivered at the first subscription\n{}",
        agent.logs()
    );
    assert_eq!(agent.stop(), Some(0), "clean stop\n{}", agent.logs());
    agent.start_again();
    let held = "every subscription held";
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .logs()
            .matches(held)
            .count()
            >= 2)
        .await,
        "the restarted agent subscribed again\n{}",
        agent.logs()
    );
    // Give a replay, if the broker sent one, time to arrive and be logged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !agent.logs().contains("RETAIN=1"),
        "the broker replayed the retained alert\n{}",
        agent.logs()
    );
    assert_eq!(accepted_counts(&sim).get("retained-1"), Some(&1));
    assert_clean_exit(&mut agent);
}

/// A v5 broker silently drops a publish larger than the Maximum Packet Size the client
/// announced. The agent announces the protocol maximum, so a 20 MiB payload still arrives, is
/// dead-lettered `Oversize` once (not redelivered forever), and the alerts behind it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_bigger_than_16_mib_is_dead_lettered_in_v5_not_dropped_by_the_broker() {
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..v5("")
    };
    let mut s = Scenario::start_subscribed("plant-v5-huge", sim, &opts).await;
    let huge = vec![b'x'; 20 << 20];
    s.plant
        .publish_malformed(&huge)
        .await
        .expect("publish 20 MiB");
    publish_alerts(&s.plant, 0, 20, 5).await;
    s.wait_acked(21, Duration::from_secs(60)).await;
    let good = s.acked_alert_ids();
    assert_all_delivered(&good, &s.sim, &s.agent, Duration::from_secs(30)).await;
    s.status_until(Duration::from_secs(20), |st| st["dead_letters"] == 1)
        .await;
    s.stop().await;
    let dead = s.agent.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["kind"], "Oversize");
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("20971520 bytes"), "{reason}");
    s.finish().await;
}
