//! Health and readiness on the admin endpoint (the issue on running unattended, §2; the
//! subscription guarantee of issue 9 point 2): `/ready` is 200 only while the broker is
//! connected and every subscription held, 503 with the reason otherwise; `/health` (and
//! `/healthz`) says the main loops turn.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_broker_and_health_the_main_loops() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut s = Scenario::start_subscribed("plant-ready", sim, &AgentOptions::with_admin()).await;
    let ready = |agent: &Agent| agent.get("/ready");
    assert_ready_within(&s.agent, Duration::from_secs(10), "ready once subscribed").await;
    for path in ["/health", "/healthz"] {
        let (code, body) = s.agent.get(path).expect("health answers");
        assert_eq!(
            (code, &body["ok"]),
            (200, &serde_json::json!(true)),
            "{path}: {body}"
        );
    }

    // The broker goes away: not ready, with the reason; still alive.
    tokio::task::block_in_place(|| s.broker.stop());
    assert!(
        wait_until(Duration::from_secs(20), || ready(&s.agent).is_some_and(
            |(c, b)| c == 503
                && b["reasons"]
                    .to_string()
                    .contains("not connected to the MQTT broker")
        ))
        .await,
        "not ready without the broker: {:?}",
        ready(&s.agent)
    );
    assert_eq!(s.agent.get("/health").expect("health").0, 200);

    // Back: ready again by itself.
    tokio::task::block_in_place(|| s.broker.restart());
    assert_ready_within(
        &s.agent,
        Duration::from_secs(30),
        "ready again after the broker returned",
    )
    .await;
    s.finish().await;
}

/// `/ready` answers 200 within `timeout`; else the test fails with `what`, the last answer and
/// the agent's logs.
async fn assert_ready_within(agent: &Agent, timeout: Duration, what: &str) {
    assert!(
        wait_until(timeout, || agent
            .get("/ready")
            .is_some_and(|(c, _)| c == 200))
        .await,
        "{what}: {:?}\n{}",
        agent.get("/ready"),
        agent.logs()
    );
}
