use super::*;
use crate::config::ResponseTopic;
use alertbridge_wal::{OutboxDead, OutboxEntry, ReceiptState, Reply};

fn cfg(topic: &str) -> ReceiptsConfig {
    ReceiptsConfig {
        topic: topic.to_owned(),
        topic_pattern: "plant/{site}/alerts/{device}".to_owned(),
        retain: true,
        max_pending: 10,
        max_age: Duration::from_secs(60),
        response_topic: ResponseTopic::Prefer,
        ingest_filters: vec!["plant/+/alerts/+".to_owned()],
    }
}

/// The publish `outgoing` routes `e` to (there must be one).
fn publish_of(c: &ReceiptsConfig, t: &Template, e: &OutboxEntry) -> ReceiptPublish {
    outgoing(c, t, "gw1", key(7), e)
        .publish
        .expect("a receipt is published")
}

fn entry(topic: &str, state: ReceiptState) -> OutboxEntry {
    OutboxEntry {
        alert_id: "A-1".into(),
        topic: topic.into(),
        state,
        at_ms: 2_500,
        received_at_ms: 1_000,
        attempts: 1,
        status: Some(202),
        execution_id: Some("exec-9".into()),
        correlation_id: Some("corr-9".into()),
        dead: None,
        reply: None,
    }
}

fn key(seq: u64) -> Key {
    Key {
        priority: alertbridge_wal::LANE_OUTBOX,
        seq,
    }
}

#[test]
fn a_device_name_can_never_add_a_level_or_a_wildcard_to_the_topic() {
    assert_eq!(sanitise_level("a/b"), "a_b");
    assert_eq!(sanitise_level("+"), "_");
    assert_eq!(sanitise_level("#"), "_");
    assert_eq!(sanitise_level("$SYS"), "_SYS");
    assert_eq!(sanitise_level(""), UNKNOWN);
    let long = "é".repeat(300);
    let cut = sanitise_level(&long);
    assert!(cut.len() <= LEVEL_MAX && cut.chars().all(|c| c == 'é'));
}

#[test]
fn the_topic_takes_the_placeholders_of_the_alerts_topic() {
    let c = cfg("alertbridge/receipts/{site}/{device}");
    let t = Template::parse(&c.topic).expect("valid");
    let e = entry("plant/berlin/alerts/pump-7", ReceiptState::Delivered);
    let out = publish_of(&c, &t, &e);
    assert_eq!(out.topic, "alertbridge/receipts/berlin/pump-7");
    assert!(out.retain);
    let hostile = entry("plant/berlin/alerts/$x", ReceiptState::Delivered);
    assert_eq!(
        publish_of(&c, &t, &hostile).topic,
        "alertbridge/receipts/berlin/_x"
    );
    let other = entry("elsewhere/p1", ReceiptState::Delivered);
    assert_eq!(
        publish_of(&c, &t, &other).topic,
        "alertbridge/receipts/_unknown/_unknown"
    );
}

#[test]
fn an_mqtt5_reply_topic_replaces_the_template_echoes_the_correlation_and_is_never_retained() {
    let c = cfg("alertbridge/receipts/{device}");
    let t = Template::parse(&c.topic).expect("valid");
    let mut e = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
    e.reply = Some(Reply {
        topic: "hmi/answers/7".into(),
        correlation: Some(vec![1, 2]),
    });
    let routed = outgoing(&c, &t, "gw1", key(1), &e);
    assert_eq!(routed.refused_reply, None);
    let out = routed.publish.expect("published");
    assert_eq!((out.topic.as_str(), out.retain), ("hmi/answers/7", false));
    assert_eq!(out.correlation, Some(vec![1, 2]));
    // The template's receipts carry no correlation data.
    let plain = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
    assert_eq!(publish_of(&c, &t, &plain).correlation, None);
}

#[test]
fn response_topic_modes_route_each_receipt() {
    let t = Template::parse("alertbridge/receipts/{device}").expect("valid");
    let mut asked = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
    asked.reply = Some(Reply {
        topic: "hmi/answers/7".into(),
        correlation: None,
    });
    let silent = entry("plant/berlin/alerts/p8", ReceiptState::Delivered);
    let topic = |mode, e: &OutboxEntry| {
        let c = ReceiptsConfig {
            response_topic: mode,
            ..cfg("alertbridge/receipts/{device}")
        };
        outgoing(&c, &t, "gw1", key(1), e).publish.map(|p| p.topic)
    };
    use ResponseTopic::*;
    assert_eq!(topic(Prefer, &asked).as_deref(), Some("hmi/answers/7"));
    assert_eq!(
        topic(Prefer, &silent).as_deref(),
        Some("alertbridge/receipts/p8")
    );
    assert_eq!(topic(Only, &asked).as_deref(), Some("hmi/answers/7"));
    assert_eq!(topic(Only, &silent), None, "not asked for: not published");
    assert_eq!(
        topic(Ignore, &asked).as_deref(),
        Some("alertbridge/receipts/p7")
    );
}

