//! The drain against a real log and the in-process Genesys simulator: what needs HTTP (request
//! timeouts, slow answers, a slow fsync) or a whole run of the drain over real records.

use crate::clock::{now_ms, WallClock};
use crate::drain::dispatch::{map_guarded, MapFailure};
use crate::drain::expiry::status_in;
use crate::drain::settle::correlation_in;
use crate::drain::*;
use crate::schedule;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use alertbridge_genesys::{ClientConfig, GenesysClient, SecretSource, Target};
use alertbridge_payload::{Mapped, MappingConfig, Rejection};
use alertbridge_wal::{DeadKind, Entry, SyncTarget, WalConfig, PRIORITY_NORMAL};
use genesys_sim::{Sim, SimConfig};

/// An fsync that takes `delay` while `slow` is set (an SD card under write load).
struct SlowSync {
    slow: Arc<AtomicBool>,
    delay: Duration,
}

impl SyncTarget for SlowSync {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        if self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(self.delay);
        }
        file.sync_data()
    }
}

/// A drain over a log of its own and an in-process simulator.
struct Rig {
    _dir: tempfile::TempDir,
    wal: Wal,
    sim: Sim,
    counters: Arc<Counters>,
    drain: Option<Drain>,
}

fn delivery(change: impl FnOnce(&mut crate::config::RawDelivery)) -> DeliveryConfig {
    let mut raw = crate::config::RawDelivery {
        rate_per_sec: Some(1000.0),
        burst: Some(100),
        backoff_initial_ms: Some(50),
        backoff_max_ms: Some(200),
        breaker_cooldown_ms: Some(200),
        ..Default::default()
    };
    change(&mut raw);
    crate::config::delivery_from_raw(raw).expect("test delivery config is valid")
}

async fn rig_with(cfg: DeliveryConfig, sync: Option<Box<dyn SyncTarget>>) -> Rig {
    rig_timed(cfg, sync, ClientConfig::DEFAULT_REQUEST_TIMEOUT).await
}

async fn rig_timed(
    cfg: DeliveryConfig,
    sync: Option<Box<dyn SyncTarget>>,
    request_timeout: Duration,
) -> Rig {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_cfg = WalConfig::new(dir.path().join("wal"));
    let wal = match sync {
        Some(sync) => Wal::open_with_sync(wal_cfg, sync),
        None => Wal::open(wal_cfg),
    }
    .expect("log opens");
    let sim = Sim::start(SimConfig::default()).await.expect("sim starts");
    let mut client_cfg = ClientConfig::new(
        sim.base_url(),
        sim.base_url(),
        "sim-client",
        SecretSource::Static("sim-secret".into()),
        Target::Workflow {
            flow_id: "flow-1".into(),
            flow_version: None,
        },
    );
    client_cfg.request_timeout = request_timeout;
    let client = GenesysClient::new(client_cfg).expect("client builds");
    let mapper = Arc::new(Mapper::new(&MappingConfig::default()).expect("default mapping"));
    let counters = Arc::new(Counters::default());
    let drain = Drain::new(cfg, wal.clone(), client, mapper, counters.clone());
    Rig {
        _dir: dir,
        wal,
        sim,
        counters,
        drain: Some(drain),
    }
}

async fn rig() -> Rig {
    rig_with(delivery(|_| {}), None).await
}

fn record(id: &str, payload: &[u8], received_at_ms: u64) -> Record {
    Record::new(
        id,
        "plant/north/alerts/d1",
        payload.to_vec(),
        PRIORITY_NORMAL,
        received_at_ms,
    )
}

fn alert(n: usize) -> Record {
    let id = format!("a-{n}");
    let payload = serde_json::json!({"alert_id": id, "device_id": "d1", "alert_level": "major"});
    record(&id, payload.to_string().as_bytes(), now_ms())
}

impl Rig {
    fn append(&self, records: Vec<Record>) {
        let entries = records.into_iter().map(Entry::Pending).collect();
        let _ = self.wal.append_batch(entries).expect("append");
    }

