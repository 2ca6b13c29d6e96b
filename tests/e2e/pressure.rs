//! Delivery under pressure (issue 4): a plant's worst hour, one behaviour per test, observed from
//! outside — what the Genesys simulator saw (`sim.requests()`, `sim.accepted()`), what the agent
//! says (`status --json` with live counters, its log) and what it kept (`dead-letters --json`,
//! the log after a kill).
//!
//! Timing assertions are one-sided and follow from the agent's own rules (a request cannot
//! arrive *before* a wait the agent must honour), with margins; none asserts speed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::*;

/// Wait until Genesys answered `n` launches with `status`.
async fn wait_answers(rig: &Scenario, status: u16, n: usize, timeout: Duration) {
    let sim = &rig.sim;
    assert!(
        wait_until(timeout, || with_status(&launches(sim), status).len() >= n).await,
        "no {n} answers {status}: {:?}\n{}",
        sim.stats(),
        rig.agent.logs()
    );
}

fn counters(st: &Value) -> &Value {
    &st["counters"]
}

/// Requests with this status, in arrival order.
fn with_status(reqs: &[genesys_sim::LoggedRequest], status: u16) -> Vec<SystemTime> {
    reqs.iter()
        .filter(|r| r.status == status)
        .map(|r| r.at)
        .collect()
}

