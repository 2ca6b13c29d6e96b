//! The agent under the backlog bench: the real binary as a child process in a home of its own
//! (config, store), its status endpoint, and waiting until it is ready after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::broker::*;
use genesys_sim::Sim;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the agent of one (mode, N) lives: its config, store and logs.
pub(crate) struct AgentHome {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) admin: String,
    pub(crate) store: PathBuf,
    pub(crate) starts: u32,
}

impl AgentHome {
    pub(crate) fn new(broker_port: u16, sim: &Sim) -> AgentHome {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "bench-secret").expect("secret");
        let store = dir.path().join("wal");
        let admin = format!("127.0.0.1:{}", free_port());
        let text = format!(
            r#"[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "ab-backlog"
topics = ["plant/+/alerts/#"]
keep_alive_secs = 30

[store]
dir = "{store}"
max_bytes = 4294967296

[genesys]
login_url = "{url}"
api_url = "{url}"
client_id = "bench"
client_secret_file = "{secret}"
flow_id = "f"

[delivery]
breaker_failures = 1
breaker_cooldown_ms = 600000

[mapping]
alert_id_field = "alert_id"

[admin]
listen = "{admin}"

[log]
level = "info"
format = "json"
"#,
            store = store.display(),
            url = sim.base_url(),
            secret = secret.display(),
        );
        let config = dir.path().join("alertbridge.toml");
        std::fs::write(&config, text).expect("write config");
        AgentHome {
            dir,
            config,
            admin,
            store,
            starts: 0,
        }
    }

    pub(crate) fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("agent-{start}.log"))
    }

    /// Spawn the agent binary (under `BACKLOG_AGENT_WRAPPER` if set; `run` names the profile).
    pub(crate) fn spawn(&mut self, run: &str) -> Agent {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let bin = env!("CARGO_BIN_EXE_alertbridge");
        let only = std::env::var("BACKLOG_AGENT_WRAPPER_FOR").unwrap_or_default();
        let wrapper = std::env::var("BACKLOG_AGENT_WRAPPER")
            .ok()
            .filter(|w| !w.trim().is_empty() && run.contains(only.as_str()));
        let mut cmd = match &wrapper {
            Some(w) => {
                let w = w.replace("{run}", run);
                let mut parts = w.split_whitespace();
                let mut c = Command::new(parts.next().expect("wrapper command"));
                c.args(parts).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let spawned_at = SystemTime::now();
        let t0 = Instant::now();
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn alertbridge");
        let pid = if wrapper.is_some() {
            find_descendant(child.id(), "alertbridge", Duration::from_secs(20))
                .expect("the wrapper started alertbridge")
        } else {
            child.id()
        };
        Agent {
            child: Some(child),
            pid,
            admin: self.admin.clone(),
            log: self.log_path(self.starts),
            spawned_at,
            t0,
        }
    }
}

/// A descendant of `root` whose `comm` is `name`.
pub(crate) fn find_descendant(root: u32, name: &str, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut parent = HashMap::new();
        let mut comm = HashMap::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so split at the last ')'
            let Some((head, tail)) = stat.rsplit_once(')') else {
                continue;
            };
            let c = head.split_once('(').map(|x| x.1).unwrap_or("");
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent.insert(pid, pp);
                comm.insert(pid, c.to_string());
            }
        }
        for (&pid, c) in &comm {
            if c != name {
                continue;
            }
            let mut p = pid;
            while let Some(&pp) = parent.get(&p) {
                if pp == root {
                    return Some(pid);
                }
                if pp <= 1 {
                    break;
                }
                p = pp;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// One running agent process.
pub(crate) struct Agent {
    /// The spawned process (the wrapper when profiling); killed and reaped on drop.
    pub(crate) child: Option<Child>,
    /// The agent itself (differs from `child` under a wrapper).
    pub(crate) pid: u32,
    pub(crate) admin: String,
    pub(crate) log: PathBuf,
    pub(crate) spawned_at: SystemTime,
    pub(crate) t0: Instant,
}

impl Agent {
    /// `GET /status` of the running agent.
    pub(crate) async fn status(&self) -> Option<Value> {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
            let req = format!(
                "GET /status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.admin
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.ok()?;
            let answer = String::from_utf8_lossy(&answer);
            let (head, body) = answer.split_once("\r\n\r\n")?;
            if !head.starts_with("HTTP/1.1 200") {
                return None;
            }
            serde_json::from_str(body).ok()
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .ok()
            .flatten()
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for the exit; returns how long the shutdown took and the exit code.
    pub(crate) fn stop(&mut self) -> (Duration, Option<i32>) {
        let Some(mut c) = self.child.take() else {
            return (Duration::ZERO, None);
        };
        let t = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = t + Duration::from_secs(120);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return (t.elapsed(), st.code());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return (t.elapsed(), None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn counter(st: &Value, name: &str) -> u64 {
    st["counters"][name].as_u64().unwrap_or(0)
}

/// Requests the simulator logged at or after `since`: the earliest arrival, if any.
pub(crate) fn first_request_since(sim: &Sim, since: SystemTime) -> Option<SystemTime> {
    sim.requests()
        .into_iter()
        .map(|r| r.at)
        .filter(|at| *at >= since)
        .min()
}

/// Milestones of an agent start, from spawn.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ready {
    pub(crate) status: Option<Duration>,
    pub(crate) connected: Option<Duration>,
    pub(crate) subscribed: Option<Duration>,
    pub(crate) first_attempt: Option<Duration>,
    /// The latest of the required milestones (None: not ready before the timeout).
    pub(crate) ready: Option<Duration>,
}

/// Wait until the agent is ready: status answers with `connected`, the log says `subscribed`,
/// and (when `want_attempt`) the simulator logged a request from it.
pub(crate) async fn wait_ready(
    agent: &Agent,
    sim: &Sim,
    want_attempt: bool,
    timeout: Duration,
) -> Ready {
    let mut r = Ready::default();
    let deadline = agent.t0 + timeout;
    while Instant::now() < deadline {
        let now = agent.t0.elapsed();
        if let Some(st) = agent.status().await {
            r.status.get_or_insert(now);
            if st["counters"]["connected"].as_bool() == Some(true) {
                r.connected.get_or_insert(now);
            }
        }
        if r.subscribed.is_none() {
            // A new session logs `subscribed` at the SUBACK; a resumed one (every restart here)
            // keeps its subscriptions and does not subscribe again: its CONNACK says so.
            let log = agent.logs();
            if log.contains("\"subscribed\"") || log.contains("session_present=true") {
                r.subscribed = Some(agent.t0.elapsed());
            }
        }
        if want_attempt && r.first_attempt.is_none() {
            if let Some(at) = first_request_since(sim, agent.spawned_at) {
                r.first_attempt = Some(at.duration_since(agent.spawned_at).unwrap_or_default());
            }
        }
        if let (Some(c), Some(s)) = (r.connected, r.subscribed) {
            if !want_attempt {
                r.ready = Some(c.max(s));
                return r;
            }
            if let Some(a) = r.first_attempt {
                r.ready = Some(c.max(s).max(a));
                return r;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r
}

// ---------------------------------------------------------------------------------------------
// one row