    /// Run the drain until `until` holds (checked every 10 ms, 10 s at most), then stop it.
    async fn run_until(&mut self, what: &str, until: impl Fn(&Rig) -> bool) {
        let drain = self.drain.take().expect("the drain runs once");
        let (_feed, feed_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drain.run(feed_rx, cancel.clone()));
        let deadline = clock::now() + Duration::from_secs(10);
        while !until(self) {
            assert!(clock::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        task.await.expect("drain task").expect("drain ends cleanly");
    }
}

#[test]
fn correlation_id_is_read_from_a_reason() {
    assert_eq!(
        correlation_in("server error: HTTP 503 service.unavailable [correlation_id c-9]"),
        Some("c-9")
    );
    assert_eq!(correlation_in("timed out waiting for the answer"), None);
    assert_eq!(correlation_in("[correlation_id ]"), None);
}

#[test]
fn status_is_read_from_a_reason() {
    assert_eq!(
        status_in("server error: HTTP 503 service.unavailable"),
        Some(503)
    );
    assert_eq!(status_in("token request failed: connection refused"), None);
    assert_eq!(status_in("HTTP x"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_in_the_log_are_delivered_once_each_and_removed() {
    let mut rig = rig().await;
    rig.append((0..50).map(alert).collect());
    rig.run_until("50 deliveries", |r| r.sim.accepted().len() >= 50)
        .await;
    let mut ids: Vec<String> = rig
        .sim
        .accepted()
        .into_iter()
        .filter_map(|a| a.alert_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    assert_eq!(rig.wal.stats().expect("stats").pending, 0);
}

/// A wall clock that is the system's shifted by `offset` ms (a test moves it).
fn faked_wall(offset: &Arc<std::sync::atomic::AtomicI64>) -> WallClock {
    let offset = offset.clone();
    Arc::new(move || (now_ms() as i64 + offset.load(Ordering::Relaxed)) as u64)
}

const HOUR_MS: i64 = 3_600_000;

/// Issue 9, item 5: the TTL age was `wall now - received_at_ms`, so when NTP moved the wall
/// clock of a gateway without RTC hours ahead, every alert received seconds before was
/// dead-lettered as expired. The drain reads 5 alerts, the faked wall clock jumps 5 h ahead,
/// the TTL is 60 s: the sweep expires nothing and all 5 are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_of_hours_ahead_expires_no_fresh_alert() {
    let mut rig = rig_with(delivery(|d| d.ttl_normal_secs = Some(60)), None).await;
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let drain = rig.drain.as_mut().expect("drain");
    drain.set_wall_clock(faked_wall(&offset));
    rig.append((0..5).map(alert).collect());
    let drain = rig.drain.as_mut().expect("drain");
    assert_eq!(drain.refill().await.expect("refill"), 5);
    offset.store(5 * HOUR_MS, Ordering::Relaxed);
    drain.sweep_expired().await.expect("sweep");
    assert_eq!(rig.counters.expired.load(Ordering::Relaxed), 0);
    rig.run_until("5 deliveries", |r| r.sim.accepted().len() >= 5)
        .await;
    assert_eq!(rig.counters.expired.load(Ordering::Relaxed), 0);
    assert_eq!(rig.counters.clock_jumps.load(Ordering::Relaxed), 1);
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
}

/// Issue 9, item 5: retry times lived on the wall clock, so NTP setting it back 5 h put
/// every alert in backoff to sleep for 5 h. The API fails (503) until 3 retries are
/// scheduled; then the faked wall clock goes back 5 h and the API recovers: everything is
/// delivered within the (200 ms) backoff, nothing waits for the wall clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_set_back_hours_does_not_put_retries_to_sleep() {
    let mut rig = rig_with(delivery(|d| d.breaker_failures = Some(1000)), None).await;
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    rig.drain
        .as_mut()
        .expect("drain")
        .set_wall_clock(faked_wall(&offset));
    rig.sim.update_faults(|f| f.error_rate_503 = 1.0);
    rig.append((0..3).map(alert).collect());
    let started = clock::now();
    rig.run_until("3 deliveries after the clock went back", |r| {
        if r.counters.retried.load(Ordering::Relaxed) >= 3 && offset.load(Ordering::Relaxed) == 0 {
            offset.store(-5 * HOUR_MS, Ordering::Relaxed);
            r.sim.set_faults(genesys_sim::Faults::default());
        }
        r.sim.accepted().len() >= 3
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(offset.load(Ordering::Relaxed), -5 * HOUR_MS);
}

/// Issue 9, item 5: a retry time persisted while the wall clock ran 5 h ahead (then NTP set
/// it back) parked the alert for 5 h. Read back it is due within `backoff_max` (200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_time_persisted_hours_ahead_is_due_within_the_longest_backoff() {
    let mut rig = rig().await;
    let ahead = now_ms() + 5 * HOUR_MS as u64;
    let records = (0..3)
        .map(|n| {
            let mut r = alert(n);
            r.attempts = 1;
            r.next_attempt_ms = ahead;
            r
        })
        .collect();
    rig.append(records);
    let started = clock::now();
    rig.run_until("3 deliveries", |r| r.sim.accepted().len() >= 3)
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A mapper with a bug: it panics on any payload containing `PANIC`.
fn buggy_map(
    mapper: &Mapper,
    topic: &str,
    payload: &[u8],
    props: &[(String, String)],
) -> Result<Mapped, Rejection> {
    if payload.windows(5).any(|w| w == b"PANIC") {
        panic!("index out of bounds (test)");
    }
    mapper.map_with_props(topic, payload, props)
}

#[test]
fn a_panicking_mapper_is_caught_with_its_message() {
    let mapper = Mapper::new(&MappingConfig::default()).expect("default mapping");
    let ok = map_guarded(buggy_map, &mapper, "t", br#"{"a": 1}"#, &[]);
    assert!(ok.is_ok(), "{ok:?}");
    match map_guarded(buggy_map, &mapper, "t", br#"{"a": "PANIC"}"#, &[]) {
        Err(MapFailure::Panicked(m)) => assert!(m.contains("index out of bounds"), "{m}"),
        other => panic!("not caught: {other:?}"),
    }
    assert!(matches!(
        map_guarded(buggy_map, &mapper, "t", b"not json", &[]),
        Err(MapFailure::Rejected(_))
    ));
}

/// Issue 9, item 5: ingest guards its mapping, the drain did not. A stored record that made
/// the mapper panic killed the drain (the agent exits, restarts, meets the same record
/// first: a crash loop, every alert behind it stuck), e.g. after `replay --all` by a build
/// with a mapper bug. Now it is a `Malformed` dead letter with the reason and the alerts
/// around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_panics_the_mapper_is_dead_lettered_and_delivery_goes_on() {
    let mut rig = rig().await;
    rig.drain.as_mut().expect("drain").map = buggy_map;
    let mut records: Vec<Record> = (0..3).map(alert).collect();
    let bad = br#"{"alert_id": "bad", "device_id": "PANIC"}"#;
    records.insert(1, record("bad", bad, now_ms()));
    rig.append(records);
    rig.run_until("3 deliveries and 1 dead letter", |r| {
        r.sim.accepted().len() >= 3 && r.counters.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    let dead: Vec<_> = rig
        .wal
        .dead_letters()
        .map(|d| d.expect("dead letter"))
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.kind, DeadKind::Malformed);
    assert!(
        dead[0].reason.message.contains("mapper failed")
            && dead[0].reason.message.contains("index out of bounds"),
        "{:?}",
        dead[0].reason
    );
    assert_eq!(
        dead[0].record.as_ref().map(|r| r.alert_id.as_str()),
        Some("bad")
    );
    assert_eq!(rig.wal.stats().expect("stats").pending, 0);
}

/// Throws away everything the drain knows about the alerts it read, keeping its cursors at
/// the end of the log: the state a lost scan result or a forgotten key leaves behind.
fn lose_track(drain: &mut Drain) {
    drain.held.clear();
    drain.held_per_lane.clear();
    drain.held_bytes = 0;
    drain.queue = Queue::new(drain.cfg.normal_every);
}

/// Issue 9, item 5: an alert the drain had forgotten (read by a cursor, then lost from
/// memory) stayed in the log until the next restart, with nothing saying so. The periodic
/// reconcile finds the drain idle with alerts pending in the log, confirms it on a second
/// look, logs at error, counts it and reads the log again from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_alerts_the_drain_lost_track_of_are_found_by_the_reconcile_and_delivered() {
    let mut rig = rig().await;
    rig.append((0..5).map(alert).collect());
    let drain = rig.drain.as_mut().expect("drain");
    assert_eq!(drain.refill().await.expect("refill"), 5);
    assert_eq!(drain.refill().await.expect("refill"), 0, "caught up");
    lose_track(drain);
    assert_eq!(
        drain.refill().await.expect("refill"),
        0,
        "the cursors do not see them"
    );
    assert!(
        !drain.reconcile().await.expect("reconcile"),
        "first look: only suspect"
    );
    assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 0);
    assert!(
        drain.reconcile().await.expect("reconcile"),
        "confirmed: repaired"
    );
    assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 1);
    rig.run_until("5 deliveries", |r| r.sim.accepted().len() >= 5)
        .await;
    assert_eq!(rig.wal.stats().expect("stats").pending, 0);
}

/// A record held in memory but in no queue, task or storm window (the state a delivery task
/// that vanished leaves) is queued again by the reconcile at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_alert_that_is_in_no_queue_is_queued_again_by_the_reconcile() {
    let mut rig = rig().await;
    rig.append((0..3).map(alert).collect());
    let drain = rig.drain.as_mut().expect("drain");
    drain.refill().await.expect("refill");
    drain.queue = Queue::new(drain.cfg.normal_every);
    assert!(drain.reconcile().await.expect("reconcile"));
    assert_eq!(drain.queue.len(), 3);
    assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 1);
    rig.run_until("3 deliveries", |r| r.sim.accepted().len() >= 3)
        .await;
}

/// The reconcile repairs nothing while alerts legitimately wait (a retry time ahead) or the
/// drain is simply not caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_leaves_a_waiting_backlog_alone() {
    let mut rig = rig_with(delivery(|d| d.backoff_max_ms = Some(60_000)), None).await;
    let later = now_ms() + 30_000;
    rig.append(
        (0..3)
            .map(|n| {
                let mut r = alert(n);
                r.next_attempt_ms = later;
                r
            })
            .collect(),
    );
    let drain = rig.drain.as_mut().expect("drain");
    assert!(
        !drain.reconcile().await.expect("reconcile"),
        "not read yet: not idle"
    );
    drain.refill().await.expect("refill");
    for _ in 0..3 {
        assert!(!drain.reconcile().await.expect("reconcile"));
    }
    assert_eq!(drain.queue.waiting_len(), 3);
    assert_eq!(rig.counters.drain_repairs.load(Ordering::Relaxed), 0);
}

/// Issue 9, item 5: a delivery task that failed to join (panic, abort) left its alert held
/// and in no queue until restart, and if it was the breaker's probe the breaker stayed
/// half-open for good. Now its alert is queued again and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_whose_delivery_task_failed_is_queued_again() {
    let mut rig = rig().await;
    rig.sim.update_faults(|f| f.latency_ms = 2_000);
    rig.append(vec![alert(0)]);
    let drain = rig.drain.as_mut().expect("drain");
    drain.refill().await.expect("refill");
    drain.dispatch().await.expect("dispatch");
    assert_eq!(drain.tasks.len(), 1);
    drain.tasks.abort_all();
    let joined = drain.tasks.join_next_with_id().await.expect("a task");
    assert!(joined.is_err(), "aborted");
    drain.joined(joined).await.expect("joined");
    assert_eq!(drain.queue.ready_len(), 1);
    assert!(drain.in_flight.is_empty());
    assert_eq!(rig.counters.tasks_failed.load(Ordering::Relaxed), 1);
    rig.sim.set_faults(genesys_sim::Faults::default());
    rig.run_until("the delivery", |r| !r.sim.accepted().is_empty())
        .await;
}