/// The most arrivals in any window of length `w` starting at an arrival.
fn most_in_window(times: &[SystemTime], w: Duration) -> usize {
    let mut t: Vec<SystemTime> = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        if j < i {
            j = i;
        }
        while j < t.len() && t[j].duration_since(t[i]).unwrap_or_default() < w {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// Arrivals of the launches Genesys saw while it was failing: more than 300 ms after `from`
/// (answers already on their way by then) and before `cleared`.
fn probes(sim: &Sim, from: SystemTime, cleared: SystemTime) -> Vec<SystemTime> {
    launches(sim)
        .iter()
        .map(|r| r.at)
        .filter(|t| *t < cleared && since(from, *t) > Duration::from_millis(300))
        .collect()
}

/// Probes were sent, and no two of them less than `min` apart (`while_` names the agent's state).
fn assert_probes_spaced(probes: &[SystemTime], min: Duration, while_: &str) {
    assert!(!probes.is_empty(), "probes were sent");
    for w in probes.windows(2) {
        let gap = since(w[0], w[1]);
        assert!(gap >= min, "two requests {gap:?} apart {while_}");
    }
}

/// Let the failing Genesys meet the agent until `observe` after `from`, then clear its faults,
/// wait (up to 15 s) until it accepted `n` alerts and stop the agent cleanly; returns when the
/// faults were cleared, the end of the window in which [`probes`] are counted.
async fn fix_genesys_after(
    rig: &mut Scenario,
    from: SystemTime,
    observe: Duration,
    n: usize,
) -> SystemTime {
    while since(from, SystemTime::now()) < observe {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cleared = SystemTime::now();
    rig.sim.set_faults(Faults::default());
    rig.wait_accepted(n, Duration::from_secs(15)).await;
    rig.stop().await;
    cleared
}

/// Delivery paused loudly and resumed by itself, and no alert became a dead letter meanwhile.
fn assert_paused_and_resumed_without_dead_letters(agent: &Agent) {
    assert!(agent.dead_letters().is_empty());
    let logs = agent.logs();
    assert!(logs.contains("DELIVERY PAUSED"), "{logs}");
    assert!(logs.contains("delivery resumed"), "{logs}");
}

/// Point 1: the token bucket and the concurrency cap bound what Genesys sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_and_concurrency_cap_bound_what_genesys_sees() {
    const N: usize = 80;
    const RATE: f64 = 20.0;
    const BURST: usize = 5;
    let sim = sim_with(|c| c.faults.latency_ms = 50).await;
    let rig = Scenario::start_subscribed(
        "plant-bucket",
        sim,
        &AgentOptions {
            rate_per_sec: RATE,
            burst: BURST as u32,
            max_in_flight: 3,
            ..AgentOptions::default()
        },
    )
    .await;
    rig.publish("paced", 0..N, "major").await;
    rig.wait_accepted(N, Duration::from_secs(30)).await;
    let times: Vec<SystemTime> = launches(&rig.sim).iter().map(|r| r.at).collect();
    assert_eq!(times.len(), N, "one request per alert");
    // Every request is answered ≥ 50 ms after it arrived, and the agent starts one only in a
    // free slot: no 48 ms holds more than max_in_flight arrivals.
    let concurrent = most_in_window(&times, Duration::from_millis(48));
    assert!(concurrent <= 3, "{concurrent} requests at once, cap 3");
    // Any second holds at most burst + rate (10 % slack for arrival jitter, plus one).
    let per_second = most_in_window(&times, Duration::from_secs(1));
    let bound = BURST + (RATE * 1.1) as usize + 1;
    assert!(
        per_second <= bound,
        "{per_second} requests in one second, bound {bound}"
    );
    rig.finish().await;
}

/// Point 1: a 429 with `Retry-After: 2` stops every request of the client for 2 s (not only
/// the throttled alert's), the rate is halved and recovers gradually once answers are good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_429_silences_the_whole_client_and_the_rate_recovers_gradually() {
    const RATE: f64 = 50.0;
    let sim = sim(Duration::from_secs(3600)).await;
    let rig = Scenario::start_subscribed(
        "plant-429",
        sim,
        &AgentOptions {
            rate_per_sec: RATE,
            burst: 10,
            max_in_flight: 4,
            backoff_initial_ms: 100,
            backoff_max_ms: 300,
            ..AgentOptions::with_admin()
        },
    )
    .await;
    rig.publish("warm", 0..20, "major").await;
    rig.wait_accepted(20, Duration::from_secs(15)).await;

    rig.sim.set_faults(Faults {
        rate_limit_429: 1.0,
        retry_after_secs: Some(2),
        ..Faults::default()
    });
    rig.publish("throttled", 0..40, "major").await;
    // two episodes: the first 429s, then the next attempt after the 2 s pause
    let sim = &rig.sim;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let t = with_status(&launches(sim), 429);
            t.len() >= 2 && since(t[0], *t.last().unwrap_or(&t[0])) >= Duration::from_secs(2)
        })
        .await,
        "{:?}\n{}",
        sim.stats(),
        rig.agent.logs()
    );
    let st = rig
        .status_until(Duration::from_secs(5), |s| {
            counters(s)["throttled"].as_u64() >= Some(2)
        })
        .await;
    let lowered = counters(&st)["rate_per_sec"].as_f64().unwrap_or(RATE);
    assert!(lowered < RATE, "rate lowered after 429s: {st:#}");

    let cleared = SystemTime::now();
    rig.sim.set_faults(Faults::default());
    rig.wait_accepted(21, Duration::from_secs(10)).await;
    let st = rig.status_until(Duration::from_secs(5), |_| true).await;
    let r1 = counters(&st)["rate_per_sec"].as_f64().unwrap_or(0.0);
    rig.wait_accepted(60, Duration::from_secs(30)).await;
    let st = rig.status_until(Duration::from_secs(5), |_| true).await;
    let r2 = counters(&st)["rate_per_sec"].as_f64().unwrap_or(0.0);
    assert!(
        r1 < RATE && r2 > r1 && r2 < RATE,
        "gradual recovery: {r1} then {r2} (configured {RATE})"
    );

    // No request of any alert between 300 ms (answers already on their way) and 2 s after a 429.
    let reqs = launches(&rig.sim);
    let throttles = with_status(&reqs, 429);
    assert!(throttles.iter().all(|t| *t < cleared));
    for t in &throttles {
        let early: Vec<_> = reqs
            .iter()
            .filter(|r| {
                let d = since(*t, r.at);
                r.at > *t && d > Duration::from_millis(300) && d < Duration::from_millis(1950)
            })
            .map(|r| (since(*t, r.at), r.status))
            .collect();
        assert!(early.is_empty(), "requests inside a Retry-After: {early:?}");
    }
    rig.finish().await;
}

