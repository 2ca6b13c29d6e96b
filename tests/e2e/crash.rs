//! kill -9 during a burst, repeatedly: every alert the broker acked to the publisher is
//! delivered; duplicates stay within the stated bound.
//!
//! Where duplicates can come from, and the bound (docs/design.md): the ingest side has none
//! (a redelivery after a crash between fsync and PUBACK hits the durable duplicate window).
//! The drain side can repeat an alert whose 2xx arrived but whose removal from `pending` was
//! not yet flushed (removals are not fsynced; sled flushes every 500 ms), plus requests in
//! flight at the kill: per kill at most `max_in_flight + rate_per_sec × 0.5 s`.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_burst_loses_no_acked_alert() {
    const N: usize = 4000;
    const KILLS: usize = 5;
    let broker = Mosquitto::start();
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        rate_per_sec: 400.0,
        burst: 50,
        max_in_flight: 8,
        ..AgentOptions::default()
    };
    let mut agent = Agent::start(broker.port, &sim, &opts);
    let cancel = CancellationToken::new();
    let (plant, task) = Plant::connect(broker.port, "plant-crash", cancel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let acked =
        publish_while_killing(plant, &mut agent, N, KILLS, Duration::from_millis(400)).await;
    assert_all_delivered(&acked, &sim, &agent, Duration::from_secs(60)).await;

    let counts = accepted_counts(&sim);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let bound = KILLS * (opts.max_in_flight + (opts.rate_per_sec * 0.5) as usize);
    println!("kill9: kills={KILLS} published={N} acked={} delivered={} duplicates={duplicates} bound={bound}", acked.len(), counts.len());
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the bound {bound}"
    );
    assert_clean_exit(&mut agent);
    cancel.cancel();
    let _ = task.await;
}
