//! Storm coalescing (issue 5 item 8, `[mapping.coalesce]`): a burst of non-critical alerts from
//! one site becomes a few single requests plus one summary; critical alerts of the same burst go
//! singly; every original keeps its own receipt (the summary's execution id) or dead letter, and
//! a crash before the summary is accepted loses none of the absorbed alerts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use alertbridge_wal::Receipt;
use serde_json::Value;

use crate::support::*;

/// Coalescing on: 4th alert of a site within 3 s and later ones are absorbed. The site comes
/// from a payload field (the shared test config has no `topic_pattern`).
const COALESCE: &str = r#"
[mapping.coalesce]
enabled = true
window_ms = 3000
min_count = 4
site = "site"
device = "device_id"
"#;

/// Normal alerts of the burst and the indexes that are critical.
const BURST: usize = 30;
const CRITICAL_AT: [usize; 3] = [5, 15, 25];

/// One published alert as the test remembers it.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    device: String,
    level: String,
}

/// The burst: `BURST` non-critical alerts of site `north` over 6 devices (one `major`, the rest
/// `warning`/`info`), and a critical one at each of `CRITICAL_AT`.
fn burst(prefix: &str) -> Vec<Sent> {
    let mut out = Vec::new();
    for i in 0..BURST {
        if CRITICAL_AT.contains(&i) {
            out.push(Sent {
                id: format!("{prefix}-crit-{i:03}"),
                device: format!("pump-{:02}", i % 6),
                level: "critical".into(),
            });
        }
        let level = match i {
            20 => "major",
            i if i % 3 == 0 => "info",
            _ => "warning",
        };
        out.push(Sent {
            id: format!("{prefix}-{i:03}"),
            device: format!("pump-{:02}", i % 6),
            level: level.into(),
        });
    }
    out
}

async fn publish(plant: &Plant, alerts: &[Sent]) {
    for a in alerts {
        let body = serde_json::json!({
            "alert_id": a.id,
            "site": "north",
            "device_id": a.device,
            "alert_level": a.level,
            "reading_value": 3.5,
        });
        plant
            .publish(
                format!("plant/north/alerts/{}", a.device),
                body.to_string(),
                a.id.clone(),
            )
            .await
            .expect("publish queued");
    }
}

/// Everything of one test, coalescing on, the agent subscribed before the plant connects.
async fn start(sim: Sim, name: &str) -> Scenario {
    let opts = AgentOptions {
        extra: COALESCE.into(),
        ..AgentOptions::default()
    };
    Scenario::start_subscribed(name, sim, &opts).await
}

/// Wait (up to 30 s) until the accepted launches cover all `n` alerts ([`covered`]).
async fn assert_covered(sim: &Sim, agent: &Agent, n: usize) {
    assert!(
        wait_until(Duration::from_secs(30), || covered(sim) >= n as u64).await,
        "Genesys covered {} of {n}\n{}",
        covered(sim),
        agent.logs()
    );
}

/// `inputData` of every accepted launch.
fn accepted_data(sim: &Sim) -> Vec<(String, Value)> {
    sim.accepted()
        .into_iter()
        .map(|a| (a.id, a.body["inputData"].clone()))
        .collect()
}

fn is_summary(data: &Value) -> bool {
    data["summary"] == Value::Bool(true)
}

/// Alerts the accepted launches stand for: 1 per single alert, `alertCount` per summary.
fn covered(sim: &Sim) -> u64 {
    accepted_data(sim)
        .iter()
        .map(|(_, d)| {
            if is_summary(d) {
                d["alertCount"].as_u64().unwrap_or(0)
            } else {
                1
            }
        })
        .sum()
}

/// The delivery receipts in the stopped agent's log.
fn receipts(agent: &Agent) -> Vec<Receipt> {
    let cfg = alertbridge::Config::load(&agent.config).expect("test config loads");
    let wal = alertbridge::open_wal(&cfg).expect("the log opens while the agent is down");
    wal.delivered()
        .map(|r| r.expect("no corrupt receipt in a test log"))
        .collect()
}

fn rank(level: &str) -> usize {
    ["info", "warning", "minor", "major", "critical"]
        .iter()
        .position(|l| *l == level)
        .map_or(0, |i| i + 1)
}

