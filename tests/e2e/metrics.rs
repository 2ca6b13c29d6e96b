//! What an operator's tools see (the issue on running unattended, §1 and §4): `GET /metrics`
//! moves when alerts flow, serves every metric docs/operations.md lists, and an unreachable
//! broker at start-up is a warning in the log within seconds, a 503 from `/ready` and
//! `alertbridge_broker_connected 0`.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

/// The admin endpoint's `host:port`, read back from the agent's config.
fn admin_addr(agent: &Agent) -> String {
    let text = std::fs::read_to_string(&agent.config).expect("the test config is readable");
    text.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("listen = \"")?;
            v.strip_suffix('"').map(str::to_string)
        })
        .filter(|a| !a.is_empty())
        .expect("the agent was started with admin: true")
}

/// `GET /metrics`: the status code, the `Content-Type` and the body.
fn scrape(agent: &Agent) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let addr = admin_addr(agent);
    let mut s = std::net::TcpStream::connect(&addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((code, content_type, body.to_string()))
}

/// Every sample of a Prometheus text body: `name{labels}` → value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(s: &HashMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics: {s:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_alerts_flow() {
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..AgentOptions::default()
    };
    let s = Scenario::start_subscribed("plant-metrics", sim, &opts).await;
    let (code, content_type, body) = scrape(&s.agent).expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let before = samples(&body);
    assert_eq!(value(&before, "alertbridge_alerts_persisted_total"), 0.0);

    let mut ids = s.publish("metrics-normal", 0..12, "warning").await;
    ids.extend(s.publish("metrics-critical", 0..8, "critical").await);
    // And one payload that is not JSON: a dead letter at ingest, counted by kind.
    s.plant
        .publish(
            "plant/north/alerts/SN-north-0001".into(),
            "not json".into(),
            "metrics-malformed".into(),
        )
        .await
        .expect("publish queued");
    s.wait_acked(21, Duration::from_secs(20)).await;
    s.wait_accepted(20, Duration::from_secs(30)).await;

    // Delivered is counted right after the 2xx; poll until the scrape shows all 20.
    let mut after = HashMap::new();
    let moved = wait_until(Duration::from_secs(10), || {
        after = scrape(&s.agent)
            .map(|(_, _, b)| samples(&b))
            .unwrap_or_default();
        after
            .get("alertbridge_alerts_delivered_total{lane=\"normal\"}")
            .zip(after.get("alertbridge_alerts_delivered_total{lane=\"critical\"}"))
            == Some((&12.0, &8.0))
    })
    .await;
    assert!(moved, "delivered by lane never reached 12 + 8: {after:#?}");
    for (series, want) in [
        ("alertbridge_alerts_persisted_total", 20.0),
        (
            "alertbridge_alerts_dead_lettered_total{kind=\"malformed\"}",
            1.0,
        ),
        ("alertbridge_dead_letters", 1.0),
        (
            "alertbridge_delivery_latency_seconds_count{lane=\"normal\"}",
            12.0,
        ),
        (
            "alertbridge_delivery_latency_seconds_count{lane=\"critical\"}",
            8.0,
        ),
        ("alertbridge_alerts_pending{lane=\"normal\"}", 0.0),
        ("alertbridge_alerts_pending{lane=\"critical\"}", 0.0),
        ("alertbridge_broker_connected", 1.0),
        ("alertbridge_subscriptions_held", 1.0),
        ("alertbridge_breaker_state{state=\"closed\"}", 1.0),
        ("alertbridge_delivery_paused{reason=\"none\"}", 0.0),
        ("alertbridge_backpressure_active", 0.0),
    ] {
        assert_eq!(value(&after, series), want, "{series}");
    }
    for (series, at_least) in [
        ("alertbridge_alerts_received_total", 21.0),
        ("alertbridge_alerts_acked_total", 21.0),
        ("alertbridge_ack_latency_seconds_count", 21.0),
        ("alertbridge_batches_committed_total", 1.0),
        ("alertbridge_fsync_duration_seconds_count", 1.0),
        (
            "alertbridge_genesys_request_duration_seconds_count{status_class=\"2xx\"}",
            20.0,
        ),
        ("alertbridge_tokens_fetched_total", 1.0),
        ("alertbridge_store_file_bytes", 1.0),
    ] {
        assert!(
            value(&after, series) >= at_least,
            "{series} = {} < {at_least}",
            value(&after, series)
        );
    }
    // The +Inf bucket of a histogram holds every observation.
    assert_eq!(
        value(
            &after,
            "alertbridge_delivery_latency_seconds_bucket{lane=\"critical\",le=\"+Inf\"}"
        ),
        8.0
    );
    // An info line per delivered alert, with its id, execution id and latency.
    let logs = s.agent.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("delivered") && l.contains(ids[0].as_str()))
        .unwrap_or_else(|| panic!("no delivered line for {}:\n{logs}", ids[0]));
    assert!(
        line.contains("INFO") && line.contains("execution_id=") && line.contains("latency_ms="),
        "{line}"
    );
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("payload dead-lettered at ingest")
            && l.contains("Malformed")
            && l.contains("plant/north/alerts/SN-north-0001")),
        "no warning for the malformed payload:\n{logs}"
    );
    s.finish().await;
}

/// The table of docs/operations.md "Metrics": (name, type) of every row.
fn documented_metrics() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("docs/operations.md is readable");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/operations.md has a Metrics section");
    section
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells
                .next()?
                .strip_prefix("`alertbridge_")?
                .strip_suffix('`')?;
            let kind = cells.next()?;
            Some((format!("alertbridge_{name}"), kind.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_operations_doc_is_served() {
    let documented = documented_metrics();
    assert!(
        documented.len() >= 30,
        "the doc's table was not found or parsed: {documented:?}"
    );
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..AgentOptions::default()
    };
    let s = Scenario::start_subscribed("plant-metrics-doc", sim, &opts).await;
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            body = scrape(&s.agent).map(|(_, _, b)| b).unwrap_or_default();
            !body.is_empty()
        })
        .await,
        "/metrics never answered\n{}",
        s.agent.logs()
    );
    let missing: Vec<_> = documented
        .iter()
        .filter(|(name, kind)| !body.contains(&format!("# TYPE {name} {kind}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not served (name, type): {missing:?}\n{body}"
    );
    // And the other way round: nothing is served that the doc does not list.
    let served: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let undocumented: Vec<_> = served
        .iter()
        .filter(|n| !documented.iter().any(|(d, _)| d == *n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/operations.md: {undocumented:?}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_at_start_is_a_warning_naming_it_and_not_ready() {
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..AgentOptions::default()
    };
    // A port nobody listens on (bound then released).
    let port = free_port();
    let mut agent = Agent::start(port, &sim, &opts);
    let broker = format!("127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .logs()
            .lines()
            .any(|l| l.contains("WARN")
                && l.contains("cannot connect to the MQTT broker")
                && l.contains(&broker)))
        .await,
        "no warning naming {broker} within 5 s\n{}",
        agent.logs()
    );
    let (code, body) = agent.get("/ready").expect("/ready answers");
    assert_eq!(code, 503, "{body}");
    assert!(
        body["reasons"]
            .to_string()
            .contains("not connected to the MQTT broker"),
        "{body}"
    );
    let (_, _, text) = scrape(&agent).expect("/metrics answers");
    assert_eq!(value(&samples(&text), "alertbridge_broker_connected"), 0.0);
    // Alive all the same: it keeps trying.
    assert_eq!(agent.get("/health").expect("/health answers").0, 200);
    assert_clean_exit(&mut agent);
}
