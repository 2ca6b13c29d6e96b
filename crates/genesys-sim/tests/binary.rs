//! The `genesys-sim` binary: prints its base URL, serves, stops on a signal; usage errors exit 2.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_genesys-sim");

#[tokio::test]
async fn binary_prints_its_base_url_and_serves_tokens_with_the_secret_from_the_environment() {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            "edge",
            "--token-ttl-secs",
            "120",
        ])
        .env("GENESYS_SIM_CLIENT_SECRET", "from-env")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("genesys-sim starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the URL is printed in time")
        .expect("stdout readable")
        .expect("a first line");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let basic = base64::engine::general_purpose::STANDARD.encode("edge:from-env");
    let response = http
        .post(format!("{base}/oauth/token"))
        .header("Authorization", format!("Basic {basic}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], serde_json::json!(120));

    child.start_kill().expect("kill");
    child.wait().await.expect("reaped");
}

#[test]
fn bad_arguments_exit_with_2() {
    for args in [
        &["--error-rate-503", "2"][..],
        &["--force-status", "200"][..],
        &["--token-ttl-secs", "0"][..],
        &["--client-secret-file", "/nonexistent/genesys-sim-secret"][..],
    ] {
        let status = std::process::Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runs");
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}