/// Every original has exactly one receipt; each summary's members are exactly the receipts
/// with its execution id, and the summary's count, devices and worst level are theirs;
/// critical alerts were delivered singly. Returns how many summaries were accepted.
fn assert_accounted(sim: &Sim, agent: &Agent, sent: &[Sent]) -> usize {
    let receipts = receipts(agent);
    let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut seen = HashSet::new();
    for r in &receipts {
        assert!(
            by_id.contains_key(r.alert_id.as_str()),
            "unknown receipt {r:?}"
        );
        assert!(
            seen.insert(r.alert_id.clone()),
            "two receipts for {}",
            r.alert_id
        );
    }
    let missing: Vec<_> = sent.iter().filter(|s| !seen.contains(&s.id)).collect();
    assert!(
        missing.is_empty(),
        "no receipt for {missing:?}\n{}",
        agent.logs()
    );
    assert!(agent.pending_records().is_empty(), "still pending");
    assert!(agent.dead_letters().is_empty(), "dead letters");

    let singles = accepted_counts(sim);
    let mut summaries = 0;
    for (execution, data) in accepted_data(sim) {
        if !is_summary(&data) {
            continue;
        }
        summaries += 1;
        let summary_id = data["alertId"].as_str().expect("summary has an alertId");
        let members: Vec<&Receipt> = receipts
            .iter()
            .filter(|r| r.execution_id.as_deref() == Some(execution.as_str()))
            .collect();
        assert_eq!(data["site"], "north");
        assert_eq!(
            data["alertCount"].as_u64(),
            Some(members.len() as u64),
            "{data}"
        );
        let devices: HashSet<&str> = members
            .iter()
            .map(|r| by_id[r.alert_id.as_str()].device.as_str())
            .collect();
        assert_eq!(
            data["deviceCount"].as_u64(),
            Some(devices.len() as u64),
            "{data}"
        );
        for d in data["devices"].as_str().expect("devices listed").split(',') {
            assert!(devices.contains(d), "{d} is not a member's device: {data}");
        }
        let worst = members
            .iter()
            .map(|r| by_id[r.alert_id.as_str()].level.as_str())
            .max_by_key(|l| rank(l))
            .expect("a summary has members");
        assert_eq!(data["alertLevel"].as_str(), Some(worst), "{data}");
        for m in &members {
            let s = by_id[m.alert_id.as_str()];
            assert_ne!(s.level, "critical", "a critical alert was coalesced: {m:?}");
            assert!(
                !singles.contains_key(&m.alert_id),
                "{} was sent singly and in a summary",
                m.alert_id
            );
            let corr = m.correlation_id.as_deref().unwrap_or("");
            assert!(
                corr.starts_with(&format!("summary:{summary_id}")),
                "the receipt names its summary: {m:?}"
            );
        }
    }
    for s in sent.iter().filter(|s| s.level == "critical") {
        assert_eq!(
            singles.get(&s.id),
            Some(&1),
            "critical {} delivered singly once",
            s.id
        );
    }
    summaries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_one_site_becomes_one_summary_and_every_alert_keeps_a_receipt() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut rig = start(sim, "plant-coalesce").await;
    let sent = burst("co");
    publish(&rig.plant, &sent).await;
    assert_all_acked(&rig.plant, sent.len(), Duration::from_secs(20)).await;
    assert_covered(&rig.sim, &rig.agent, sent.len()).await;
    rig.stop().await;
    let launches = rig.sim.accepted().len();
    assert!(
        launches < sent.len() / 2,
        "{launches} requests for {} alerts: the burst was not coalesced",
        sent.len()
    );
    assert!(
        assert_accounted(&rig.sim, &rig.agent, &sent) >= 1,
        "no summary"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_summary_is_accepted_loses_no_absorbed_alert() {
    // Genesys fails every launch: the summary is built, sent and retried, never accepted.
    let mut rig = start(failing_sim(503).await, "plant-coalesce-crash").await;
    let sent = burst("cr");
    publish(&rig.plant, &sent).await;
    assert_all_acked(&rig.plant, sent.len(), Duration::from_secs(20)).await;
    assert_logged(
        &rig.agent,
        "storm summary ready",
        Duration::from_secs(20),
        "no summary was built",
    )
    .await;
    // let the summary's first request fail at least once
    let failed = launches(&rig.sim).len();
    assert!(
        wait_until(Duration::from_secs(10), || launches(&rig.sim).len()
            > failed)
        .await,
        "no request after the summary was built"
    );
    tokio::task::block_in_place(|| rig.agent.kill9());
    assert!(
        rig.sim.accepted().is_empty(),
        "nothing was accepted before the crash"
    );
    // every absorbed alert is still pending in the log
    let pending: HashSet<String> = tokio::task::block_in_place(|| rig.agent.pending_records())
        .into_iter()
        .map(|(_, r)| r.alert_id)
        .collect();
    let all: HashSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        pending, all,
        "every alert stays pending until Genesys accepts it"
    );

    rig.sim.set_faults(Faults::default());
    rig.agent.restart();
    assert_covered(&rig.sim, &rig.agent, sent.len()).await;
    rig.stop().await;
    assert_accounted(&rig.sim, &rig.agent, &sent);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_summary_dead_letters_each_of_its_alerts_with_the_reason() {
    let sim = failing_sim(400).await;
    // Every request of the burst is rejected alike: with the default `pause_after_rejections`
    // delivery would pause after five of them (tests/e2e/wrong_config.rs) and the summary would
    // wait. This test is about what a rejected summary does to its members, so it turns the
    // pause off.
    let opts = AgentOptions {
        extra: COALESCE.into(),
        delivery_extra: "pause_after_rejections = 0".into(),
        ..AgentOptions::default()
    };
    let mut rig = Scenario::start_subscribed("plant-coalesce-400", sim, &opts).await;
    let sent = burst("rj");
    publish(&rig.plant, &sent).await;
    let logs_dead = |a: &Agent| a.logs().matches("alert moved to dead letters").count();
    assert!(
        wait_until(Duration::from_secs(30), || logs_dead(&rig.agent)
            >= sent.len())
        .await,
        "{} of {} dead-lettered\n{}",
        logs_dead(&rig.agent),
        sent.len(),
        rig.agent.logs()
    );
    rig.stop().await;
    let dead = rig.agent.dead_letters();
    let ids: HashSet<String> = dead
        .iter()
        .filter_map(|d| d["alert_id"].as_str().map(str::to_owned))
        .collect();
    let all: HashSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, all, "every alert is a dead letter");
    assert_eq!(dead.len(), sent.len());
    let members = dead
        .iter()
        .filter(|d| {
            d["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("coalesced into storm summary"))
        })
        .count();
    assert!(members > 0, "no dead letter names a summary: {dead:#?}");
    for d in &dead {
        assert_eq!(d["status"].as_u64(), Some(400), "{d}");
    }
    assert!(rig.agent.pending_records().is_empty());
    rig.finish().await;
}