/// Point 2: the next attempt time is persisted; after a kill -9 during backoff, the restarted
/// agent sends no alert before its persisted time (no retry stampede).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_next_attempt_survives_a_kill_so_a_restart_is_no_retry_stampede() {
    const N: usize = 20;
    let mut rig = Scenario::start_failing(
        "plant-backoff",
        503,
        &AgentOptions {
            max_in_flight: 20,
            backoff_initial_ms: 8_000,
            backoff_max_ms: 8_000,
            delivery_extra: "backoff_multiplier = 1.0".into(),
            ..AgentOptions::default()
        },
    )
    .await;
    rig.publish("backoff", 0..N, "major").await;
    let sim = &rig.sim;
    assert!(
        wait_until(Duration::from_secs(15), || launches(sim).len() >= N).await,
        "{}",
        rig.agent.logs()
    );
    // The attempt bookkeeping is written without fsync (a lost update only repeats an attempt);
    // sled writes it out every 500 ms: give it two periods before the crash.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    rig.agent.kill9();

    let next: HashMap<String, u64> = rig
        .agent
        .pending_records()
        .into_iter()
        .map(|(_, r)| {
            assert!(r.attempts >= 1, "{r:?}");
            (r.alert_id, r.next_attempt_ms)
        })
        .collect();
    assert_eq!(next.len(), N);
    rig.sim.set_faults(Faults::default());
    let restarted = unix_ms(SystemTime::now());
    let in_future = next.values().filter(|t| **t > restarted + 1_000).count();
    assert!(
        in_future >= 1,
        "the test needs alerts still in backoff at restart: {next:?}"
    );
    let before = launches(&rig.sim).len();
    rig.agent.restart();
    rig.wait_accepted(N, Duration::from_secs(20)).await;
    for a in rig.sim.accepted() {
        let id = a.alert_id.clone().unwrap_or_default();
        let at = unix_ms(a.at);
        let due = next[&id];
        assert!(
            at + 1 >= due,
            "{id} sent {} ms before its persisted next attempt",
            due - at
        );
    }
    assert_eq!(
        launches(&rig.sim).len() - before,
        N,
        "after the restart each alert was sent once, at its time"
    );
    rig.finish().await;
}

/// Point 3: after N consecutive failures the breaker opens; Genesys then sees one probe per
/// cool-down and nothing else; ingest goes on; the first good probe closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_n_failures_and_genesys_sees_only_probes_until_one_succeeds() {
    let mut rig = Scenario::start_failing(
        "plant-breaker",
        503,
        &AgentOptions {
            rate_per_sec: 200.0,
            burst: 20,
            max_in_flight: 4,
            backoff_initial_ms: 50,
            backoff_max_ms: 200,
            breaker_failures: 3,
            breaker_cooldown_ms: 1_000,
            ..AgentOptions::with_admin()
        },
    )
    .await;
    rig.publish("outage", 0..20, "major").await;
    let sim = &rig.sim;
    assert!(wait_until(Duration::from_secs(10), || launches(sim).len() >= 3).await);
    let st = rig
        .status_until(Duration::from_secs(5), |s| {
            counters(s)["breaker_open"] == Value::Bool(true)
        })
        .await;
    assert!(
        matches!(
            counters(&st)["breaker"].as_str(),
            Some("open" | "half_open")
        ),
        "{st:#}"
    );
    // ingest does not depend on Genesys
    rig.publish("during", 0..10, "major").await;
    rig.wait_acked(30, Duration::from_secs(10)).await;
    // observe the open breaker for a while
    let opened_at = launches(&rig.sim)[2].at;
    let cleared = fix_genesys_after(&mut rig, opened_at, Duration::from_millis(4_500), 30).await;

    let probes = probes(&rig.sim, opened_at, cleared);
    assert_probes_spaced(
        &probes,
        Duration::from_millis(950),
        "while the breaker was open",
    );
    assert!(
        since(opened_at, probes[0]) >= Duration::from_millis(950),
        "first probe only after the cool-down"
    );
    let logs = rig.agent.logs();
    for line in [
        "circuit breaker OPEN",
        "circuit breaker half-open",
        "circuit breaker closed",
    ] {
        assert!(logs.contains(line), "log lacks {line:?}\n{logs}");
    }
    rig.finish().await;
}

