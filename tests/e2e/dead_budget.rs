//! Dead letters never stop ingest (issue 9, point 3).
//!
//! The bug: dead letters counted against `store.max_bytes`, were never evicted and could not be
//! purged, so one device flooding malformed payloads filled the budget and from then on no alert
//! of any device was acked. Now dead letters have their own budget: beyond it the oldest are
//! exported as JSON lines (fsynced) and removed; `dead-letters purge` deletes on request.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_payloads_never_stops_good_alerts() {
    const BAD: usize = 1500;
    const GOOD: usize = 200;
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        // A small log budget, and a dead-letter budget of 64 KiB: the flood is ~1.5 MB.
        store_extra: "max_bytes = 409600\nsegment_bytes = 65536\ndead_letters_max_bytes = 65536"
            .into(),
        ..AgentOptions::with_admin()
    };
    let mut s = Scenario::start_subscribed("plant-flood", sim, &opts).await;
    let junk = vec![b'#'; 1000];
    for i in 0..BAD {
        s.plant.publish_malformed(&junk).await.expect("publish");
        if i % 8 == 0 {
            publish_alerts(&s.plant, i / 8, 1, 1).await;
        }
    }
    publish_alerts(&s.plant, BAD / 8 + 1, GOOD - (BAD / 8 + 1), 10).await;
    s.wait_acked(BAD + GOOD, Duration::from_secs(60)).await;
    let good = s.acked_alert_ids();
    assert_eq!(good.len(), GOOD);
    assert_all_delivered(&good, &s.sim, &s.agent, Duration::from_secs(60)).await;
    let status = s
        .status_until(Duration::from_secs(20), |st| {
            st["counters"]["dead_lettered"].as_u64() == Some(BAD as u64)
        })
        .await;
    assert!(
        status["dead_letter_bytes"].as_u64().unwrap_or(u64::MAX) <= 65_536,
        "the dead-letter budget holds: {status}"
    );
    let exported = status["dead_letters_exported"].as_u64().unwrap_or(0);
    let kept = status["dead_letters"].as_u64().unwrap_or(0);
    assert_eq!(
        exported + kept,
        BAD as u64,
        "every dead letter kept or exported: {status}"
    );
    s.stop().await;

    // The exported ones are readable JSON lines beside the store.
    let export = s.agent.dir.path().join("wal/exported-dead-letters");
    let lines: usize = std::fs::read_dir(&export)
        .expect("export dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .map(|text| {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("json line");
                assert_eq!(v["kind"], "Malformed");
            }
            text.lines().count()
        })
        .sum();
    assert_eq!(lines as u64, exported);

    // Purge: a dry run counts, --yes deletes.
    let dry = s
        .agent
        .cli(&["dead-letters", "purge", "--kind", "malformed"]);
    assert!(dry.status.success(), "{dry:?}");
    assert!(String::from_utf8_lossy(&dry.stdout)
        .contains(&format!("{kept} dead letter(s) would be deleted")));
    let real = s
        .agent
        .cli(&["dead-letters", "purge", "--kind", "malformed", "--yes"]);
    assert!(real.status.success(), "{real:?}");
    let after = s.agent.status().expect("status");
    assert_eq!(after["dead_letters"], 0, "{after}");
    s.finish().await;
}