#[test]
fn a_response_topic_an_ingest_filter_matches_is_refused_and_the_template_used() {
    let c = cfg("alertbridge/receipts/{device}");
    let t = Template::parse(&c.topic).expect("valid");
    for bad in [
        "plant/north/alerts/p9",
        "",
        "$SYS/x",
        "hmi/+/x",
        "hmi/#",
        "alertbridge/receipts/p8",
    ] {
        let mut e = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
        e.reply = Some(Reply {
            topic: bad.into(),
            correlation: Some(vec![9]),
        });
        let routed = outgoing(&c, &t, "gw1", key(1), &e);
        assert!(routed.refused_reply.is_some(), "{bad:?} refused");
        let out = routed.publish.expect("the template instead");
        assert_eq!(out.topic, "alertbridge/receipts/p7", "{bad:?}");
        assert_eq!(out.correlation, None, "{bad:?}");
        let only = ReceiptsConfig {
            response_topic: ResponseTopic::Only,
            ..c.clone()
        };
        assert_eq!(
            outgoing(&only, &t, "gw1", key(1), &e).publish,
            None,
            "{bad:?}"
        );
    }
    let why = reply_topic_problem("plant/north/alerts/p9", &c.ingest_filters, &t.as_filter())
        .expect("refused");
    assert!(why.contains("plant/+/alerts/+"), "{why}");
    // Another device's receipts topic: no spoofed receipts.
    assert!(
        reply_topic_problem("alertbridge/receipts/p8", &c.ingest_filters, &t.as_filter()).is_some()
    );
    // A filter written in its shared form matches what its plain form matches.
    let shared = vec!["$share/g/plant/+/alerts/+".to_owned()];
    assert!(reply_topic_problem("plant/north/alerts/p9", &shared, &t.as_filter()).is_some());
    assert!(reply_topic_problem("hmi/answers/1", &shared, &t.as_filter()).is_none());
}

#[test]
fn the_payload_says_state_ids_latency_and_the_dead_letter() {
    let e = entry("plant/berlin/alerts/p7", ReceiptState::Delivered);
    let v: serde_json::Value =
        serde_json::from_slice(&payload(&e, key(42), "gw1", Some("p7"))).expect("json");
    assert_eq!(v["v"], 1);
    assert_eq!(v["receipt_id"], "gw1/42");
    assert_eq!(v["state"], "delivered");
    assert_eq!(v["latency_ms"], 1_500);
    assert_eq!(v["device"], "p7");
    assert_eq!(v["genesys"]["execution_id"], "exec-9");
    assert!(v["dead_letter"].is_null());
    let mut d = entry("plant/berlin/alerts/p7", ReceiptState::Expired);
    d.dead = Some(OutboxDead {
        id: 3,
        kind: alertbridge_wal::DeadKind::Expired,
        reason: "ttl".into(),
        api_message: None,
    });
    let v: serde_json::Value =
        serde_json::from_slice(&payload(&d, key(43), "gw1", None)).expect("json");
    assert_eq!(v["state"], "expired");
    assert_eq!(v["dead_letter"]["kind"], "expired");
    assert_eq!(v["dead_letter"]["id"], 3);
    assert!(v["genesys"].is_null());
}

#[test]
fn templates_with_wildcards_or_broken_placeholders_are_refused() {
    for bad in [
        "", "$SYS/x", "a/+/b", "a/#", "a/{dev", "a/dev}", "a/{}", "a/{d-x}",
    ] {
        assert!(Template::parse(bad).is_err(), "{bad:?}");
    }
    let t = Template::parse("r/{client_id}/x-{device}").expect("valid");
    assert_eq!(t.as_filter(), "r/+/+");
    assert_eq!(
        t.placeholders().collect::<Vec<_>>(),
        ["client_id", "device"]
    );
}

const MINIMAL: &str = r#"
[genesys]
region = "mypurecloud.ie"
client_id = "abc"
client_secret_file = "/run/credentials/alertbridge/genesys"
flow_id = "f-1"

[mqtt]
topics = ["plant/+/alerts/+"]