/// Point 4: Genesys rotates the secret and revokes the tokens; the agent pauses with a loud,
/// specific error (probing at a bounded pace, not looping), and once the secret file holds the
/// new secret — no restart, no signal — it delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_file_is_picked_up_without_restart_and_no_alert_is_lost() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut rig = Scenario::start_subscribed(
        "plant-rotate",
        sim,
        &AgentOptions {
            breaker_cooldown_ms: 500,
            ..AgentOptions::with_admin()
        },
    )
    .await;
    rig.publish("before", 0..10, "major").await;
    rig.wait_accepted(10, Duration::from_secs(15)).await;

    rig.sim.set_client_secret("e2e-secret-rotated");
    rig.sim.revoke_tokens();
    rig.publish("between", 0..10, "major").await;
    let st = rig
        .status_until(Duration::from_secs(10), |s| {
            counters(s)["paused"] == Value::Bool(true)
        })
        .await;
    let reason = counters(&st)["pause_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("rejected the client credentials") && reason.contains("invalid_client"),
        "a specific reason: {reason}"
    );
    let token_requests = |sim: &Sim| {
        sim.requests()
            .iter()
            .filter(|r| r.endpoint == genesys_sim::Endpoint::Token)
            .count()
    };
    let t0 = token_requests(&rig.sim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = token_requests(&rig.sim) - t0;
    assert!(
        during <= 10,
        "{during} token requests in 2 s of pause (one probe per 500 ms)"
    );

    // the operator (or the secret manager) writes the new secret; atomically, as they should
    let tmp = rig.agent.dir.path().join("secret.new");
    std::fs::write(&tmp, "e2e-secret-rotated\n").expect("write secret");
    std::fs::rename(&tmp, rig.agent.secret_path()).expect("replace secret");
    rig.publish("after", 0..10, "major").await;
    rig.wait_accepted(30, Duration::from_secs(15)).await;
    rig.stop().await;

    let counts = accepted_counts(&rig.sim);
    assert!(
        counts.values().all(|n| *n == 1),
        "a 401 launches nothing: {counts:?}"
    );
    assert_paused_and_resumed_without_dead_letters(&rig.agent);
    rig.finish().await;
}

/// Point 4: rotated in the file first, then at Genesys: the 401 makes the agent fetch a token
/// with the secret read afresh, so it never pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotated_in_the_file_before_genesys_needs_no_pause() {
    let sim = sim(Duration::from_secs(3600)).await;
    let mut rig =
        Scenario::start_subscribed("plant-rotate-first", sim, &AgentOptions::default()).await;
    rig.publish("before", 0..10, "major").await;
    rig.wait_accepted(10, Duration::from_secs(15)).await;
    let tmp = rig.agent.dir.path().join("secret.new");
    std::fs::write(&tmp, "e2e-secret-next\n").expect("write secret");
    std::fs::rename(&tmp, rig.agent.secret_path()).expect("replace secret");
    rig.sim.set_client_secret("e2e-secret-next");
    rig.sim.revoke_tokens();
    rig.publish("after", 0..10, "major").await;
    rig.wait_accepted(20, Duration::from_secs(15)).await;
    rig.stop().await;
    assert!(
        rig.sim.stats().by_status.get(&401).copied().unwrap_or(0) >= 1,
        "the revoked token was used once"
    );
    let logs = rig.agent.logs();
    assert!(!logs.contains("DELIVERY PAUSED"), "{logs}");
    rig.finish().await;
}

