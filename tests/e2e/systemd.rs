//! systemd's notification protocol (`Type=notify`, the issue on running unattended, §3) with the
//! real binary: the test binds the unix datagram socket systemd would (`NOTIFY_SOCKET`), sets
//! `WATCHDOG_USEC` as a unit with `WatchdogSec=` does, and reads what the agent says. systemd
//! itself is not PID 1 here; what it does with the messages is systemd's part (the manual check
//! is in docs/operations.md). Also the journal's side of logging (§4): with `JOURNAL_STREAM`
//! naming stderr, `log.format = "auto"` writes each line with its syslog priority prefix.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// The service manager's end: every datagram the agent sent, in arrival order.
struct NotifySocket {
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        received.lock().expect("not poisoned").push(text);
                    }
                }
            })
        };
        NotifySocket {
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Every datagram so far.
    fn datagrams(&self) -> Vec<String> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// Every line (`KEY=value`) of every datagram so far.
    fn lines(&self) -> Vec<String> {
        self.datagrams()
            .iter()
            .flat_map(|d| d.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    fn has_status(&self, part: &str) -> bool {
        self.lines()
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains(part))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start broker, simulator and agent, the agent with `NOTIFY_SOCKET` (and a 1 s watchdog) and
/// `env`; the socket lives in the agent's own directory. With `journal`, `JOURNAL_STREAM`
/// names the agent's stderr (its log file) as systemd does when stderr is the journal.
async fn notified_scenario(
    name: &str,
    env: &[(&str, &str)],
    journal: bool,
) -> (Scenario, NotifySocket) {
    let sim = sim(Duration::from_secs(3600)).await;
    let opts = AgentOptions {
        admin: true,
        ..AgentOptions::default()
    };
    let mut s = Scenario::start(name, sim, &opts);
    let path = s.agent.dir.path().join("notify.sock");
    let socket = NotifySocket::bind(&path);
    let path = path.to_str().expect("a UTF-8 temp path").to_owned();
    let mut all = vec![
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    all.extend_from_slice(env);
    // The next start writes its stderr to agent-2.log (created now, truncated then: same inode).
    let stream = if journal {
        use std::os::unix::fs::MetadataExt;
        let log = std::fs::File::create(s.agent.dir.path().join("agent-2.log")).expect("log");
        let m = log.metadata().expect("stat the log");
        format!("{}:{}", m.dev(), m.ino())
    } else {
        String::new()
    };
    if journal {
        all.push(("JOURNAL_STREAM", stream.as_str()));
    }
    s.agent.set_env(&all);
    // The first start had no NOTIFY_SOCKET; this one does.
    s.agent.restart();
    (s, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let (mut s, socket) = notified_scenario("plant-notify", &[], true).await;
    assert!(
        wait_until(Duration::from_secs(20), || socket.count("READY=1") == 1).await,
        "READY=1 once subscribed: {:?}\n{}",
        socket.datagrams(),
        s.agent.logs()
    );
    // READY=1 means every subscription is held: /ready agrees.
    assert_eq!(
        s.agent.get("/ready").map(|(c, _)| c),
        Some(200),
        "{:?}",
        s.agent.get("/ready")
    );
    assert!(socket.has_status("ready; "), "{:?}", socket.lines());
    assert!(
        wait_until(Duration::from_secs(10), || socket.count("WATCHDOG=1") >= 3).await,
        "WATCHDOG=1 every half second with WATCHDOG_USEC=1000000: {:?}",
        socket.lines()
    );

    // An alert flows: STATUS counts it within a few seconds.
    let id = publish_leveled(&s.plant, "notify", 1, "critical").await;
    s.wait_accepted(1, Duration::from_secs(20)).await;
    assert!(
        wait_until(Duration::from_secs(15), || socket
            .has_status("0 pending, 1 delivered, 0 dead-lettered since start"))
        .await,
        "STATUS shows {id} delivered: {:?}",
        socket.lines()
    );

    s.stop().await;
    assert_eq!(socket.count("STOPPING=1"), 1, "{:?}", socket.lines());
    assert!(socket.has_status("stopping"), "{:?}", socket.lines());
    assert_eq!(socket.count("READY=1"), 1, "READY=1 is said once");

    // log.format = "auto" and stderr is "the journal": every line carries its priority.
    let journal = std::fs::read_to_string(s.agent.dir.path().join("agent-2.log")).expect("log");
    let lines: Vec<&str> = journal.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>")),
        "info lines at priority 6: {journal}"
    );
    assert!(
        lines.iter().all(|l| ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| l.starts_with(p))),
        "every line has a priority prefix: {journal}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_stream_that_is_not_stderr_keeps_plain_text() {
    // A process started from a unit's shell inherits JOURNAL_STREAM with another stderr.
    let sim = sim(Duration::from_secs(3600)).await;
    let mut s = Scenario::start("plant-plain", sim, &AgentOptions::default());
    s.agent.set_env(&[("JOURNAL_STREAM", "1:1")]);
    s.agent.restart();
    let log = s.agent.dir.path().join("agent-2.log");
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("subscribed")))
        .await,
        "{}",
        s.agent.logs()
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.lines().all(|l| !l.starts_with('<')),
        "no priority prefix: {text}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_stops_when_the_drain_loop_is_wedged() {
    let (s, socket) = notified_scenario(
        "plant-wedged",
        &[("ALERTBRIDGE_FAULT_WEDGE_DRAIN", "1")],
        false,
    )
    .await;
    // Alive at first: the drain turned once and the MQTT loop turns.
    assert!(
        wait_until(Duration::from_secs(20), || socket.count("WATCHDOG=1") >= 2).await,
        "WATCHDOG=1 while the loops are young: {:?}\n{}",
        socket.lines(),
        s.agent.logs()
    );
    // The drain's liveness limit (30 s) passes: the agent says so, and stops the pings.
    let unhealthy = "unhealthy: the drain loop has not turned";
    assert!(
        wait_until(Duration::from_secs(60), || socket.has_status(unhealthy)).await,
        "STATUS says the drain is wedged: {:?}",
        socket.lines()
    );
    let first_unhealthy = |d: &Vec<String>| {
        d.iter()
            .position(|g| g.contains(unhealthy))
            .expect("seen above")
    };
    // A few more turns (each 0.5 s, each with a STATUS while the age counts up).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let d = socket.datagrams();
            d.len() >= first_unhealthy(&d) + 4
        })
        .await,
        "the notifier keeps turning: {:?}",
        socket.datagrams()
    );
    let d = socket.datagrams();
    let after = &d[first_unhealthy(&d)..];
    assert!(
        after.iter().all(|g| !g.contains("WATCHDOG=1")),
        "no WATCHDOG=1 once the drain is wedged: {after:?}"
    );
    // The same judgement as /health.
    let (code, body) = s.agent.get("/health").expect("health answers");
    assert_eq!(code, 503, "{body}");
    assert!(body["reasons"].to_string().contains("drain loop"), "{body}");
}