/// Issue 9, item 4: an API that answers 400 to everything (a flow's inputs changed in
/// Architect) dead-lettered the whole backlog at full rate. Now the 5th identical rejection
/// pauses delivery: 5 dead letters, the other 195 stay pending (also the requests that were
/// in flight when it paused), the pause is named in status; once the API accepts again the
/// probe passes and everything else is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_to_every_request_pauses_after_five_dead_letters_and_the_rest_wait_for_the_fix() {
    let mut rig = rig_with(delivery(|d| d.max_in_flight = Some(16)), None).await;
    rig.sim.update_faults(|f| f.force_status = Some(400));
    rig.append((0..200).map(alert).collect());
    let probes_while_paused = Arc::new(AtomicU64::new(0));
    let seen = probes_while_paused.clone();
    rig.run_until("the pause, probes, then the fix and 195 deliveries", |r| {
        if r.counters.paused.load(Ordering::Relaxed) {
            let answered_400 = r.sim.requests().iter().filter(|q| q.status == 400).count() as u64;
            seen.store(answered_400, Ordering::Relaxed);
            // the in-flight answers and three probes met the 400: fix it
            if answered_400 >= 16 + 3 {
                r.sim.set_faults(genesys_sim::Faults::default());
            }
        }
        r.sim.accepted().len() >= 195
    })
    .await;
    assert!(probes_while_paused.load(Ordering::Relaxed) >= 19);
    let dead: Vec<_> = rig
        .wal
        .dead_letters()
        .map(|d| d.expect("dead letter"))
        .collect();
    assert_eq!(dead.len(), 5, "{dead:#?}");
    assert!(dead.iter().all(|d| d.reason.status == Some(400)));
    assert_eq!(rig.wal.stats().expect("stats").pending, 0);
    let snap = rig.counters.snapshot();
    assert!(!snap.paused, "resumed by itself");
    assert_eq!(snap.dead_lettered, 5);
}