/// Point 6: permanent API rejections (413, 422) and a malformed payload end as dead letters with
/// kind, status, the API's message, attempts and first/last attempt times; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_malformed_alerts_become_dead_letters_with_status_message_and_attempts() {
    let sim = sim_with(|c| c.max_body_bytes = 2048).await;
    let mut rig = Scenario::start_subscribed("plant-reject", sim, &AgentOptions::default()).await;
    let ok = rig.publish("ok", 0..10, "major").await;
    let mut big = Vec::new();
    for i in 0..2 {
        let (t, b, id) = leveled_alert("big", i, "major", 3_000);
        rig.plant.publish(t, b, id.clone()).await.expect("publish");
        big.push(id);
    }
    rig.plant
        .publish_malformed(b"{\"alert_id\": oops")
        .await
        .expect("publish");
    rig.wait_accepted(10, Duration::from_secs(15)).await;
    wait_answers(&rig, 413, 2, Duration::from_secs(10)).await;
    rig.sim.update_faults(|f| f.force_status = Some(422));
    let unprocessable = rig.publish("unprocessable", 0..2, "major").await;
    wait_answers(&rig, 422, 2, Duration::from_secs(10)).await;
    rig.sim.update_faults(|f| f.force_status = None);
    rig.wait_acked(15, Duration::from_secs(10)).await;
    rig.stop().await;

    let dead = rig.agent.dead_letters();
    assert_eq!(dead.len(), 5, "{dead:#?}");
    let by_id: HashMap<String, &Value> = dead
        .iter()
        .filter_map(|d| Some((d["alert_id"].as_str()?.to_string(), d)))
        .collect();
    for (ids, status) in [(&big, 413), (&unprocessable, 422)] {
        for id in ids {
            let d = by_id
                .get(id)
                .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:#?}"));
            assert_eq!(d["kind"], "Rejected", "{d:#}");
            assert_eq!(d["status"], status, "{d:#}");
            assert_eq!(d["attempts"], 1, "{d:#}");
            let first = d["first_attempt_ms"].as_u64().expect("first attempt time");
            let last = d["last_attempt_ms"].as_u64().expect("last attempt time");
            let received = d["received_at_ms"].as_u64().expect("received time");
            let dead_at = d["dead_at_ms"].as_u64().expect("dead time");
            assert!(
                received <= first && first <= last && last <= dead_at,
                "{d:#}"
            );
        }
    }
    for id in &big {
        let msg = by_id[id]["api_message"].as_str().unwrap_or("");
        assert!(
            msg.contains("size limit"),
            "the API's message is kept: {msg}"
        );
    }
    let malformed: Vec<_> = dead.iter().filter(|d| d["kind"] == "Malformed").collect();
    assert_eq!(malformed.len(), 1, "{dead:#?}");
    assert!(!malformed[0]["reason"].as_str().unwrap_or("").is_empty());
    // nothing lost: every other alert was accepted
    let got = accepted_counts(&rig.sim);
    assert!(ok.iter().all(|id| got.contains_key(id)));
    let st = rig.status_until(Duration::from_secs(5), |_| true).await;
    assert_eq!(
        (st["pending"].as_u64(), st["dead_letters"].as_u64()),
        (Some(0), Some(5))
    );
    rig.finish().await;
}

/// Point 6: a configuration fault (404 flow not found, then 403 missing permission) is not
/// dead-lettered per alert: delivery pauses with a loud, specific error, the alerts stay in the
/// log, Genesys sees one probe per interval, and delivery resumes by itself once it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_fault_pauses_delivery_keeps_the_alerts_and_resumes_when_fixed() {
    let mut rig = Scenario::start_failing(
        "plant-pause",
        404,
        &AgentOptions {
            breaker_cooldown_ms: 700,
            ..AgentOptions::with_admin()
        },
    )
    .await;
    rig.publish("held", 0..10, "major").await;
    let st = rig
        .status_until(Duration::from_secs(10), |s| {
            counters(s)["paused"] == Value::Bool(true) && s["pending"].as_u64() == Some(10)
        })
        .await;
    assert!(
        counters(&st)["pause_reason"]
            .as_str()
            .unwrap_or("")
            .contains("flow_id"),
        "{st:#}"
    );
    assert_eq!(st["dead_letters"].as_u64(), Some(0));
    rig.sim.update_faults(|f| f.force_status = Some(403));
    rig.status_until(Duration::from_secs(5), |s| {
        counters(s)["pause_reason"]
            .as_str()
            .unwrap_or("")
            .contains("architect:flow:launch")
    })
    .await;
    rig.publish("more", 0..5, "major").await;
    rig.wait_acked(15, Duration::from_secs(10)).await;
    let first = launches(&rig.sim)[0].at;
    let cleared = fix_genesys_after(&mut rig, first, Duration::from_secs(3), 15).await;

    let probes = probes(&rig.sim, first, cleared);
    assert_probes_spaced(&probes, Duration::from_millis(650), "while paused");
    assert_paused_and_resumed_without_dead_letters(&rig.agent);
    rig.finish().await;
}