[mapping]
topic_pattern = "plant/{site}/alerts/{device}"
"#;

fn parse(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
    crate::config::Config::parse(
        &format!("{MINIMAL}\n{extra}"),
        std::path::Path::new("test.toml"),
    )
}

#[test]
fn receipts_are_off_without_a_section_and_the_log_keeps_no_outbox() {
    let c = parse("").expect("valid");
    assert!(c.receipts.is_none());
    assert!(!c.store.wal.outbox);
    assert!(
        !c.mqtt.keep_response_topic,
        "nothing would use a response topic"
    );
}

#[test]
fn an_empty_receipts_section_turns_them_on_with_the_documented_defaults() {
    let c = parse("[receipts]\n").expect("valid");
    let r = c.receipts.expect("on");
    assert_eq!(r.topic, crate::config::DEFAULT_RECEIPTS_TOPIC);
    assert_eq!((r.retain, r.max_pending), (false, 50_000));
    assert_eq!(r.max_age, Duration::from_secs(86_400));
    assert_eq!(r.response_topic, ResponseTopic::Prefer);
    assert!(c.store.wal.outbox);
    assert!(c.mqtt.keep_response_topic);
    let ignore = parse("[receipts]\nresponse_topic = \"ignore\"\n").expect("valid");
    assert!(
        !ignore.mqtt.keep_response_topic,
        "ignored: not kept with the alert"
    );
}

#[test]
fn response_topic_only_needs_mqtt5_and_an_unknown_mode_is_refused() {
    let err = parse("[receipts]\nresponse_topic = \"only\"\n").expect_err("3.1.1 has none");
    let text = err.to_string();
    assert!(
        text.contains("receipts.response_topic") && text.contains("protocol"),
        "{text}"
    );
    let err = parse("[receipts]\nresponse_topic = \"always\"\n").expect_err("not a mode");
    assert!(err.to_string().contains("prefer"), "{err}");
    let v5 = crate::config::Config::parse(
        &format!(
            "{}\n[receipts]\nresponse_topic = \"only\"\n",
            MINIMAL.replace("[mqtt]\n", "[mqtt]\nprotocol = \"5\"\n")
        ),
        std::path::Path::new("test.toml"),
    )
    .expect("valid with MQTT 5");
    assert_eq!(v5.receipts.expect("on").response_topic, ResponseTopic::Only);
}

#[test]
fn a_receipt_topic_an_ingest_filter_matches_is_refused() {
    for topic in ["plant/x/alerts/{device}", "plant/{site}/alerts/{device}"] {
        let err = parse(&format!("[receipts]\ntopic = \"{topic}\"\n"))
            .expect_err("a loop must be refused");
        assert!(err.to_string().contains("receipts.topic"), "{err}");
    }
    // Also when the ingest filter is written in its shared form.
    let shared = MINIMAL.replace(
        "topics = [\"plant/+/alerts/+\"]",
        "topics = [\"$share/g/plant/+/alerts/+\"]",
    );
    let err = crate::config::Config::parse(
        &format!("{shared}\n[receipts]\ntopic = \"plant/x/alerts/{{device}}\"\n"),
        std::path::Path::new("test.toml"),
    )
    .expect_err("a loop through a shared filter must be refused");
    assert!(err.to_string().contains("receipts.topic"), "{err}");
}

#[test]
fn a_receipt_topic_naming_an_unknown_placeholder_is_refused() {
    let err = parse("[receipts]\ntopic = \"r/{line}\"\n").expect_err("unknown");
    assert!(err.to_string().contains("receipts.topic"), "{err}");
}

/// A log with the outbox on and `n` delivered alerts (receipts queued), delivered at
/// `at_ms(i)`.
fn queued(n: usize, at_ms: impl Fn(usize) -> u64) -> (tempfile::TempDir, Wal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(alertbridge_wal::WalConfig {
        outbox: true,
        ..alertbridge_wal::WalConfig::new(dir.path().join("wal"))
    })
    .expect("log opens");
    for i in 0..n {
        let record = alertbridge_wal::Record::new(
            format!("a-{i}"),
            "plant/north/alerts/p1",
            b"{}".to_vec(),
            alertbridge_wal::PRIORITY_NORMAL,
            1,
        );
        let out = wal
            .append_batch(vec![alertbridge_wal::Entry::Pending(record.clone())])
            .expect("append")
            .into_inner();
        let Some(alertbridge_wal::Appended::Pending(k)) = out.first().cloned() else {
            panic!("appended: {out:?}");
        };
        let mut e = entry(&record.topic, ReceiptState::Delivered);
        e.alert_id = record.alert_id.clone();
        e.at_ms = at_ms(i);
        let receipt = alertbridge_wal::Receipt {
            alert_id: record.alert_id.clone(),
            seq: k.seq,
            delivered_at_ms: e.at_ms,
            status: 202,
            execution_id: None,
            correlation_id: None,
            attempts: 1,
            received_at_ms: 1,
        };
        wal.remove_and_queue(k, receipt, &e).expect("queue");
    }
    (dir, wal)
}

