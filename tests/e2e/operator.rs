//! The operator's CLI against real processes: `dead-letters list|show|replay|purge` through the
//! running agent's admin endpoint and on the stopped store, read-only commands that never create
//! a store, one clear line for a locked store, `check --online` against the simulator, and the
//! exit codes (0 ok, 1 runtime failure, 2 usage or configuration error).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

/// Runs the CLI off the runtime's workers (the simulator runs in this process).
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        command(env!("CARGO_BIN_EXE_alertbridge"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run alertbridge")
    })
    .await
    .expect("cli task")
}

fn args(list: &[&str], config: &Path) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.push("--config".into());
    v.push(config.display().to_string());
    v
}

/// A config of the test's own: genesys at `api` with the secret in a file, store in `store`,
/// admin endpoint off, plus `extra` sections.
fn write_config(dir: &Path, api: &str, store: &Path, extra: &str) -> PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, "e2e-secret\n").expect("write secret");
    let config = dir.join("alertbridge.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[store]\ndir = \"{store}\"\n\n[genesys]\nlogin_url = \"{api}\"\napi_url = \"{api}\"\n\
             client_id = \"e2e-client\"\nclient_secret_file = \"{secret}\"\nflow_id = \"{FLOW}\"\n\n\
             [admin]\nlisten = \"\"\n",
            store = store.display(),
            secret = secret.display(),
        ),
    )
    .expect("write config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_work_through_the_admin_endpoint_while_running_and_on_the_store_when_stopped()
{
    let sim = failing_sim(400).await;
    let opts = AgentOptions {
        admin: true,
        ..AgentOptions::default()
    };
    let mut s = Scenario::start_subscribed("plant-operator", sim, &opts).await;
    let ids = s.publish("dl", 0..3, "major").await;
    s.wait_acked(3, Duration::from_secs(30)).await;
    s.status_until(Duration::from_secs(30), |st| st["dead_letters"] == 3)
        .await;
    s.sim.set_faults(Faults::default());

    // Running: the store is locked by the agent, so these go through its endpoint.
    let config = s.agent.config.clone();
    let out = cli(args(&["dead-letters", "list", "--json"], &config)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let letters = json_lines(&out);
    assert_eq!(letters.len(), 3, "{}", text(&out));
    let first = &letters[0];
    let id = first["id"].as_u64().expect("id").to_string();
    let alert = first["alert_id"].as_str().expect("alert id").to_owned();
    assert!(ids.contains(&alert), "{first}");
    assert_eq!(first["kind"], "Rejected");

    let out = cli(args(&["dead-letters", "show", &id], &config)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("show prints JSON");
    assert_eq!(shown["alert_id"], alert.as_str());
    assert_eq!(shown["status"], 400);

    let out = cli(args(&["dead-letters", "replay", "--id", &id], &config)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("→ pending seq"), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(20), || accepted_counts(&s.sim)
            .contains_key(&alert))
        .await,
        "the replayed alert is delivered by the running agent\n{}",
        s.agent.logs()
    );

    let out = cli(args(
        &["dead-letters", "purge", "--kind", "rejected"],
        &config,
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("2 dead letter(s) would be deleted"),
        "{}",
        text(&out)
    );
    let out = cli(args(&["dead-letters", "show", "999999"], &config)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    s.stop().await;

    // Stopped: the same commands open the store directly.
    let out = cli(args(&["dead-letters", "--json"], &config)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let left = json_lines(&out);
    assert_eq!(left.len(), 2, "{}", text(&out));
    let second = left[0]["id"].as_u64().expect("id").to_string();
    let out = cli(args(&["replay", "--id", &second], &config)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cli(args(&["dead-letters", "purge", "--yes"], &config)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("1 dead letter(s) deleted"),
        "{}",
        text(&out)
    );
    let status = s.agent.status().expect("status of the stopped store");
    assert_eq!(
        (&status["dead_letters"], &status["pending"]),
        (&Value::from(0), &Value::from(1)),
        "{status}"
    );
    s.finish().await;
}

#[tokio::test]
async fn read_only_commands_never_create_a_store_at_a_mistyped_path() {
    let d = tempfile::tempdir().expect("tempdir");
    let typo = d.path().join("var-lib-alertbrdige");
    let config = write_config(d.path(), "http://127.0.0.1:9", &typo, "");
    for cmd in [
        &["status"][..],
        &["status", "--json"],
        &["dead-letters"],
        &["dead-letters", "show", "1"],
        &["dead-letters", "purge", "--yes"],
        &["dead-letters", "replay", "--all"],
        &["replay", "--all"],
    ] {
        let out = cli(args(cmd, &config)).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {all}");
        assert!(
            all.contains("no alertbridge store in") && all.contains(&typo.display().to_string()),
            "{cmd:?}: {all}"
        );
        assert!(!typo.exists(), "{cmd:?} created {}", typo.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_without_an_endpoint_is_one_clear_line_and_exit_1() {
    let sim = sim(Duration::from_secs(3600)).await;
    let broker = Mosquitto::start();
    let mut agent = Agent::start(broker.port, &sim, &AgentOptions::default());
    wait_subscribed(&agent).await;
    let out = cli(args(&["dead-letters"], &agent.config)).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains("admin.listen is disabled"),
        "{err}"
    );
    assert_eq!(
        err.matches("locked by another process").count(),
        1,
        "the cause once: {err}"
    );
    assert!(
        !err.contains("Os {") && !err.contains("kind:"),
        "no debug dump: {err}"
    );
    assert_clean_exit(&mut agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_verifies_the_workflow_and_names_what_is_missing() {
    let sim = sim(Duration::from_secs(3600)).await;
    let d = tempfile::tempdir().expect("tempdir");
    let config = write_config(d.path(), &sim.base_url(), &d.path().join("wal"), "");
    let check = || cli(args(&["check", "--online"], &config));

    let out = check().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("online: workflow {FLOW}"))
            && text(&out).contains("is published"),
        "{}",
        text(&out)
    );
    assert!(!d.path().join("wal").exists(), "check created the store");

    sim.set_known_flow_ids(Some(vec!["another-flow".into()]));
    let out = check().await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no flow") && text(&out).contains("genesys.flow_id"),
        "{}",
        text(&out)
    );

    sim.set_known_flow_ids(None);
    sim.set_denied_permissions(vec!["architect:flow:view".into()]);
    let out = check().await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("HTTP 403") && text(&out).contains("architect:flow:view"),
        "{}",
        text(&out)
    );

    sim.set_denied_permissions(Vec::new());
    sim.set_client_secret("rotated-elsewhere");
    let out = check().await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("fetching a token") && !text(&out).contains("e2e-secret"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_a_configuration_error_for_check_and_run() {
    let d = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        d.path(),
        "http://127.0.0.1:9",
        &d.path().join("wal"),
        "[mqtt]\nurl = \"mqtts://127.0.0.1:1\"\nca_file = \"/nonexistent/broker-ca.pem\"\n",
    );
    for cmd in ["check", "run"] {
        let out = cli(args(&[cmd], &config)).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {all}");
        assert!(
            all.contains("mqtt.ca_file") && all.contains("/nonexistent/broker-ca.pem"),
            "{cmd}: {all}"
        );
    }
}

#[tokio::test]
async fn usage_errors_exit_2_and_help_documents_the_exit_codes() {
    let out = cli(vec!["dead-letters".into()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("needs --config"), "{}", text(&out));
    let out = cli(vec!["--help".into()]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out);
    assert!(
        help.contains("Exit codes:") && help.contains("2  usage or configuration error"),
        "{help}"
    );
    let d = tempfile::tempdir().expect("tempdir");
    let config = write_config(d.path(), "http://127.0.0.1:9", &d.path().join("wal"), "");
    let out = cli(args(
        &["dead-letters", "purge", "--before", "soon"],
        &config,
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
