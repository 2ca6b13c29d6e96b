//! Bad configuration: a clear message naming the key, and the documented exit codes.

use crate::support::run_cli;

fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).expect("write");
    (dir, p)
}

#[test]
fn check_names_the_bad_key_and_exits_2() {
    let (_d, p) = write("[genesys]\nregion = \"mypurecloud.ie\"\nclient_id = \"x\"\nclient_secret_file = \"/nonexistent\"\nflow_id = \"f\"\n[delivery]\nrate_per_sec = -3.0\n");
    let out = run_cli("check", &p, None);
    assert_eq!(out.code, Some(2));
    let err = out.stderr;
    assert!(
        err.contains("delivery.rate_per_sec") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn run_with_unknown_key_exits_2_naming_it() {
    let (_d, p) = write("[mqtt]\nurll = \"mqtt://x\"\n");
    let out = run_cli("run", &p, None);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("urll"), "{}", out.stderr);
}

#[test]
fn check_reports_an_unreadable_secret_without_printing_secrets() {
    let (d, p) = write("[genesys]\nregion = \"eu-west-1\"\nclient_id = \"x\"\nclient_secret_file = \"missing-secret\"\nflow_id = \"f\"\n");
    let out = run_cli("check", &p, Some(d.path()));
    assert_eq!(out.code, Some(2));
    let err = out.stderr;
    assert!(err.contains("missing-secret"), "names the file: {err}");
}

#[test]
fn example_config_passes_check_with_a_secret() {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::write(d.path().join("genesys-client-secret"), "s3cr3t-value\n").expect("write");
    // The example as shipped, with the store where this user may create it (check verifies
    // that store.dir is writable or creatable).
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/alertbridge.example.toml"
    ))
    .expect("read the example");
    assert!(example.contains("dir = \"/var/lib/alertbridge\""));
    let example = example.replace(
        "dir = \"/var/lib/alertbridge\"",
        &format!("dir = \"{}\"", d.path().join("store").display()),
    );
    let example_path = d.path().join("alertbridge.toml");
    std::fs::write(&example_path, example).expect("write");
    let out = run_cli("check", &example_path, Some(d.path()));
    let all = out.all();
    assert_eq!(out.code, Some(0), "{all}");
    assert!(!all.contains("s3cr3t-value"), "secret printed: {all}");
}

/// Issue 9, item 2: `plant/#/alerts` passed `check`, and the broker then refused the
/// subscription while the agent looked healthy.
#[test]
fn check_refuses_an_invalid_topic_filter_naming_its_index() {
    let (_d, p) = write("[mqtt]\ntopics = [\"plant/+/alerts/#\", \"plant/#/alerts\"]\n[genesys]\nregion = \"mypurecloud.ie\"\nclient_id = \"x\"\nclient_secret_file = \"/nonexistent\"\nflow_id = \"f\"\n");
    let out = run_cli("check", &p, None);
    assert_eq!(out.code, Some(2));
    let err = out.stderr;
    assert!(
        err.contains("mqtt.topics[1]")
            && err.contains("`#` is allowed only as the whole last level")
            && err.contains("fix:"),
        "{err}"
    );
}

/// Issue 9, item 8: `mqtt://user:password@host` was accepted, printed by `check` and logged at
/// info with the password. Now `check` and `run` refuse it, point to `username` +
/// `password_file`, and print no part of the secret (canary).
#[test]
fn credentials_in_urls_are_refused_and_never_printed() {
    const CANARY: &str = "canary-9c2e4b";
    let genesys =
        "[genesys]\nclient_id = \"x\"\nclient_secret_file = \"/nonexistent\"\nflow_id = \"f\"\n";
    let cases = [
        (
            format!("[mqtt]\nurl = \"mqtt://alertbridge:{CANARY}@127.0.0.1:1883\"\n{genesys}region = \"mypurecloud.ie\"\n"),
            "mqtt.url",
            "mqtt.password_file",
        ),
        (
            format!("{genesys}login_url = \"https://login.mypurecloud.ie\"\napi_url = \"https://x:{CANARY}@api.mypurecloud.ie\"\n"),
            "genesys.api_url",
            "genesys.client_secret_file",
        ),
    ];
    for (text, key, setting) in &cases {
        let (_d, p) = write(text);
        for (cmd, code) in [("check", 2), ("run", 2)] {
            let out = run_cli(cmd, &p, None);
            let all = out.all();
            assert_eq!(out.code, Some(code), "{cmd}: {all}");
            assert!(
                all.contains(key) && all.contains(setting) && all.contains("fix:"),
                "{cmd}: {all}"
            );
            assert!(!all.contains(CANARY), "{cmd} printed the secret: {all}");
        }
    }
}