fn publisher(wal: &Wal, max_pending: u64) -> Publisher {
    let c = ReceiptsConfig {
        max_pending,
        ..cfg("alertbridge/receipts/{device}")
    };
    Publisher {
        template: Template::parse(&c.topic).expect("valid"),
        cfg: c,
        client_id: "gw1".into(),
        wal: wal.clone(),
        counters: Arc::new(Counters::default()),
        dropped_unwarned: 0,
        last_drop_warn: None,
        reply_refused_unwarned: 0,
        last_reply_warn: None,
    }
}

fn left(wal: &Wal) -> Vec<String> {
    let mut c = wal.outbox_cursor();
    wal.read_outbox(&mut c, 1000)
        .expect("read")
        .into_iter()
        .map(|i| i.expect("decodable").1.alert_id)
        .collect()
}

#[tokio::test]
async fn over_max_pending_the_oldest_receipts_are_dropped_and_counted() {
    let now = crate::clock::now_ms();
    let (_dir, wal) = queued(30, |_| now);
    let mut p = publisher(&wal, 10);
    p.keep_bound().await.expect("bound kept");
    let want: Vec<String> = (20..30).map(|i| format!("a-{i}")).collect();
    assert_eq!(left(&wal), want, "the newest stay");
    assert_eq!(p.counters.receipts_dropped.load(Ordering::Relaxed), 20);
    assert_eq!(wal.stats().expect("stats").pending, 0, "alerts untouched");
}

#[tokio::test]
async fn receipts_older_than_max_age_are_dropped_and_the_rest_handed_to_the_client() {
    let now = crate::clock::now_ms();
    // cfg(): max_age 60 s. The first three are two minutes old.
    let (_dir, wal) = queued(5, |i| if i < 3 { now - 120_000 } else { now });
    let mut p = publisher(&wal, 100);
    let (client, _eventloop) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 128);
    let mut cursor = wal.outbox_cursor();
    let mut flight = Flight::default();
    p.turn(&Sender::V4(client), &mut cursor, &mut flight, true)
        .await
        .expect("turn");
    assert_eq!(flight.handed.len(), 2, "the two young ones are published");
    assert_eq!(p.counters.receipts_dropped.load(Ordering::Relaxed), 3);
    assert_eq!(
        left(&wal),
        ["a-3", "a-4"],
        "handed ones wait for their PUBACK"
    );
}

#[test]
fn a_shared_filter_is_matched_by_its_filter_part() {
    assert_eq!(
        matched_part("$share/g/plant/+/alerts/#"),
        "plant/+/alerts/#"
    );
    assert_eq!(matched_part("plant/#"), "plant/#");
    assert_eq!(matched_part("$share/g"), "$share/g");
}

#[test]
fn permanent_and_transient_puback_refusals_are_told_apart() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
    assert_eq!(link::refusal(&R::Success), None);
    assert_eq!(link::refusal(&R::NoMatchingSubscribers), None);
    for permanent in [
        R::NotAuthorized,
        R::TopicNameInvalid,
        R::PayloadFormatInvalid,
    ] {
        assert!(
            link::refusal(&permanent).is_some_and(|(_, p)| p),
            "{permanent:?}"
        );
    }
    for transient in [
        R::QuotaExceeded,
        R::PacketIdentifierInUse,
        R::UnspecifiedError,
        R::ImplementationSpecificError,
    ] {
        assert!(
            link::refusal(&transient).is_some_and(|(_, p)| !p),
            "{transient:?}"
        );
    }
}

#[test]
fn overlapping_filters_are_found() {
    assert!(overlaps("alertbridge/receipts/+", "alertbridge/#"));
    assert!(overlaps("alertbridge/receipts/+", "#"));
    assert!(overlaps("alertbridge/receipts/+", "+/receipts/x"));
    assert!(!overlaps("alertbridge/receipts/+", "plant/+/alerts/+"));
    assert!(!overlaps("alertbridge/receipts/+", "alertbridge/receipts"));
    assert!(overlaps("a/b", "a/b/#"));
}
