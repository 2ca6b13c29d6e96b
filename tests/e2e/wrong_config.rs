//! A wrong configuration pauses, it does not dead-letter the backlog (issue 9, item 4).
//!
//! The bug: every 4xx except 401/403/404/429 dead-lettered its alert and let the next one go, so
//! one change in Architect that makes Genesys answer 400 to every launch (the flow's inputs no
//! longer match) moved the whole backlog into dead letters at full rate. Now the
//! `pause_after_rejections`-th identical rejection in a row (same status and API code, default
//! 5) pauses delivery like a 403: those 5 are dead letters, the rest stay pending, the pause is
//! named in `status`, a probe goes once per cool-down, and delivery resumes by itself.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_to_everything_pauses_after_five_dead_letters_and_delivers_the_rest_after_the_fix() {
    const N: usize = 1000;
    const PAUSE_AFTER: usize = 5;
    let mut rig = Scenario::start_failing(
        "plant-wrong-config",
        400,
        &AgentOptions {
            breaker_cooldown_ms: 500,
            ..AgentOptions::with_admin()
        },
    )
    .await;
    let ids = rig.publish("wrong", 0..N, "major").await;
    rig.wait_acked(N, Duration::from_secs(60)).await;
    let st = rig
        .status_until(Duration::from_secs(30), |s| {
            s["counters"]["paused"] == Value::Bool(true)
                && s["pending"].as_u64().unwrap_or(0) + s["dead_letters"].as_u64().unwrap_or(0)
                    == N as u64
        })
        .await;
    let reason = st["counters"]["pause_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("HTTP 400") && reason.contains("in a row rejected alike"),
        "{st:#}"
    );
    // Probes go once per cool-down and meet the 400: nothing more is dead-lettered.
    let probes_from = rig.sim.stats().by_status.get(&400).copied().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .sim
            .stats()
            .by_status
            .get(&400)
            .copied()
            .unwrap_or(0)
            >= probes_from + 3)
        .await,
        "no probes while paused\n{}",
        rig.agent.logs()
    );
    let st = rig.status_until(Duration::from_secs(5), |_| true).await;
    let dead = st["dead_letters"].as_u64().unwrap_or(u64::MAX) as usize;
    assert!(dead <= PAUSE_AFTER, "{dead} dead letters: {st:#}");
    assert_eq!(st["pending"].as_u64(), Some((N - dead) as u64), "{st:#}");

    // The fix in Architect: the next probe passes and everything else is delivered.
    rig.sim.set_faults(Faults::default());
    rig.wait_accepted(N - dead, Duration::from_secs(60)).await;
    rig.stop().await;

    let letters = rig.agent.dead_letters();
    assert_eq!(letters.len(), dead);
    let got = accepted_counts(&rig.sim);
    for id in &ids {
        let dead_lettered = letters.iter().any(|d| d["alert_id"] == id.as_str());
        assert!(
            got.contains_key(id) != dead_lettered,
            "{id}: delivered {} dead letter {dead_lettered}",
            got.contains_key(id)
        );
    }
    for d in &letters {
        assert_eq!(d["kind"], "Rejected", "{d:#}");
        assert_eq!(d["status"], 400, "{d:#}");
    }
    let logs = rig.agent.logs();
    assert!(logs.contains("DELIVERY PAUSED"), "{logs}");
    assert!(logs.contains("delivery resumed"), "{logs}");
    assert!(rig.agent.pending_records().is_empty());
    rig.finish().await;
}
