//! The filesystem itself filling up (issue 4, point 8): below `store.min_free_bytes` ingest holds
//! back exactly like at the budget, so sled never meets ENOSPC mid-write (a failed write would
//! poison the log); when space comes back it resumes and nothing is lost.
//!
//! Needs a small filesystem of its own: the test mounts a tmpfs, which requires root (CI and
//! this project's machines run as root). Without the privilege it says so and does nothing.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_filesystem_holds_alerts_at_the_broker_and_loses_nothing_when_space_returns() {
    let Some(fs) = Tmpfs::mount("48m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the budget rule itself is unit-tested in ingest/tests.rs");
        return;
    };
    let store = fs.0.path().join("wal");
    let filler = fs.0.path().join("filler");
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        store_extra: format!("min_free_bytes = {}", 16 << 20),
        ..AgentOptions::with_admin()
    };
    let s = Scenario::start_with_store("plant-enospc", sim, &opts, &store);
    let (sim, agent, plant) = (&s.sim, &s.agent, &s.plant);
    assert!(
        wait_until(Duration::from_secs(10), || agent.status().is_some()).await,
        "agent up\n{}",
        agent.logs()
    );
    wait_subscribed(agent).await;

    // Something else on the gateway fills the disk: leave ~4 MiB free.
    let free = rustix_free(fs.0.path());
    std::fs::write(&filler, vec![0u8; (free.saturating_sub(4 << 20)) as usize])
        .expect("fill the filesystem");
    publish_alerts(plant, 0, 300, 10).await;
    // the broker takes them
    assert_all_acked(plant, 300, Duration::from_secs(20)).await;
    let held = agent.wait_backpressure(Duration::from_secs(15)).await;
    let status = agent.status().expect("status");
    assert!(
        held,
        "low free space reported as backpressure: {status}\n{}",
        agent.logs()
    );
    assert_eq!(
        status["counters"]["acked"], 0,
        "nothing acked while the disk is full: {status}"
    );

    // Space comes back: ingest resumes by itself, everything is delivered.
    std::fs::remove_file(&filler).expect("free the space");
    let acked = plant.acked_ids();
    assert_all_delivered(&acked, sim, agent, Duration::from_secs(30)).await;
    // the log is intact and closes cleanly
    s.finish().await;
}

fn rustix_free(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

/// Issue 9, point 6: after a restart on a *completely* full filesystem the old agent shut its MQTT
/// side down, never delivered the 11 pending alerts, said "delivery running", and ignored
/// SIGTERM. Now: the log opens (it writes nothing at open that needs space), ingest holds back,
/// what is pending is delivered, and SIGTERM ends it with a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_full_filesystem_delivers_what_is_pending_and_stops_on_sigterm() {
    let Some(fs) = Tmpfs::mount("32m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let store = fs.0.path().join("wal");
    let sim = sim(Duration::from_secs(3600)).await;
    // Genesys down while the alerts come in: they stay pending.
    sim.outage_for(Duration::from_secs(3600));
    let opts = AgentOptions {
        store_extra: format!("min_free_bytes = {}", 4 << 20),
        ..AgentOptions::with_admin()
    };
    let mut s = Scenario::start_with_store("plant-full", sim, &opts, &store);
    assert!(
        wait_until(Duration::from_secs(10), || s.agent.status().is_some()).await,
        "agent up\n{}",
        s.agent.logs()
    );
    // A fresh session holds no subscription until its SUBACK: publishing before it would be
    // publishing to nobody.
    wait_subscribed(&s.agent).await;
    publish_alerts(&s.plant, 0, 11, 5).await;
    s.status_until(Duration::from_secs(20), |st| st["pending"] == 11)
        .await;
    assert_clean_exit(&mut s.agent);

    // The disk fills to the last byte while the agent is down.
    let filler = fs.0.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]); // ENOSPC part-way: the disk is full
    assert!(
        rustix_free(fs.0.path()) < 64 << 10,
        "the filesystem is full"
    );

    s.sim.set_faults(Faults::default());
    s.agent.start_again();
    let acked: std::collections::HashSet<String> =
        (0..11).map(|i| format!("alert-{i:07}")).collect();
    assert_all_delivered(&acked, &s.sim, &s.agent, Duration::from_secs(30)).await;
    // A new alert now: ingest holds it back (the broker keeps it), delivery went on.
    publish_alerts(&s.plant, 11, 1, 1).await;
    s.status_until(Duration::from_secs(20), |st| {
        st["counters"]["backpressure"] == true && st["counters"]["acked"] == 0
    })
    .await;
    // SIGTERM ends it promptly and cleanly.
    let started = std::time::Instant::now();
    assert_clean_exit(&mut s.agent);
    assert!(started.elapsed() < Duration::from_secs(15));
    let _ = std::fs::remove_file(&filler);
    s.cancel.cancel();
    let _ = s.task.await;
}