/// Point 7: during an outage, normal alerts past their TTL move to dead letters as `Expired` —
/// counted in status, logged, listed — while critical alerts (no TTL by default) wait and are
/// delivered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_alerts_become_visible_dead_letters_and_critical_ones_never_expire() {
    let mut rig = Scenario::start_failing(
        "plant-ttl",
        503,
        &AgentOptions {
            backoff_initial_ms: 100,
            backoff_max_ms: 500,
            breaker_failures: 2,
            breaker_cooldown_ms: 1_000,
            delivery_extra: "ttl_normal_secs = 2".into(),
            ..AgentOptions::with_admin()
        },
    )
    .await;
    let stale = rig.publish("stale", 0..10, "warning").await;
    let urgent = rig.publish("urgent", 0..5, "critical").await;
    rig.wait_acked(15, Duration::from_secs(10)).await;
    // still in the outage: the expiry is visible when it happens
    let st = rig
        .status_until(Duration::from_secs(10), |s| {
            counters(s)["expired"].as_u64() == Some(10)
        })
        .await;
    assert_eq!(st["dead_letters"].as_u64(), Some(10), "{st:#}");
    assert_eq!(st["pending"].as_u64(), Some(5), "{st:#}");
    assert_eq!(st["pending_critical"].as_u64(), Some(5), "{st:#}");
    assert!(rig.sim.accepted().is_empty());

    rig.sim.set_faults(Faults::default());
    rig.wait_accepted(5, Duration::from_secs(15)).await;
    rig.stop().await;
    let got = accepted_counts(&rig.sim);
    assert!(urgent.iter().all(|id| got.contains_key(id)), "{got:?}");
    assert!(stale.iter().all(|id| !got.contains_key(id)), "{got:?}");

    let dead = rig.agent.dead_letters();
    assert_eq!(dead.len(), 10);
    let ids: HashSet<String> = dead
        .iter()
        .filter_map(|d| d["alert_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, stale.iter().cloned().collect::<HashSet<_>>());
    for d in &dead {
        assert_eq!(d["kind"], "Expired", "{d:#}");
        let reason = d["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("TTL") && reason.contains("normal"),
            "{reason}"
        );
    }
    let logs = rig.agent.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("alert moved to dead letters") && l.contains("Expired")),
        "{logs}"
    );
    rig.finish().await;
}

/// Point 5: with a backlog, critical alerts go first, but after every `normal_every` of them
/// one normal alert goes: no lane starves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_alerts_go_first_through_a_backlog_and_normal_ones_are_not_starved() {
    const EACH: usize = 24;
    let rig = Scenario::start_failing(
        "plant-lanes",
        503,
        &AgentOptions {
            rate_per_sec: 500.0,
            burst: 50,
            max_in_flight: 1,
            backoff_initial_ms: 100,
            backoff_max_ms: 500,
            breaker_failures: 1,
            breaker_cooldown_ms: 3_000,
            delivery_extra: "normal_every = 3".into(),
            ..AgentOptions::default()
        },
    )
    .await;
    // one failure opens the breaker; the backlog builds up behind it
    rig.publish("c-opener", 0..1, "critical").await;
    let sim = &rig.sim;
    assert!(wait_until(Duration::from_secs(10), || !launches(sim).is_empty()).await);
    for i in 0..EACH {
        publish_leveled(&rig.plant, "n", i, "warning").await;
        publish_leveled(&rig.plant, "c", i, "critical").await;
    }
    rig.wait_acked(2 * EACH + 1, Duration::from_secs(10)).await;
    rig.sim.set_faults(Faults::default());
    rig.wait_accepted(2 * EACH + 1, Duration::from_secs(20))
        .await;

    let lanes: String = rig
        .sim
        .accepted()
        .iter()
        .map(|a| match a.alert_id.as_deref() {
            Some(id) if id.starts_with("c-") => 'C',
            _ => 'N',
        })
        .collect();
    let last_c = lanes.rfind('C').unwrap_or(0);
    let head = &lanes[..=last_c];
    let normals_first = head.matches('N').count();
    let longest_c_run = head.split('N').map(str::len).max().unwrap_or(0);
    assert!(
        longest_c_run <= 3,
        "at most normal_every critical in a row while normals wait: {lanes}"
    );
    assert!(
        (1..=9).contains(&normals_first),
        "critical first, normals not starved: {lanes}"
    );
    rig.finish().await;
}

