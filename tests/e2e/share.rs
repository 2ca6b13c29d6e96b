//! Horizontal scale through a shared subscription (`mqtt.share_group`, docs/scale.md): two agents
//! in one mosquitto share group split the alerts between them, each with its own client id,
//! store and Genesys simulator (so the split can be counted per agent); a third agent in another
//! group receives every alert (the standby or audit path).
//!
//! One member is SIGKILLed mid-load and kept down for a moment before it starts again on its
//! store. mosquitto keeps assigning that member its round-robin share while it is down and
//! queues it in its persistent session, together with what was in flight unacked at the kill;
//! the member gets all of it when it returns. So the guarantee is the single agent's one per
//! member: every alert the broker acked to the plant is delivered by exactly one member of the
//! group (lost = 0), and duplicates stay within the per-crash bound of `crash.rs` for the member
//! that crashed: `max_in_flight + rate_per_sec × 0.5 s` per kill.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::*;

/// The group the two scaling members share.
const GROUP: &str = "alertbridge";

/// An agent with client id `client_id`, subscribed in share group `group` (none: a plain
/// subscription), with its own store, delivering to `sim`.
///
/// The support harness writes every agent's config with the same client id and starts it at
/// once; so the agent is first started against a port nothing listens on (it cannot open a
/// broker session under the shared id), stopped, given its own id and group, and started again.
fn start_member(
    broker_port: u16,
    sim: &Sim,
    opts: &AgentOptions,
    client_id: &str,
    group: Option<&str>,
) -> Agent {
    let nowhere = free_port();
    let mut agent = Agent::start(nowhere, sim, opts);
    agent.kill9();
    let text = std::fs::read_to_string(&agent.config).expect("read the agent config");
    let share = group
        .map(|g| format!("share_group = \"{g}\"\n"))
        .unwrap_or_default();
    let text = text
        .replace(
            &format!("url = \"mqtt://127.0.0.1:{nowhere}\""),
            &format!("url = \"mqtt://127.0.0.1:{broker_port}\""),
        )
        .replace(
            "client_id = \"alertbridge-e2e\"\n",
            &format!("client_id = \"{client_id}\"\n{share}"),
        );
    assert!(
        text.contains(&format!("client_id = \"{client_id}\"")),
        "the harness config changed shape:\n{text}"
    );
    std::fs::write(&agent.config, text).expect("write the agent config");
    agent.start_again();
    agent
}

/// Acked ids that none of `sims` accepted.
fn missing_in(acked: &HashSet<String>, sims: &[&Sim]) -> Vec<String> {
    let got: Vec<HashMap<String, usize>> = sims.iter().map(|s| accepted_counts(s)).collect();
    let mut v: Vec<String> = acked
        .iter()
        .filter(|id| !got.iter().any(|m| m.contains_key(*id)))
        .cloned()
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_splits_the_alerts_and_a_killed_member_loses_none_of_its_share() {
    const N: usize = 4000;
    const KILLS: usize = 1;
    let broker = Mosquitto::start();
    let (sim_a, sim_b, sim_audit) = (
        sim(Duration::from_secs(3600)).await,
        sim(Duration::from_secs(3600)).await,
        sim(Duration::from_secs(3600)).await,
    );
    // Paced like crash.rs, so the load lasts a few seconds and the kill lands in the middle.
    let opts = AgentOptions {
        rate_per_sec: 400.0,
        burst: 50,
        max_in_flight: 8,
        ..AgentOptions::default()
    };
    let mut a = start_member(broker.port, &sim_a, &opts, "alertbridge-gw-a", Some(GROUP));
    let mut b = start_member(broker.port, &sim_b, &opts, "alertbridge-gw-b", Some(GROUP));
    let mut audit = start_member(
        broker.port,
        &sim_audit,
        &opts,
        "alertbridge-audit",
        Some("audit"),
    );
    // Nothing published before every member holds its subscription reaches that member.
    for agent in [&a, &b, &audit] {
        wait_subscribed(agent).await;
    }
    assert!(
        a.logs().contains("$share/alertbridge/plant/+/alerts/#"),
        "the SUBACK names the shared filter\n{}",
        a.logs()
    );

    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-share", cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = tokio::spawn(async move {
        publish_alerts(&plant, 0, N, 4).await;
        plant
    });

    // Mid-load: SIGKILL member a, keep it down for a second (its share keeps arriving at the
    // broker meanwhile), then start it again on the same store and client id.
    tokio::time::sleep(Duration::from_millis(700 + fastrand::u64(0..300))).await;
    a.kill9();
    let a_before = accepted_counts(&sim_a).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.start_again();

    let plant = publisher.await.expect("publisher");
    assert_all_acked(&plant, N, Duration::from_secs(30)).await;
    let acked = plant.acked_ids();

    let done = wait_until(Duration::from_secs(90), || {
        missing_in(&acked, &[&sim_a, &sim_b]).is_empty()
    })
    .await;
    let lost = missing_in(&acked, &[&sim_a, &sim_b]);
    assert!(
        done && lost.is_empty(),
        "LOST {} acked alerts in the group, e.g. {:?}\n--- a ---\n{}\n--- b ---\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        a.logs(),
        b.logs()
    );
    // the audit member, alone in its group, receives every alert
    assert_all_delivered(&acked, &sim_audit, &audit, Duration::from_secs(60)).await;

    let (counts_a, counts_b) = (accepted_counts(&sim_a), accepted_counts(&sim_b));
    let both = counts_a
        .keys()
        .filter(|id| counts_b.contains_key(*id))
        .count();
    let mut merged = counts_a.clone();
    for (id, n) in &counts_b {
        *merged.entry(id.clone()).or_insert(0) += n;
    }
    let duplicates: usize = merged.values().map(|n| n - 1).sum();
    let bound = KILLS * (opts.max_in_flight + (opts.rate_per_sec * 0.5) as usize);
    let counts_audit = accepted_counts(&sim_audit);
    let audit_duplicates: usize = counts_audit.values().map(|n| n - 1).sum();
    println!(
        "share split: published={N} acked={} a={} (before the kill {a_before}) b={} \
         delivered by both={both}",
        acked.len(),
        counts_a.len(),
        counts_b.len()
    );
    println!(
        "share kill: kills={KILLS} acked={} delivered={} duplicates={duplicates} bound={bound}",
        acked.len(),
        merged.len()
    );
    println!(
        "share audit: delivered={} duplicates={audit_duplicates}",
        counts_audit.len()
    );
    assert!(
        !counts_a.is_empty() && !counts_b.is_empty(),
        "both members deliver a share: a={} b={}",
        counts_a.len(),
        counts_b.len()
    );
    assert!(
        counts_a.len() > a_before,
        "the killed member delivered its share queued while it was down: {a_before} before, {} after",
        counts_a.len()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the bound {bound}"
    );
    assert_eq!(
        audit_duplicates, 0,
        "the audit member was never killed: no duplicate"
    );

    for agent in [&mut a, &mut b, &mut audit] {
        assert_clean_exit(agent);
    }
    cancel.cancel();
    let _ = task.await;
}
