//! Duplicates stay bounded when the API is slow (issue 9, item 7).
//!
//! The bug: a request that timed out was retried as if nothing had happened, although Genesys
//! may have launched the flow; with an API answering slower than `request_timeout`, every retry
//! and every breaker probe was another launch for the specialist, without end. Now each
//! timed-out attempt of an alert waits twice as long for its answer (up to
//! `delivery.max_request_timeout_ms`), and after `delivery.max_timeouts` of them the alert is an
//! `Unconfirmed` dead letter: launched at most `max_timeouts` times.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::*;

const MAX_TIMEOUTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_slower_than_the_timeout_launches_each_alert_at_most_max_timeouts_times() {
    // The simulator accepts every launch (it counts as an execution) and answers 6 s later:
    // after every timeout the agent tries (1 s, 2 s, then 4 s = the cap).
    let sim = sim_with(|c| c.faults.answer_latency_ms = 6_000).await;
    let mut rig = Scenario::start_subscribed(
        "plant-slow-api",
        sim,
        &AgentOptions {
            request_timeout_secs: 1,
            delivery_extra: format!("max_timeouts = {MAX_TIMEOUTS}\nmax_request_timeout_ms = 4000"),
            ..AgentOptions::with_admin()
        },
    )
    .await;
    let slow = rig.publish("slow", 0..3, "major").await;
    rig.wait_acked(3, Duration::from_secs(10)).await;
    rig.status_until(Duration::from_secs(40), |s| {
        s["dead_letters"].as_u64() == Some(3)
    })
    .await;

    // Executions per alertId at the simulator: the bound.
    let mut launched: HashMap<String, Vec<SystemTime>> = HashMap::new();
    for a in rig.sim.accepted() {
        if let Some(id) = a.alert_id {
            launched.entry(id).or_default().push(a.at);
        }
    }
    for id in &slow {
        let at = launched.get(id).cloned().unwrap_or_default();
        assert!(
            !at.is_empty() && at.len() <= MAX_TIMEOUTS,
            "{id} launched {} times (bound {MAX_TIMEOUTS})",
            at.len()
        );
        // the next attempt waited out a longer timeout each time
        for (i, w) in at.windows(2).enumerate() {
            let gap = w[1].duration_since(w[0]).unwrap_or_default();
            let timeout = Duration::from_secs(1 << i);
            assert!(
                gap >= timeout,
                "{id}: attempt {} after {gap:?}, timeout {timeout:?}",
                i + 2
            );
        }
    }

    // The API is fast again: a new alert goes once; the unconfirmed ones are not sent again.
    rig.sim.set_faults(Faults::default());
    let fresh = rig.publish("fresh", 0..1, "major").await;
    rig.wait_accepted(slow.len() + 1, Duration::from_secs(15))
        .await;
    let counts = accepted_counts(&rig.sim);
    assert_eq!(counts.get(&fresh[0]), Some(&1));
    rig.stop().await;
    let after = accepted_counts(&rig.sim);
    for id in &slow {
        assert_eq!(after.get(id), counts.get(id), "{id} was sent again");
    }

    let dead = rig.agent.dead_letters();
    assert_eq!(dead.len(), slow.len(), "{dead:#?}");
    for d in &dead {
        assert_eq!(d["kind"], "Unconfirmed", "{d:#}");
        let reason = d["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(&format!("{MAX_TIMEOUTS} times")) && reason.contains("alertId"),
            "{d:#}"
        );
        assert_eq!(d["attempts"], Value::from(MAX_TIMEOUTS), "{d:#}");
    }
    assert!(rig.agent.pending_records().is_empty());
    rig.finish().await;
}