/// Point 9: an outage much longer than any backoff: the agent ingests everything meanwhile
/// (every publish acked while Genesys is still down), the breaker keeps the API quiet, and
/// afterwards the backlog drains within the configured rate, critical alerts first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_is_ingested_in_full_then_drained_at_the_configured_rate_critical_first() {
    const N: usize = 160;
    const RATE: f64 = 40.0;
    const BURST: usize = 10;
    let sim = sim(Duration::from_secs(3600)).await;
    sim.outage_for(Duration::from_secs(7));
    let mut rig = Scenario::start_subscribed(
        "plant-outage",
        sim,
        &AgentOptions {
            rate_per_sec: RATE,
            burst: BURST as u32,
            max_in_flight: 8,
            backoff_initial_ms: 200,
            backoff_max_ms: 2_000,
            breaker_failures: 3,
            breaker_cooldown_ms: 1_000,
            delivery_extra: "normal_every = 10".into(),
            ..AgentOptions::with_admin()
        },
    )
    .await;
    let mut critical = HashSet::new();
    for i in 0..N {
        let level = if i % 5 == 0 { "critical" } else { "warning" };
        let id = publish_leveled(&rig.plant, "outage", i, level).await;
        if level == "critical" {
            critical.insert(id);
        }
    }
    rig.wait_acked(N, Duration::from_secs(10)).await;
    // the agent took every alert into its log while Genesys was still down
    let st = rig
        .status_until(Duration::from_secs(5), |s| {
            s["pending"].as_u64() == Some(N as u64)
        })
        .await;
    let down = rig
        .sim
        .faults()
        .outage_until
        .is_some_and(|u| u > SystemTime::now());
    assert!(down, "all {N} stored while Genesys was still down: {st:#}");
    assert_eq!(st["pending_critical"].as_u64(), Some(critical.len() as u64));

    rig.wait_accepted(N, Duration::from_secs(30)).await;
    rig.stop().await;
    // The token endpoint was down too: the agent said so, and asked at the breaker's pace
    // (one probe per cool-down), not in a loop.
    let logs = rig.agent.logs();
    assert!(logs.contains("token endpoint unavailable"), "{logs}");
    let until = rig.sim.faults().outage_until.expect("outage set");
    let token_calls = rig
        .sim
        .requests()
        .iter()
        .filter(|r| r.endpoint == genesys_sim::Endpoint::Token && r.at < until)
        .count();
    assert!(
        token_calls <= 7 + 4,
        "{token_calls} token requests in a 7 s outage"
    );
    let accepted = rig.sim.accepted();
    let times: Vec<SystemTime> = accepted.iter().map(|a| a.at).collect();
    let per_second = most_in_window(&times, Duration::from_secs(1));
    let bound = BURST + (RATE * 1.1) as usize + 1;
    assert!(
        per_second <= bound,
        "{per_second} in one second, bound {bound}"
    );
    let last_critical = accepted
        .iter()
        .rposition(|a| a.alert_id.as_ref().is_some_and(|id| critical.contains(id)))
        .unwrap_or(0);
    // 32 critical, one normal per 10 of them, requests in flight may overtake each other
    let bound = critical.len() + critical.len() / 10 + 8 + 3;
    assert!(
        last_critical < bound,
        "last critical alert at position {last_critical} of {N}, bound {bound}"
    );
    assert!(rig.agent.pending_records().is_empty());
    assert!(rig.agent.dead_letters().is_empty());
    rig.finish().await;
}
