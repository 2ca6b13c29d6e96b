//! The drain's dispatch and settle rules, driven by a scripted [`Deliver`] (answer sequences,
//! delays, panics) over a real log, under paused tokio time: deterministic, no HTTP, no sleeping
//! for real. The e2e tests prove the same behaviours against real processes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alertbridge_genesys::{Disposition, Receipt as Accepted};
use alertbridge_payload::{Mapper, MappingConfig};
use alertbridge_wal::{DeadKind, Entry, Record, Wal, WalConfig, PRIORITY_NORMAL};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::drain::job::{Deliver, Job};
use crate::drain::Drain;
use crate::events::{BreakerView, Counters};

/// One scripted answer.
#[derive(Clone)]
enum Step {
    /// Answer this at once.
    Answer(Disposition),
    /// Answer this after a delay (the request is in flight meanwhile).
    Slow(Duration, Disposition),
    /// The delivery panics.
    Panic,
}

/// A request the fake saw: the alert id sent, how many alerts it settles, and when.
#[derive(Clone, Debug)]
struct Sent {
    alert_id: String,
    members: usize,
    at: Instant,
}

/// The scripted client: answers requests in order from `steps`, then `otherwise`.
#[derive(Clone)]
struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    otherwise: Arc<Mutex<Step>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>, otherwise: Step) -> Scripted {
        Scripted {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            otherwise: Arc::new(Mutex::new(otherwise)),
            sent: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// From now on, answer every request with `step`.
    fn answer_all(&self, step: Step) {
        self.steps.lock().expect("test lock").clear();
        *self.otherwise.lock().expect("test lock") = step;
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("test lock").clone()
    }
}

impl Deliver for Scripted {
    fn deliver(
        &self,
        job: &Job,
        _timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Disposition> + Send + 'static>> {
        let (steps, otherwise, sent) = (
            self.steps.clone(),
            self.otherwise.clone(),
            self.sent.clone(),
        );
        let (alert_id, members) = (job.alert_id.clone(), job.members.len());
        Box::pin(async move {
            sent.lock().expect("test lock").push(Sent {
                alert_id,
                members,
                at: clock::now(),
            });
            let step = steps
                .lock()
                .expect("test lock")
                .pop_front()
                .unwrap_or_else(|| otherwise.lock().expect("test lock").clone());
            match step {
                Step::Answer(d) => d,
                Step::Slow(after, d) => {
                    tokio::time::sleep(after).await;
                    d
                }
                Step::Panic => panic!("scripted delivery panic"),
            }
        })
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

fn accepted() -> Step {
    Step::Answer(Disposition::Delivered(Accepted {
        status: 202,
        execution_id: Some("exec-1".into()),
        correlation_id: Some("corr-1".into()),
    }))
}

fn retry(status: u16, after: Option<Duration>) -> Step {
    Step::Answer(Disposition::Retry {
        after,
        reason: format!("server error: HTTP {status}"),
        status: Some(status),
        timed_out: false,
    })
}

fn rejected(status: u16, code: &str) -> Step {
    Step::Answer(Disposition::DeadLetter {
        status,
        reason: format!("rejected: HTTP {status} {code}"),
        api_message: Some("bad input".into()),
        code: Some(code.into()),
    })
}

fn paused(status: u16) -> Step {
    Step::Answer(Disposition::Pause {
        reason: format!("configuration fault: HTTP {status}"),
        status: Some(status),
        after: None,
    })
}

/// A drain over a log of its own, sending through a [`Scripted`] client, its wall clock
/// following tokio's (paused) clock.
struct Rig {
    _dir: tempfile::TempDir,
    wal: Wal,
    counters: Arc<Counters>,
    client: Scripted,
    drain: Option<Drain>,
}

/// Delivery settings of these tests: 1 s cool-down, 100 ms → 1 s backoff, breaker after 3.
fn delivery(change: impl FnOnce(&mut crate::config::RawDelivery)) -> crate::config::DeliveryConfig {
    let mut raw = crate::config::RawDelivery {
        rate_per_sec: Some(100.0),
        burst: Some(10),
        max_in_flight: Some(4),
        backoff_initial_ms: Some(100),
        backoff_max_ms: Some(1_000),
        breaker_failures: Some(3),
        breaker_cooldown_ms: Some(1_000),
        ..Default::default()
    };
    change(&mut raw);
    crate::config::delivery_from_raw(raw).expect("test delivery config is valid")
}

fn rig(cfg: crate::config::DeliveryConfig, mapping: MappingConfig, client: Scripted) -> Rig {
    rig_on(cfg, mapping, client, false)
}

fn rig_on(
    cfg: crate::config::DeliveryConfig,
    mapping: MappingConfig,
    client: Scripted,
    outbox: bool,
) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(WalConfig {
        outbox,
        ..WalConfig::new(dir.path().join("wal"))
    })
    .expect("log opens");
    let mapper = Arc::new(Mapper::new(&mapping).expect("test mapping is valid"));
    let counters = Arc::new(Counters::default());
    let mut drain = Drain::new(cfg, wal.clone(), client.clone(), mapper, counters.clone());
    let start = clock::now();
    let wall_start = clock::now_ms();
    drain.set_wall_clock(Arc::new(move || {
        wall_start + clock::now().saturating_duration_since(start).as_millis() as u64
    }));
    Rig {
        _dir: dir,
        wal,
        counters,
        client,
        drain: Some(drain),
    }
}

fn alert(n: usize, site: &str) -> Record {
    let id = format!("a-{n}");
    let payload = serde_json::json!({
        "alert_id": id, "device_id": format!("d{}", n % 3), "alert_level": "major", "site": site,
    });
    Record::new(
        id,
        "plant/north/alerts/d1",
        payload.to_string().into_bytes(),
        PRIORITY_NORMAL,
        clock::now_ms(),
    )
}

impl Rig {
    fn append(&self, n: usize) {
        let entries = (0..n).map(|i| Entry::Pending(alert(i, "north"))).collect();
        let _ = self.wal.append_batch(entries).expect("append");
    }

    fn pending(&self) -> u64 {
        self.wal.stats().expect("stats").pending
    }

    /// Runs the drain for `span` of (paused) time, checking `each` every 10 ms of it, then
    /// stops it.
    async fn run_for(&mut self, span: Duration, mut each: impl FnMut(&Rig)) {
        let drain = self.drain.take().expect("the drain runs once");
        let (_feed, feed_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drain.run(feed_rx, cancel.clone()));
        let end = tokio::time::Instant::now() + span;
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
            each(self);
        }
        cancel.cancel();
        task.await.expect("drain task").expect("drain ends cleanly");
    }
}

#[tokio::test(start_paused = true)]
async fn a_403_pauses_delivery_keeps_the_alert_and_one_probe_per_cool_down_resumes_it() {
    let client = Scripted::new([paused(403)], paused(403));
    let cfg = delivery(|d| d.max_in_flight = Some(1));
    let mut rig = rig(cfg, MappingConfig::default(), client.clone());
    rig.append(5);
    let mut fixed = false;
    rig.run_for(Duration::from_millis(3_500), |r| {
        if !fixed && clock::now() >= r.client.sent()[0].at + Duration::from_millis(2_500) {
            r.client.answer_all(accepted());
            fixed = true;
        }
    })
    .await;
    let sent = client.sent();
    // the first request paused delivery; one probe per 1 s cool-down until the fix, then all go
    let t0 = sent[0].at;
    let probes: Vec<u128> = sent
        .iter()
        .take_while(|s| s.at < t0 + Duration::from_millis(2_500))
        .map(|s| (s.at - t0).as_millis())
        .collect();
    assert_eq!(
        probes.len(),
        3,
        "one request, then one probe per cool-down: {probes:?}"
    );
    assert!(
        probes.windows(2).all(|w| w[1] - w[0] >= 1_000),
        "{probes:?}"
    );
    assert_eq!(rig.pending(), 0);
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
    assert!(!rig.counters.paused.load(Ordering::Relaxed));
    assert_eq!(rig.counters.pauses.load(Ordering::Relaxed), 1);
    // a pause is not an attempt: every alert was delivered at its first counted attempt
    assert_eq!(rig.counters.retried.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_of_identical_rejections_pauses_and_the_rest_stay_pending() {
    let client = Scripted::new([], rejected(400, "bad.request"));
    let cfg = delivery(|d| {
        d.pause_after_rejections = Some(3);
        d.max_in_flight = Some(1);
    });
    let mut rig = rig(cfg, MappingConfig::default(), client.clone());
    rig.append(10);
    rig.run_for(Duration::from_millis(2_500), |_| {}).await;
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 3);
    assert_eq!(rig.pending(), 7);
    assert!(rig.counters.paused.load(Ordering::Relaxed));
    let reason = rig.counters.snapshot().pause_reason.unwrap_or_default();
    assert!(
        reason.contains("rejected alike") && reason.contains("the first 3 are dead letters"),
        "{reason}"
    );
    // paused: three requests, then one probe per 1 s cool-down
    assert_eq!(client.sent().len(), 5, "{:?}", client.sent());
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_sends_one_probe_per_cool_down_and_closes_when_one_passes() {
    let client = Scripted::new([], retry(503, None));
    let mut rig = rig(
        delivery(|d| d.max_in_flight = Some(1)),
        MappingConfig::default(),
        client.clone(),
    );
    rig.append(3);
    let mut seen = Vec::new();
    let mut fixed = false;
    rig.run_for(Duration::from_millis(4_000), |r| {
        let view = r.counters.snapshot().breaker;
        if seen.last() != Some(&view) {
            seen.push(view);
        }
        if !fixed && r.client.sent().len() >= 5 {
            r.client.answer_all(accepted());
            fixed = true;
        }
    })
    .await;
    let sent = client.sent();
    // three failures open the breaker; then exactly one probe per cool-down
    let gaps: Vec<u128> = sent
        .windows(2)
        .skip(2)
        .take(3)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    assert!(gaps.iter().all(|g| *g >= 1_000), "{gaps:?}");
    assert_eq!(rig.pending(), 0);
    assert!(seen.contains(&BreakerView::Open), "{seen:?}");
    assert_eq!(seen.last(), Some(&BreakerView::Closed), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_episode_halves_the_rate_once_however_many_requests_it_hits() {
    let throttled = retry(429, Some(Duration::from_millis(200)));
    let client = Scripted::new(
        [
            Step::Slow(Duration::from_millis(50), throttled.answer()),
            Step::Slow(Duration::from_millis(50), throttled.answer()),
            Step::Slow(Duration::from_millis(50), throttled.answer()),
            Step::Slow(Duration::from_millis(50), throttled.answer()),
        ],
        accepted(),
    );
    let mut rig = rig(delivery(|_| {}), MappingConfig::default(), client.clone());
    rig.append(4);
    let mut lowest = u64::MAX;
    rig.run_for(Duration::from_millis(1_000), |r| {
        lowest = lowest.min(r.counters.rate_millis.load(Ordering::Relaxed));
    })
    .await;
    assert_eq!(rig.counters.throttled.load(Ordering::Relaxed), 4);
    // four requests in flight together met one episode: 100/s → 50/s once, not 6.25/s
    assert_eq!(lowest, 50_000);
    assert_eq!(rig.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_the_whole_client_until_it_ends() {
    let client = Scripted::new([retry(503, Some(Duration::from_secs(2)))], accepted());
    let mut rig = rig(
        delivery(|d| d.max_in_flight = Some(1)),
        MappingConfig::default(),
        client.clone(),
    );
    rig.append(3);
    rig.run_for(Duration::from_secs(4), |_| {}).await;
    let sent = client.sent();
    assert_eq!(sent.len(), 4, "{sent:?}");
    // nothing at all went during the 2 s the server asked for, not only the one alert
    let t0 = sent[0].at;
    assert!(
        sent[1..]
            .iter()
            .all(|s| s.at >= t0 + Duration::from_secs(2)),
        "{sent:?}"
    );
    assert_eq!(rig.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn queued_alerts_past_their_ttl_are_swept_to_dead_letters_while_the_breaker_holds_them() {
    let client = Scripted::new([], retry(503, None));
    let cfg = delivery(|d| {
        d.ttl_normal_secs = Some(3);
        d.max_in_flight = Some(1);
        d.breaker_failures = Some(1);
        d.breaker_cooldown_ms = Some(60_000);
    });
    let mut rig = rig(cfg, MappingConfig::default(), client.clone());
    rig.append(5);
    rig.run_for(Duration::from_millis(4_500), |_| {}).await;
    // one request opened the breaker for a minute; the sweep expired all five meanwhile
    assert_eq!(client.sent().len(), 1);
    assert_eq!(rig.pending(), 0);
    assert_eq!(rig.counters.expired.load(Ordering::Relaxed), 5);
    let dead: Vec<_> = rig
        .wal
        .dead_letters()
        .map(|d| d.expect("dead letter"))
        .collect();
    assert!(
        dead.iter().all(|d| d.reason.kind == DeadKind::Expired),
        "{dead:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delivery_that_panics_is_retried_and_the_alert_delivered() {
    let client = Scripted::new([Step::Panic], accepted());
    let mut rig = rig(delivery(|_| {}), MappingConfig::default(), client.clone());
    rig.append(1);
    rig.run_for(Duration::from_secs(2), |_| {}).await;
    assert_eq!(client.sent().len(), 2);
    assert_eq!(rig.pending(), 0);
    assert_eq!(rig.counters.retried.load(Ordering::Relaxed), 1);
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_storm_summary_dead_letters_its_members_with_the_summarys_attempts() {
    let mut mapping = MappingConfig::default();
    mapping.coalesce.enabled = true;
    mapping.coalesce.window_ms = 1_000;
    mapping.coalesce.min_count = 2;
    mapping.coalesce.site = "site".into();
    // the first alert of the window goes singly; the summary of the other four gets a 503,
    // then a 400
    let client = Scripted::new(
        [accepted(), retry(503, None), rejected(400, "bad.request")],
        accepted(),
    );
    let mut rig = rig(delivery(|_| {}), mapping, client.clone());
    rig.append(5);
    rig.run_for(Duration::from_secs(4), |_| {}).await;
    let sent = client.sent();
    assert_eq!(
        sent.iter().map(|s| s.members).collect::<Vec<_>>(),
        [1, 4, 4]
    );
    assert_eq!(rig.pending(), 0);
    let dead: Vec<_> = rig
        .wal
        .dead_letters()
        .map(|d| d.expect("dead letter"))
        .collect();
    assert_eq!(dead.len(), 4);
    for d in &dead {
        assert_eq!(d.reason.kind, DeadKind::Rejected);
        assert!(
            d.reason.message.starts_with(&format!(
                "coalesced into storm summary {}",
                sent[1].alert_id
            )),
            "{d:?}"
        );
        let record = d.record.as_ref().expect("the member's record is kept");
        assert_eq!(record.attempts, 2, "{d:?}");
        assert!(record.first_attempt_ms.is_some() && record.last_attempt_ms.is_some());
        assert!(record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 503")));
    }
}

impl Step {
    /// The disposition of an immediate answer (to build slow ones from).
    fn answer(&self) -> Disposition {
        match self {
            Step::Answer(d) | Step::Slow(_, d) => d.clone(),
            Step::Panic => unreachable!("a panic has no answer"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn with_receipts_on_each_delivered_and_each_rejected_alert_queues_one_receipt() {
    let client = Scripted::new([accepted(), accepted()], rejected(400, "bad.request"));
    let cfg = delivery(|d| d.max_in_flight = Some(1));
    let mut rig = rig_on(cfg, MappingConfig::default(), client.clone(), true);
    // The first of each pair was published by an MQTT 5 client that asked for the answer.
    let entries = (0..4)
        .map(|i| {
            let mut r = alert(i, "north");
            if i % 2 == 0 {
                r.mqtt = Some(Box::new(alertbridge_wal::MqttProps {
                    response_topic: Some(format!("hmi/answers/{i}")),
                    correlation: Some(vec![i as u8, 0xff]),
                    ..Default::default()
                }));
            }
            Entry::Pending(r)
        })
        .collect();
    let _ = rig.wal.append_batch(entries).expect("append");
    rig.run_for(Duration::from_secs(2), |_| {}).await;
    assert_eq!(rig.pending(), 0);
    let mut cursor = rig.wal.outbox_cursor();
    let queued: Vec<alertbridge_wal::OutboxEntry> = rig
        .wal
        .read_outbox(&mut cursor, 100)
        .expect("read outbox")
        .into_iter()
        .map(|i| i.expect("decodable").1)
        .collect();
    let states: Vec<_> = queued.iter().map(|e| e.state).collect();
    use alertbridge_wal::ReceiptState::{DeadLettered, Delivered};
    assert_eq!(states, [Delivered, Delivered, DeadLettered, DeadLettered]);
    assert_eq!(queued[0].execution_id.as_deref(), Some("exec-1"));
    assert_eq!(queued[0].topic, "plant/north/alerts/d1");
    assert_eq!(queued[0].status, Some(202));
    let dead = queued[2].dead.as_ref().expect("dead-letter part");
    assert_eq!(dead.kind, DeadKind::Rejected);
    assert!(dead.reason.contains("400"), "{}", dead.reason);
    // Each receipt knows where its publisher asked for it, delivered or dead-lettered.
    let replies: Vec<_> = queued
        .iter()
        .map(|e| {
            e.reply
                .as_ref()
                .map(|r| (r.topic.as_str(), r.correlation.clone()))
        })
        .collect();
    assert_eq!(
        replies,
        [
            Some(("hmi/answers/0", Some(vec![0, 0xff]))),
            None,
            Some(("hmi/answers/2", Some(vec![2, 0xff]))),
            None
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn with_receipts_off_the_drain_queues_none() {
    let client = Scripted::new([], accepted());
    let mut rig = rig(delivery(|_| {}), MappingConfig::default(), client.clone());
    rig.append(3);
    rig.run_for(Duration::from_secs(1), |_| {}).await;
    assert_eq!(rig.pending(), 0);
    assert_eq!(rig.wal.outbox_len(), 0);
}
