//! Delivery receipts back to MQTT (`[receipts]`, invariant RC1): a subscriber on the receipts
//! topic sees a receipt for every alert's outcome — delivered, dead-lettered — published from
//! the log, so a kill -9 between Genesys' 2xx and the publish still publishes it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// One receipt as a subscriber saw it: topic, MQTT 5 Correlation Data, JSON body.
type Answer = (String, Option<Vec<u8>>, serde_json::Value);

/// Receipts as a subscriber saw them.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Answer>>>);

impl Seen {
    /// Every receipt: (topic, JSON body).
    fn all(&self) -> Vec<(String, serde_json::Value)> {
        self.answers().into_iter().map(|(t, _, v)| (t, v)).collect()
    }

    /// Every receipt with its correlation data.
    fn answers(&self) -> Vec<Answer> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Alert ids with at least one receipt in `state`.
    fn alert_ids(&self, state: &str) -> HashSet<String> {
        self.all()
            .iter()
            .filter(|(_, v)| v["state"] == state)
            .filter_map(|(_, v)| v["alert_id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// A subscriber on `alertbridge/receipts/#` (see [`v5_subscriber`]).
async fn subscriber(port: u16, cancel: CancellationToken) -> (Seen, tokio::task::JoinHandle<()>) {
    v5_subscriber(port, &["alertbridge/receipts/#"], cancel).await
}

/// An MQTT 5 subscriber (QoS 1, clean start) on `filters`, like an HMI waiting for answers (it
/// receives what a 3.1.1 agent publishes too); returns once the broker acknowledged every
/// subscription.
async fn v5_subscriber(
    port: u16,
    filters: &[&str],
    cancel: CancellationToken,
) -> (Seen, tokio::task::JoinHandle<()>) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let mut o = rumqttc::v5::MqttOptions::new("receipts-subscriber", "127.0.0.1", port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 64);
    for f in filters {
        client
            .subscribe(*f, Q5::AtLeastOnce)
            .await
            .expect("subscribe queued");
    }
    let seen = Seen::default();
    let sink = seen.clone();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let mut subacks = filters.len();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = eventloop.poll() => match ev {
                    Ok(rumqttc::v5::Event::Incoming(P5::SubAck(_))) => {
                        subacks = subacks.saturating_sub(1);
                        if subacks == 0 {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let correlation = p
                            .properties
                            .and_then(|props| props.correlation_data)
                            .map(|c| c.to_vec());
                        let body = serde_json::from_slice(&p.payload).unwrap_or_default();
                        if let Ok(mut g) = sink.0.lock() {
                            g.push((topic, correlation, body));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                },
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("the subscriptions are acknowledged")
        .expect("subscriber runs");
    (seen, task)
}

fn receipts_on() -> AgentOptions {
    AgentOptions {
        mapping_extra: r#"topic_pattern = "plant/{site}/alerts/{device}""#.into(),
        extra: "[receipts]\n".into(),
        ..AgentOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_one_receipt_per_delivered_alert() {
    const N: usize = 200;
    let sim = sim(Duration::from_secs(3600)).await;
    let sc = Scenario::start_subscribed("plant-receipts", sim, &receipts_on()).await;
    let cancel = CancellationToken::new();
    let (seen, task) = subscriber(sc.broker.port, cancel.clone()).await;
    let ids: HashSet<String> = sc.publish("r", 0..N, "major").await.into_iter().collect();
    sc.wait_accepted(N, Duration::from_secs(60)).await;
    assert!(
        wait_until(Duration::from_secs(30), || seen.alert_ids("delivered")
            == ids)
        .await,
        "receipts for {} of {N} delivered alerts\n{}",
        seen.alert_ids("delivered").len(),
        sc.agent.logs()
    );
    // Quiet a moment: nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = seen.all();
    assert_eq!(all.len(), N, "exactly one receipt per delivered alert");
    let executions: HashMap<String, String> = sc
        .sim
        .accepted()
        .into_iter()
        .filter_map(|a| a.alert_id.map(|id| (id, a.id)))
        .collect();
    let receipt_ids: HashSet<&str> = all
        .iter()
        .filter_map(|(_, v)| v["receipt_id"].as_str())
        .collect();
    assert_eq!(receipt_ids.len(), N, "receipt ids are distinct");
    for (topic, v) in &all {
        let alert_id = v["alert_id"].as_str().expect("alert_id");
        let device = v["device"].as_str().expect("device from the topic pattern");
        assert_eq!(topic, &format!("alertbridge/receipts/{device}"));
        assert!(device.starts_with("SN-north-"), "{device}");
        assert_eq!(
            v["genesys"]["execution_id"].as_str(),
            executions.get(alert_id).map(String::as_str),
            "the execution id Genesys answered for {alert_id}"
        );
        assert_eq!(v["genesys"]["status"], 200, "{v}");
        assert!(v["latency_ms"].as_u64().is_some(), "{v}");
    }
    cancel.cancel();
    let _ = task.await;
    sc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_alert_gets_a_dead_lettered_receipt_with_kind_and_reason() {
    let sim = failing_sim(400).await;
    let sc = Scenario::start_subscribed("plant-receipts-dead", sim, &receipts_on()).await;
    let cancel = CancellationToken::new();
    let (seen, task) = subscriber(sc.broker.port, cancel.clone()).await;
    let ids: HashSet<String> = sc.publish("d", 0..3, "major").await.into_iter().collect();
    assert!(
        wait_until(Duration::from_secs(30), || seen.alert_ids("dead_lettered")
            == ids)
        .await,
        "dead-lettered receipts: {:?}\n{}",
        seen.all(),
        sc.agent.logs()
    );
    for (_, v) in seen.all() {
        assert_eq!(v["dead_letter"]["kind"], "rejected", "{v}");
        let reason = v["dead_letter"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("400"), "{reason}");
        assert!(v["dead_letter"]["id"].as_u64().is_some(), "{v}");
    }
    cancel.cancel();
    let _ = task.await;
    sc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_delivery_still_publishes_a_receipt_for_every_delivered_alert() {
    const N: usize = 2000;
    const KILLS: usize = 3;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        rate_per_sec: 400.0,
        burst: 50,
        max_in_flight: 8,
        ..receipts_on()
    };
    let mut agent = Agent::start(broker.port, &sim, &opts);
    let cancel = CancellationToken::new();
    let (seen, sub_task) = subscriber(broker.port, cancel.clone()).await;
    let (plant, task) = Plant::connect(broker.port, "plant-receipts-crash", cancel.clone());
    wait_subscribed(&agent).await;
    let acked =
        publish_while_killing(plant, &mut agent, N, KILLS, Duration::from_millis(600)).await;
    assert_all_delivered(&acked, &sim, &agent, Duration::from_secs(90)).await;
    let delivered: HashSet<String> = accepted_counts(&sim).into_keys().collect();
    let complete = wait_until(Duration::from_secs(60), || {
        delivered.is_subset(&seen.alert_ids("delivered"))
    })
    .await;
    let got = seen.alert_ids("delivered");
    let without: Vec<&String> = delivered.difference(&got).take(10).collect();
    let receipts = seen.all().len();
    println!(
        "receipts kill9: kills={KILLS} acked={} delivered={} receipts={receipts} alerts_with_receipt={}",
        acked.len(),
        delivered.len(),
        got.len()
    );
    assert!(
        complete,
        "delivered alerts without a receipt, e.g. {without:?}\n{}",
        agent.logs()
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
    let _ = sub_task.await;
}

/// Options of an agent with receipts on; `extra` goes into `[receipts]`.
fn receipts_with(extra: &str) -> AgentOptions {
    AgentOptions {
        extra: format!("[receipts]\n{extra}\n"),
        admin: true,
        ..receipts_on()
    }
}

/// An agent started with `opts` whose receipts publisher is held (it never connects): receipts
/// accumulate in the log.
async fn held_agent(broker: &Mosquitto, sim: &Sim, opts: &AgentOptions) -> Agent {
    let mut agent = Agent::start(broker.port, sim, opts);
    agent.set_env(&[("ALERTBRIDGE_FAULT_HOLD_RECEIPTS", "1")]);
    agent.restart();
    wait_subscribed(&agent).await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_2xx_and_the_receipt_publish_still_publishes_it() {
    const N: usize = 300;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = held_agent(&broker, &sim, &receipts_with("")).await;
    let cancel = CancellationToken::new();
    let (seen, sub_task) = subscriber(broker.port, cancel.clone()).await;
    let (plant, task) = Plant::connect(broker.port, "plant-receipts-held", cancel.clone());
    publish_alerts(&plant, 0, N, 10).await;
    assert_all_acked(&plant, N, Duration::from_secs(30)).await;
    assert!(
        sim.wait_for_accepted(N, Duration::from_secs(60)).await,
        "all delivered\n{}",
        agent.logs()
    );
    assert!(
        seen.all().is_empty(),
        "the held publisher published nothing"
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .status()
            .is_some_and(|s| s["receipts_pending"] == N))
        .await,
        "status shows the receipts waiting: {:?}",
        agent.status()
    );
    agent.set_env(&[]);
    agent.restart(); // SIGKILL: every receipt is only in the log, then start without the hold
    let delivered: HashSet<String> = accepted_counts(&sim).into_keys().collect();
    assert!(
        wait_until(Duration::from_secs(30), || seen.alert_ids("delivered")
            == delivered)
        .await,
        "receipts after the restart for {} of {N}\n{}",
        seen.alert_ids("delivered").len(),
        agent.logs()
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
    let _ = sub_task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_bound_drops_the_oldest_receipts_and_publishes_the_rest() {
    const N: usize = 300;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = held_agent(&broker, &sim, &receipts_with("max_pending = 100")).await;
    let cancel = CancellationToken::new();
    let (seen, sub_task) = subscriber(broker.port, cancel.clone()).await;
    let (plant, task) = Plant::connect(broker.port, "plant-receipts-bound", cancel.clone());
    publish_alerts(&plant, 0, N, 10).await;
    assert_all_acked(&plant, N, Duration::from_secs(30)).await;
    assert!(sim.wait_for_accepted(N, Duration::from_secs(60)).await);
    // A clean stop, so the last removals (and their receipts) are in the log, not redelivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_clean_exit(&mut agent);
    agent.set_env(&[]);
    agent.start_again();
    assert!(
        wait_until(Duration::from_secs(30), || seen
            .alert_ids("delivered")
            .len()
            >= 100)
        .await,
        "{} receipts\n{}",
        seen.all().len(),
        agent.logs()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // An alert whose 2xx came as the agent stopped is delivered again after the restart; its
    // new receipt may be queued after the bound was applied.
    let again: usize = accepted_counts(&sim).values().map(|n| n - 1).sum();
    let published = seen.all().len();
    assert!(
        (100..=100 + again).contains(&published),
        "{published} receipts published: only the newest max_pending (100, + {again} redelivered)"
    );
    assert!(
        agent
            .logs()
            .contains("delivery receipts dropped unpublished"),
        "the drop is warned\n{}",
        agent.logs()
    );
    assert_eq!(
        accepted_counts(&sim).len(),
        N,
        "every alert delivered all the same"
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
    let _ = sub_task.await;
}

/// mosquitto's ACL for the response-topic test: anonymous clients may use everything the
/// test needs, but only read `hmi/locked/#`, so the agent's receipt there is refused.
const RECEIPT_ACL: &str = "topic readwrite plant/#\ntopic readwrite alertbridge/#\n\
                           topic readwrite hmi/answers/#\ntopic read hmi/locked/#\n";

fn receipts_v5() -> AgentOptions {
    AgentOptions {
        mqtt_extra: "protocol = \"5\"".into(),
        ..receipts_with("")
    }
}

/// MQTT 5 request/response: a publisher that set a Response Topic and Correlation Data gets
/// its alert's receipt there with its correlation data; one that set none gets it on the
/// template topic; a response topic an ingest filter matches is refused (template instead,
/// counted, warned); a receipt the broker's ACL refuses (PUBACK 0x87) is dropped, counted and
/// warned, not published again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_publisher_gets_its_receipt_on_its_response_topic_with_its_correlation_data() {
    let broker = Mosquitto::start_with(&[("acl", RECEIPT_ACL)], "acl_file @DIR@/acl");
    let sim = sim(Duration::from_secs(3600)).await;
    let mut agent = Agent::start(broker.port, &sim, &receipts_v5());
    wait_subscribed(&agent).await;
    let cancel = CancellationToken::new();
    let (seen, sub_task) = v5_subscriber(
        broker.port,
        &["hmi/#", "alertbridge/receipts/#"],
        cancel.clone(),
    )
    .await;
    let body =
        |id: &str| format!(r#"{{"alert_id":"{id}","device_id":"p1","alert_level":"critical"}}"#);
    let port = broker.port;
    tokio::task::block_in_place(|| {
        publish_v5(
            port,
            "plant/north/alerts/p1",
            &body("asked"),
            &[
                ("response-topic", "hmi/answers/p1"),
                ("correlation-data", "req-4711"),
            ],
        );
        publish_v5(port, "plant/north/alerts/p2", &body("silent"), &[]);
        publish_v5(
            port,
            "plant/north/alerts/p3",
            &body("looping"),
            &[("response-topic", "plant/north/alerts/echo")],
        );
        publish_v5(
            port,
            "plant/north/alerts/p4",
            &body("locked"),
            &[("response-topic", "hmi/locked/p4")],
        );
        // Not an alert at all: dead-lettered at ingest, and its publisher told so.
        publish_v5(
            port,
            "plant/north/alerts/p5",
            "not json",
            &[
                ("response-topic", "hmi/answers/p5"),
                ("correlation-data", "req-bad"),
            ],
        );
    });
    assert!(sim.wait_for_accepted(4, Duration::from_secs(30)).await);
    let st = |agent: &Agent| {
        agent
            .status()
            .map(|s| s["counters"].clone())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let c = st(&agent);
            c["receipts_published"] == 4 && c["receipts_dropped"] == 1
        })
        .await,
        "4 receipts published, the locked one dropped: {}\n{}",
        st(&agent),
        agent.logs()
    );
    assert_eq!(
        st(&agent)["receipts_reply_refused"],
        1,
        "the looping response topic"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = seen.answers();
    let find = |id: &str| {
        got.iter()
            .filter(|(_, _, v)| v["alert_id"] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let asked = find("asked");
    assert_eq!(asked.len(), 1, "{got:?}");
    assert_eq!(asked[0].0, "hmi/answers/p1");
    assert_eq!(
        asked[0].1.as_deref(),
        Some(&b"req-4711"[..]),
        "correlation data echoed"
    );
    assert_eq!(asked[0].2["state"], "delivered");
    let silent = find("silent");
    assert_eq!(silent.len(), 1, "{got:?}");
    assert_eq!(
        (silent[0].0.as_str(), &silent[0].1),
        ("alertbridge/receipts/p2", &None)
    );
    let looping = find("looping");
    assert_eq!(looping.len(), 1, "{got:?}");
    assert_eq!(
        looping[0].0, "alertbridge/receipts/p3",
        "the template, not the ingest topic"
    );
    assert!(find("locked").is_empty(), "the ACL refused it: {got:?}");
    let bad: Vec<_> = got
        .iter()
        .filter(|(t, _, _)| t == "hmi/answers/p5")
        .collect();
    assert_eq!(bad.len(), 1, "{got:?}");
    assert_eq!(bad[0].1.as_deref(), Some(&b"req-bad"[..]));
    assert_eq!(bad[0].2["state"], "dead_lettered");
    assert_eq!(bad[0].2["dead_letter"]["kind"], "malformed", "{}", bad[0].2);
    assert_eq!(
        accepted_counts(&sim).len(),
        4,
        "no receipt came back in as an alert"
    );
    let logs = agent.logs();
    assert!(logs.contains("response topic was refused"), "{logs}");
    assert!(logs.contains("0x87 NotAuthorized"), "{logs}");
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = sub_task.await;
}

/// The response topic and correlation data are kept in the log with the receipt: a kill -9
/// between Genesys' 2xx and the publish still answers each publisher on its own topic with its
/// own correlation data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_for_a_response_topic_survives_a_kill9_before_its_publish() {
    const N: usize = 20;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        mqtt_extra: "protocol = \"5\"".into(),
        ..receipts_with("response_topic = \"only\"")
    };
    let mut agent = held_agent(&broker, &sim, &opts).await;
    let cancel = CancellationToken::new();
    let (seen, sub_task) = v5_subscriber(
        broker.port,
        &["hmi/#", "alertbridge/receipts/#"],
        cancel.clone(),
    )
    .await;
    let port = broker.port;
    tokio::task::block_in_place(|| {
        for i in 0..N {
            let body =
                format!(r#"{{"alert_id":"k-{i}","device_id":"p{i}","alert_level":"major"}}"#);
            let topic = format!("hmi/answers/p{i}");
            let corr = format!("c-{i}");
            // Every other publisher asks for an answer; with "only" the rest get none.
            let props: Vec<(&str, &str)> = if i % 2 == 0 {
                vec![("response-topic", &topic), ("correlation-data", &corr)]
            } else {
                vec![]
            };
            publish_v5(port, &format!("plant/north/alerts/p{i}"), &body, &props);
        }
    });
    assert!(sim.wait_for_accepted(N, Duration::from_secs(30)).await);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .status()
            .is_some_and(|s| s["receipts_pending"] == N))
        .await,
        "every receipt waits in the log: {:?}",
        agent.status()
    );
    assert!(
        seen.answers().is_empty(),
        "the held publisher published nothing"
    );
    agent.set_env(&[]);
    agent.restart(); // SIGKILL, then start without the hold
    assert!(
        wait_until(Duration::from_secs(30), || seen.answers().len() >= N / 2).await,
        "{} answers after the restart\n{}",
        seen.answers().len(),
        agent.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = seen.answers();
    assert_eq!(
        got.len(),
        N / 2,
        "one answer per publisher that asked, none for the rest: {got:?}"
    );
    for (topic, corr, v) in &got {
        let i: usize = v["alert_id"]
            .as_str()
            .and_then(|id| id.strip_prefix("k-"))
            .and_then(|n| n.parse().ok())
            .expect("alert id k-<i>");
        assert_eq!(i % 2, 0, "{v}");
        assert_eq!(topic, &format!("hmi/answers/p{i}"));
        assert_eq!(corr.as_deref(), Some(format!("c-{i}").as_bytes()));
    }
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .status()
            .is_some_and(|s| s["receipts_pending"] == 0))
        .await,
        "the unasked receipts are done too: {:?}",
        agent.status()
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = sub_task.await;
}