/// Issue 9, item 4: 408/409/423/425 are retried now, but the drain counted them toward the
/// breaker like a 5xx, so an API that answered "conflict" opened it and held every other
/// alert. With a threshold of 3, twenty 409s leave it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_4xx_answers_do_not_open_the_breaker() {
    let mut rig = rig_with(delivery(|d| d.breaker_failures = Some(3)), None).await;
    rig.sim.update_faults(|f| f.force_status = Some(409));
    rig.append((0..5).map(alert).collect());
    let opened = Arc::new(AtomicBool::new(false));
    let seen = opened.clone();
    rig.run_until("20 retries, then the deliveries", |r| {
        if r.counters.snapshot().breaker_open {
            seen.store(true, Ordering::Relaxed);
        }
        if r.counters.retried.load(Ordering::Relaxed) >= 20 {
            r.sim.set_faults(genesys_sim::Faults::default());
        }
        r.sim.accepted().len() >= 5
    })
    .await;
    assert!(
        !opened.load(Ordering::Relaxed),
        "the breaker opened on 409s"
    );
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
}

fn timeouts_cfg() -> DeliveryConfig {
    delivery(|d| {
        d.max_request_timeout_ms = Some(800);
        d.max_timeouts = Some(3);
        d.breaker_failures = Some(1000);
    })
}

