//! Tests of the configuration: every key's validation names the key and the fix.

use super::*;

const MINIMAL: &str = r#"
[genesys]
region = "mypurecloud.ie"
client_id = "abc"
client_secret_file = "/run/credentials/alertbridge/genesys"
flow_id = "f-1"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.mqtt.host, "127.0.0.1");
    assert_eq!(c.mqtt.port, 1883);
    assert_eq!(c.genesys.login_url, "https://login.mypurecloud.ie");
    assert_eq!(c.genesys.api_url, "https://api.mypurecloud.ie");
    assert!(matches!(c.genesys.target, Target::Workflow { .. }));
    assert_eq!(c.delivery.rate_per_sec, 4.0);
    assert_eq!(c.store.max_bytes, 1 << 30);
}

#[test]
fn example_config_in_repo_is_valid() {
    let text = include_str!("../../../../config/alertbridge.example.toml");
    let c = parse(text).expect("config/alertbridge.example.toml must stay valid");
    assert!(!c.mqtt.topics.is_empty());
}

#[test]
fn an_invalid_log_filter_is_refused_naming_log_level() {
    for good in ["info", "warn,alertbridge::drain=debug"] {
        let c = parse(&format!("{MINIMAL}\n[log]\nlevel = \"{good}\"\n")).expect(good);
        assert_eq!(c.log_level, good);
    }
    let err = parse(&format!("{MINIMAL}\n[log]\nlevel = \"alertbridge=loud\"\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("log.level") && msg.contains("fix:"), "{msg}");
}

#[test]
fn store_and_genesys_sections_build_the_wal_and_client_configs() {
    let c = parse(&format!(
        "{MINIMAL}\n[store]\ndir = \"/tmp/s\"\ndedup_window_secs = 7\ndelivered_keep = 3\n"
    ))
    .expect("valid");
    assert_eq!(c.store.wal.dir, Path::new("/tmp/s"));
    assert_eq!(c.store.wal.dedup_window_ms, 7_000);
    assert_eq!(c.store.wal.delivered_keep, 3);
    assert_eq!(c.genesys.client_id, "abc");
}

#[test]
fn unknown_key_is_named() {
    let err = parse(&format!("{MINIMAL}\n[delivery]\nrate = 3\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rate"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn a_remote_admin_listen_needs_allow_remote() {
    let base = "[genesys]\nlogin_url = \"http://127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\nclient_id = \"c\"\nclient_secret_file = \"/dev/null\"\nflow_id = \"f\"\n";
    let remote = format!("{base}[admin]\nlisten = \"0.0.0.0:9810\"\n");
    assert!(Config::parse(&remote, std::path::Path::new("t.toml")).is_err());
    let allowed = format!("{remote}allow_remote = true\n");
    let cfg = Config::parse(&allowed, std::path::Path::new("t.toml")).expect("allowed");
    assert_eq!(cfg.admin_listen.map(|a| a.port()), Some(9810));
}

#[test]
fn bad_values_name_key_and_fix() {
    let cases = [
        ("[delivery]\nrate_per_sec = -1.0", "delivery.rate_per_sec"),
        ("[delivery]\nburst = 0", "delivery.burst"),
        ("[mqtt]\nurl = \"tcp://x\"", "mqtt.url"),
        ("[mqtt]\nurl = \"mqtt://x:99999\"", "mqtt.url"),
        ("[store]\nmax_bytes = 1000", "store.max_bytes"),
        ("[admin]\nlisten = \"nope\"", "admin.listen"),
        ("[admin]\nlisten = \"0.0.0.0:9810\"", "admin.listen"),
        ("[log]\nformat = \"xml\"", "log.format"),
        ("[mapping]\nmax_keys = 0", "mapping.max_keys"),
    ];
    for (extra, key) in cases {
        let err = parse(&format!("{MINIMAL}\n{extra}\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(key), "{extra}: {msg}");
        assert!(msg.contains("fix:"), "{extra}: {msg}");
    }
}

#[test]
fn log_format_is_auto_by_default_and_accepts_journald() {
    assert_eq!(parse(MINIMAL).expect("valid").log_format, LogFormat::Auto);
    for (text, format) in [
        ("auto", LogFormat::Auto),
        ("text", LogFormat::Text),
        ("json", LogFormat::Json),
        ("journald", LogFormat::Journald),
    ] {
        let c = parse(&format!("{MINIMAL}\n[log]\nformat = \"{text}\"\n")).expect(text);
        assert_eq!(c.log_format, format, "{text}");
    }
}

#[test]
fn timeout_limits_default_to_60_s_and_3() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.delivery.max_request_timeout, Duration::from_secs(60));
    assert_eq!(c.delivery.max_timeouts, 3);
    let err = parse(&format!(
        "{MINIMAL}\n[delivery]\nmax_request_timeout_ms = 0\n"
    ))
    .expect_err("0 is refused");
    assert!(
        err.to_string().contains("delivery.max_request_timeout_ms"),
        "{err}"
    );
}

#[test]
fn pause_after_rejections_defaults_to_5_and_0_turns_it_off() {
    assert_eq!(
        parse(MINIMAL)
            .expect("valid")
            .delivery
            .pause_after_rejections,
        5
    );
    let c = parse(&format!(
        "{MINIMAL}\n[delivery]\npause_after_rejections = 0\n"
    ))
    .expect("valid");
    assert_eq!(c.delivery.pause_after_rejections, 0);
}

#[test]
fn mapping_max_keys_is_read_with_a_default_of_1024() {
    assert_eq!(parse(MINIMAL).expect("valid").mapping.max_keys, 1024);
    let c = parse(&format!("{MINIMAL}\n[mapping]\nmax_keys = 5000\n")).expect("valid");
    assert_eq!(c.mapping.max_keys, 5000);
}

#[test]
fn topic_filters_follow_the_mqtt_rules() {
    let long_ok = "a".repeat(MAX_TOPIC_FILTER_BYTES);
    let too_long = "a".repeat(MAX_TOPIC_FILTER_BYTES + 1);
    for ok in [
        "#",
        "+",
        "plant/#",
        "plant/+/alerts/#",
        "+/+/+",
        "/",
        "a//b",
        "/#",
        "$SYS/broker/#",
        "plant/ü/alerts",
        "sport/tennis/+",
        long_ok.as_str(),
    ] {
        assert_eq!(topic_filter_problem(ok), None, "{ok:?}");
    }
    // (filter, part of the problem, part of the fix)
    let bad: &[(&str, &str, &str)] = &[
        ("", "is empty", "plant/+/alerts/#"),
        (
            "plant/#/alerts",
            "`#` is allowed only as the whole last level",
            "/#",
        ),
        ("#/a", "`#` is allowed only", "/#"),
        ("plant#", "`#` is allowed only", "/#"),
        ("plant/a#", "`#` is allowed only", "/#"),
        ("plant/##", "`#` is allowed only", "/#"),
        (
            "plant+",
            "`+` is allowed only as a whole level",
            "alone between slashes",
        ),
        (
            "plant/+x/alerts",
            "`+` is allowed only",
            "alone between slashes",
        ),
        ("plant/++", "`+` is allowed only", "alone between slashes"),
        ("a/b\0c", "contains a NUL character", "remove the NUL"),
        (
            too_long.as_str(),
            "65536 bytes, over MQTT's limit of 65535",
            "shorter",
        ),
    ];
    for (filter, problem, fix) in bad {
        let Some((p, f)) = topic_filter_problem(filter) else {
            panic!("accepted {filter:?}");
        };
        assert!(p.contains(problem), "{filter:?}: {p}");
        assert!(f.contains(fix), "{filter:?}: {f}");
        assert!(
            p.len() < 200,
            "a long filter is not repeated in full: {}",
            p.len()
        );
    }
}

#[test]
fn an_invalid_topic_filter_is_named_by_its_index_with_a_fix() {
    for (topics, key, problem) in [
        (
            r#"["plant/+/alerts/#", "plant/#/alerts"]"#,
            "mqtt.topics[1]",
            "\"plant/#/alerts\": `#` is allowed only as the whole last level",
        ),
        (r#"["", "plant/#"]"#, "mqtt.topics[0]", "is empty"),
        (
            r#"["a", "b", "c+"]"#,
            "mqtt.topics[2]",
            "`+` is allowed only",
        ),
        (r#"[]"#, "mqtt.topics", "needs at least one topic filter"),
    ] {
        let text = format!("[mqtt]\ntopics = {topics}\n{MINIMAL}");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains(&format!("config key `{key}`")), "{msg}");
        assert!(msg.contains(problem), "{msg}");
        assert!(msg.contains("(fix: "), "{msg}");
    }
}

/// Issue 9, item 8: `mqtt://user:password@host` was accepted, printed by `check`, logged
/// at info with the password, and never connected.
#[test]
fn credentials_in_urls_are_refused_naming_the_secret_setting_without_echoing_them() {
    const CANARY: &str = "canary-7d1f0e";
    let genesys_urls = |login: &str, api: &str| {
        MINIMAL.replace(
            "region = \"mypurecloud.ie\"",
            &format!("login_url = \"{login}\"\napi_url = \"{api}\""),
        )
    };
    // (config text, key named, setting the fix points to)
    let cases = [
        (
            format!("[mqtt]\nurl = \"mqtt://alertbridge:{CANARY}@broker:1883\"\n{MINIMAL}"),
            "mqtt.url",
            "mqtt.password_file",
        ),
        (
            format!("[mqtt]\nurl = \"mqtts://{CANARY}@broker\"\n{MINIMAL}"),
            "mqtt.url",
            "mqtt.password_file",
        ),
        // A `/` in the password must not turn it into a "port" that an error repeats.
        (
            format!("[mqtt]\nurl = \"mqtt://u:{CANARY}/x@broker:1883\"\n{MINIMAL}"),
            "mqtt.url",
            "mqtt.password_file",
        ),
        // Checked before the scheme, whose error repeats the URL.
        (
            format!("[mqtt]\nurl = \"tcp://u:{CANARY}@broker\"\n{MINIMAL}"),
            "mqtt.url",
            "mqtt.password_file",
        ),
        (
            genesys_urls(
                &format!("https://id:{CANARY}@login.mypurecloud.ie"),
                "https://api.mypurecloud.ie",
            ),
            "genesys.login_url",
            "genesys.client_secret_file",
        ),
        (
            genesys_urls(
                "https://login.mypurecloud.ie",
                &format!("https://id:{CANARY}@api.mypurecloud.ie"),
            ),
            "genesys.api_url",
            "genesys.client_secret_file",
        ),
        (
            MINIMAL.replace(
                "region = \"mypurecloud.ie\"",
                &format!("region = \"https://id:{CANARY}@mypurecloud.ie\""),
            ),
            "genesys.region",
            "genesys.client_secret_file",
        ),
        (
            format!(
                "{MINIMAL}target = \"events\"\nevents_auth = \"none\"\n\
                 events_url = \"https://hook:{CANARY}@api.mypurecloud.ie/x/events\"\n"
            ),
            "genesys.events_url",
            "events_auth",
        ),
    ];
    for (text, key, setting) in &cases {
        let err = parse(text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("config key `{key}`")), "{msg}");
        assert!(msg.contains("holds credentials"), "{msg}");
        assert!(msg.contains(setting), "{msg}");
        for shown in [&msg, &format!("{err:?}")] {
            assert!(!shown.contains(CANARY), "secret echoed: {shown}");
        }
    }
    // No userinfo, no complaint: an `@` after `?` belongs to the query.
    let text = genesys_urls(
        "https://login.mypurecloud.ie",
        "https://api.mypurecloud.ie/?contact=ops@example.com",
    );
    parse(&text).expect("an @ in the query is not a credential");
}

#[test]
fn mqtt_3_1_1_is_the_default_and_5_brings_a_7_day_session_and_a_receive_maximum() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.mqtt.protocol, MqttProtocol::V311);
    let c = parse(&format!("[mqtt]\nprotocol = \"5\"\n{MINIMAL}")).expect("v5");
    assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
    assert_eq!(c.mqtt.session_expiry_secs, 604_800);
    assert_eq!(c.mqtt.receive_maximum, 100);
    let c = parse(&format!(
        "[mqtt]\nprotocol = \"5\"\nsession_expiry_secs = 60\nreceive_maximum = 32\n{MINIMAL}"
    ))
    .expect("v5 with settings");
    assert_eq!(
        (c.mqtt.session_expiry_secs, c.mqtt.receive_maximum),
        (60, 32)
    );
}

#[test]
fn a_wrong_protocol_or_v5_setting_is_refused_naming_its_key() {
    for (mqtt, key) in [
        ("protocol = \"3\"", "mqtt.protocol"),
        ("protocol = \"mqttv5\"", "mqtt.protocol"),
        ("session_expiry_secs = 60", "mqtt.session_expiry_secs"),
        ("receive_maximum = 10", "mqtt.receive_maximum"),
        (
            "protocol = \"5\"\nsession_expiry_secs = 4294967296",
            "mqtt.session_expiry_secs",
        ),
        // The session would end at every disconnect: a loss at the broker on every blip.
        (
            "protocol = \"5\"\nsession_expiry_secs = 0",
            "mqtt.session_expiry_secs",
        ),
        (
            "protocol = \"5\"\nreceive_maximum = 0",
            "mqtt.receive_maximum",
        ),
        (
            "protocol = \"5\"\nreceive_maximum = 65536",
            "mqtt.receive_maximum",
        ),
    ] {
        let err = parse(&format!("[mqtt]\n{mqtt}\n{MINIMAL}")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("config key `{key}`")),
            "{mqtt}: {msg}"
        );
    }
}

#[test]
fn displayed_urls_never_carry_credentials() {
    for (url, shown) in [
        ("https://api.mypurecloud.ie", "https://api.mypurecloud.ie"),
        ("mqtt://u:pw@broker:1883", "mqtt://broker:1883"),
        ("https://u:p/w@host/x", "https://host/x"),
        ("https://a@b@host:8443/p?q=1@2", "https://host:8443/p?q=1@2"),
        ("user:pw@host:1883", "host:1883"),
        ("host:1883", "host:1883"),
    ] {
        assert_eq!(display_url(url), shown, "{url}");
    }
}

#[test]
fn workflow_target_requires_flow_id() {
    let text = MINIMAL.replace("flow_id = \"f-1\"", "");
    let msg = parse(&text).unwrap_err().to_string();
    assert!(msg.contains("genesys.flow_id"), "{msg}");
}

#[test]
fn events_target_warns_on_real_host_without_invocation_url() {
    let text = format!("{MINIMAL}target = \"events\"\n");
    let c = parse(&text).expect("valid");
    assert!(c.warnings().iter().any(|w| w.contains("events_url")));
}

#[test]
fn url_overrides_beat_region() {
    let text =
        format!("{MINIMAL}login_url = \"http://127.0.0.1:1\"\napi_url = \"http://127.0.0.1:2/\"\n");
    let c = parse(&text).expect("valid");
    assert_eq!(c.genesys.login_url, "http://127.0.0.1:1");
    assert_eq!(c.genesys.api_url, "http://127.0.0.1:2");
}

#[test]
fn a_share_group_subscribes_every_filter_in_its_shared_form() {
    let text = format!(
        "[mqtt]\nclient_id = \"gw02\"\ntopics = [\"plant/+/alerts/#\", \"line/4/alarm\"]\nshare_group = \"alertbridge\"\n{MINIMAL}"
    );
    let c = parse(&text).expect("valid");
    assert_eq!(
        c.mqtt.topics,
        ["plant/+/alerts/#", "line/4/alarm"],
        "kept as written"
    );
    assert_eq!(
        c.mqtt.subscribed_filters(),
        [
            "$share/alertbridge/plant/+/alerts/#",
            "$share/alertbridge/line/4/alarm"
        ]
    );
    let plain = parse(MINIMAL).expect("valid");
    assert_eq!(plain.mqtt.share_group, None);
    assert_eq!(
        plain.mqtt.subscribed_filters(),
        plain.mqtt.topics,
        "no group: as written"
    );
}

#[test]
fn a_share_group_that_is_not_one_topic_level_is_refused_with_a_fix() {
    for (group, problem) in [
        ("", "is empty"),
        ("a/b", "'/'"),
        ("plant+", "'+'"),
        ("#", "'#'"),
        ("nul\u{0}", "'\\0'"),
    ] {
        // TOML spells NUL `\u0000`, Rust's Debug `\0`
        let quoted = format!("{group:?}").replace("\\0", "\\u0000");
        let err = parse(&format!("[mqtt]\nshare_group = {quoted}\n{MINIMAL}"))
            .expect_err(group)
            .to_string();
        assert!(err.contains("mqtt.share_group"), "{group:?}: {err}");
        assert!(err.contains(problem), "{group:?}: {err}");
        assert!(err.contains("alertbridge"), "{group:?} names a fix: {err}");
    }
    for ok in ["alertbridge", "gw-pool_2", "é"] {
        assert_eq!(share_group_problem(ok), None, "{ok:?}");
    }
}