/// Arrival times (ms since the first) of the launches of `alert_id` the simulator saw, and
/// how many it accepted.
fn launches_of(sim: &Sim, alert_id: &str) -> (Vec<u64>, usize) {
    let accepted: Vec<_> = sim
        .accepted()
        .into_iter()
        .filter(|a| a.alert_id.as_deref() == Some(alert_id))
        .collect();
    let at: Vec<u64> = accepted
        .iter()
        .map(|a| {
            a.at.duration_since(accepted[0].at)
                .unwrap_or_default()
                .as_millis() as u64
        })
        .collect();
    (at, accepted.len())
}

/// Issue 9, item 7: with an API slower than the request timeout, every retry (and every
/// probe) launched the alert again, without end. Now each timed-out attempt waits twice as
/// long (200, 400, 800 ms: the cap), and the 3rd timeout makes it an `Unconfirmed` dead
/// letter: Genesys launched it 3 times (the simulator accepts, then answers after 2 s), never
/// more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_the_api_never_answers_in_time_is_launched_at_most_max_timeouts_times() {
    let mut rig = rig_timed(timeouts_cfg(), None, Duration::from_millis(200)).await;
    rig.sim.update_faults(|f| f.answer_latency_ms = 2_000);
    rig.append(vec![alert(0)]);
    rig.run_until("the dead letter", |r| {
        r.counters.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    let (at, launched) = launches_of(&rig.sim, "a-0");
    assert_eq!(launched, 3, "launches at {at:?}");
    // each attempt waited its whole (doubled) timeout before the next went
    assert!(
        at[1] >= 200 && at[2] - at[1] >= 400,
        "launches at {at:?} ms"
    );
    let dead: Vec<_> = rig
        .wal
        .dead_letters()
        .map(|d| d.expect("dead letter"))
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.kind, DeadKind::Unconfirmed);
    let msg = &dead[0].reason.message;
    for part in [
        "3 times",
        "0.2 s, 0.4 s, 0.8 s",
        "alertId a-0",
        "no execution or correlation id",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
    let record = dead[0].record.as_ref().expect("record kept");
    assert_eq!(record.attempts, 3);
    assert_eq!(schedule::timeouts_in(record.last_error.as_deref()), 3);
    // nothing more goes for it
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(launches_of(&rig.sim, "a-0").1, 3);
}

/// The longer timeout is what lets a slow API answer: 300 ms answers, 200 ms timeout. The
/// first attempt times out, the second (400 ms) gets the 2xx: launched twice, delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_timeout_the_longer_timeout_lets_a_slow_answer_arrive() {
    let mut rig = rig_timed(timeouts_cfg(), None, Duration::from_millis(200)).await;
    rig.sim.update_faults(|f| f.answer_latency_ms = 300);
    rig.append(vec![alert(0)]);
    rig.run_until("the delivery", |r| {
        r.counters.delivered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(launches_of(&rig.sim, "a-0").1, 2);
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 0);
}

/// The count is in the persisted record (`last_error`), so a restart does not reset it: an
/// alert read back with 2 timeouts waits 800 ms on its next attempt, and one more timeout
/// makes it a dead letter after a single launch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_count_survives_a_restart() {
    let mut rig = rig_timed(timeouts_cfg(), None, Duration::from_millis(200)).await;
    rig.sim.update_faults(|f| f.answer_latency_ms = 2_000);
    let mut r = alert(0);
    r.attempts = 2;
    r.last_error = Some(schedule::with_timeouts(
        "timed out waiting for the answer",
        2,
    ));
    rig.append(vec![r]);
    let started = clock::now();
    rig.run_until("the dead letter", |r| {
        r.counters.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(launches_of(&rig.sim, "a-0").1, 1);
    let dead: Vec<_> = rig
        .wal
        .dead_letters()
        .map(|d| d.expect("dead letter"))
        .collect();
    assert_eq!(dead[0].reason.kind, DeadKind::Unconfirmed);
}

/// Issue 9, item 5: the drain called the log synchronously inside its async task, so a
/// slow fsync (a dead letter is fsynced; an SD card under load takes hundreds of ms) held a
/// runtime worker: on a single-core board that starves the MQTT keep-alives. Now every log
/// call runs on the blocking pool. On a current-thread runtime, a ticker task keeps ticking
/// while the drain dead-letters a malformed record behind a 400 ms fsync.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_fsync_does_not_stall_the_runtime() {
    let slow = Arc::new(AtomicBool::new(false));
    let sync = SlowSync {
        slow: slow.clone(),
        delay: Duration::from_millis(400),
    };
    let mut rig = rig_with(delivery(|_| {}), Some(Box::new(sync))).await;
    rig.append(vec![record("bad", b"not json", now_ms())]);
    slow.store(true, Ordering::Relaxed);
    let longest_gap = Arc::new(AtomicU64::new(0));
    let ticker = {
        let longest_gap = longest_gap.clone();
        tokio::spawn(async move {
            let mut last = clock::now();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let gap = last.elapsed().as_millis() as u64;
                longest_gap.fetch_max(gap, Ordering::Relaxed);
                last = clock::now();
            }
        })
    };
    rig.run_until("the dead letter", |r| {
        r.counters.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    ticker.abort();
    let gap = longest_gap.load(Ordering::Relaxed);
    assert!(gap < 200, "the runtime stood still for {gap} ms");
    slow.store(false, Ordering::Relaxed);
    assert_eq!(rig.wal.stats().expect("stats").dead_letters, 1);
}
