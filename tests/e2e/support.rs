//! Real parts for end-to-end tests: a mosquitto per test (free port, own config and data dir,
//! persistence on), the Genesys simulator in-process on port 0, and the real `alertbridge`
//! binary as a child process that can be killed with SIGKILL and restarted.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use alertbridge::demo::plant::{alert, Plant};
pub(crate) use genesys_sim::{Faults, Sim, SimConfig};
pub(crate) use tokio_util::sync::CancellationToken;

/// The flow id every test's simulator knows.
pub(crate) const FLOW: &str = "e2e-flow";

/// Publish one QoS 1 alert with `mosquitto_pub` speaking MQTT 5, with `-D publish …` property
/// arguments; returns when the broker acked it.
pub(crate) fn publish_v5(port: u16, topic: &str, payload: &str, props: &[(&str, &str)]) {
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-q", "1", "-t", topic, "-m", payload]);
    for (name, value) in props {
        cmd.arg("-D").arg("publish").arg(name);
        cmd.args(value.split(' '));
    }
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (bound then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Wait until `cond` holds, polling every 50 ms; false when the deadline passed first.
pub(crate) async fn wait_until<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Async variant of [`wait_until`].
pub(crate) async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// A mosquitto of this test's own. Killed and reaped on drop.
pub(crate) struct Mosquitto {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Lines appended to the test template (`@DIR@` stands for the data dir).
    extra_conf: String,
}

impl Mosquitto {
    /// Start on a free port with persistence in its own directory.
    pub(crate) fn start() -> Mosquitto {
        Mosquitto::start_with(&[], "")
    }

    /// [`Mosquitto::start`] with `files` (name, content) written into its data dir first and
    /// `extra_conf` appended to its config (`@DIR@` is the data dir), e.g. a security plugin.
    pub(crate) fn start_with(files: &[(&str, &str)], extra_conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write broker file");
        }
        // mosquitto started as root drops to user `mosquitto`: without this it cannot write its
        // persistence file, and a broker restart silently loses every queued message.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod data dir");
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            extra_conf: extra_conf.to_string(),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let template = include_str!("../../config/mosquitto-test.conf.in");
        let conf = format!("{template}{}\n", self.extra_conf)
            .replace("@PORT@", &self.port.to_string())
            .replace("@DIR@", &self.dir.path().display().to_string());
        let conf_path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto); .ci/run installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the broker logged so far (errors, warnings and notices, e.g. `Expiring client
    /// <id> due to timeout.` when a session expires).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Graceful stop (SIGTERM: mosquitto writes its persistence file), then start again on the
    /// same port and data dir.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGTERM and reap.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start the simulator with the test flow and credentials.
pub(crate) async fn sim(token_ttl: Duration) -> Sim {
    sim_with(|c| c.token_ttl = token_ttl).await
}

/// [`sim`] with more changes to its config (e.g. a small `max_body_bytes`).
pub(crate) async fn sim_with(change: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut cfg = SimConfig {
        client_id: "e2e-client".into(),
        client_secret: "e2e-secret".into(),
        token_ttl: Duration::from_secs(3600),
        known_flow_ids: Some(vec![FLOW.into()]),
        ..SimConfig::default()
    };
    change(&mut cfg);
    Sim::start(cfg).await.expect("simulator starts")
}

/// Knobs of the agent's config in tests.
#[derive(Clone, Debug)]
pub(crate) struct AgentOptions {
    pub(crate) rate_per_sec: f64,
    pub(crate) burst: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) backoff_initial_ms: u64,
    pub(crate) backoff_max_ms: u64,
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_cooldown_ms: u64,
    /// `genesys.request_timeout_secs` (default 3).
    pub(crate) request_timeout_secs: u64,
    /// More `[store]` keys, one per line (e.g. `"max_bytes = 1048576"`).
    pub(crate) store_extra: String,
    /// More `[mqtt]` keys, one per line (e.g. `"protocol = \"5\""`).
    pub(crate) mqtt_extra: String,
    /// More `[delivery]` keys, one per line (e.g. `"normal_every = 3\nttl_normal_secs = 2"`).
    pub(crate) delivery_extra: String,
    /// Serve the status endpoint on a free loopback port, so `status --json` shows live
    /// counters while the agent runs (default: off).
    pub(crate) admin: bool,
    /// More `[mapping]` keys, one per line (e.g. `topic_pattern = "plant/{site}/alerts/{device}"`).
    pub(crate) mapping_extra: String,
    pub(crate) extra: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            rate_per_sec: 2000.0,
            burst: 200,
            max_in_flight: 16,
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            breaker_failures: 1000,
            breaker_cooldown_ms: 200,
            request_timeout_secs: 3,
            store_extra: String::new(),
            mqtt_extra: String::new(),
            delivery_extra: String::new(),
            admin: false,
            mapping_extra: String::new(),
            extra: String::new(),
        }
    }
}

impl AgentOptions {
    /// The defaults with the status endpoint on ([`AgentOptions::admin`]), for tests that read
    /// live counters.
    pub(crate) fn with_admin() -> AgentOptions {
        AgentOptions {
            admin: true,
            ..AgentOptions::default()
        }
    }
}

/// The real `alertbridge` binary, run with a config of this test's own.
pub(crate) struct Agent {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// `host:port` of the status endpoint (`AgentOptions::admin`).
    admin: Option<String>,
    /// Extra environment of the next start (fault injection), cleared by [`Agent::set_env`].
    env: Vec<(String, String)>,
}

impl Agent {
    /// Write the config (broker, simulator, store in its own dir) and start the binary.
    pub(crate) fn start(broker_port: u16, sim: &Sim, opts: &AgentOptions) -> Agent {
        Agent::start_inner(broker_port, sim, opts, None)
    }

    /// [`Agent::start`] with the log in `store` (e.g. on a small filesystem of the test's own).
    pub(crate) fn start_with_store(
        broker_port: u16,
        sim: &Sim,
        opts: &AgentOptions,
        store: &Path,
    ) -> Agent {
        Agent::start_inner(broker_port, sim, opts, Some(store))
    }

    fn start_inner(
        broker_port: u16,
        sim: &Sim,
        opts: &AgentOptions,
        store: Option<&Path>,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("wal"));
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "e2e-secret\n").expect("write secret");
        let config = dir.path().join("alertbridge.toml");
        let admin = opts.admin.then(|| format!("127.0.0.1:{}", free_port()));
        let text = format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "alertbridge-e2e"
topics = ["plant/+/alerts/#"]
keep_alive_secs = 5
reconnect_min_ms = 100
reconnect_max_ms = 1000
{mqtt_extra}

[store]
dir = "{store}"
{store_extra}

[genesys]
login_url = "{url}"
api_url = "{url}"
client_id = "e2e-client"
client_secret_file = "{secret}"
flow_id = "{FLOW}"
request_timeout_secs = {request_timeout}

[delivery]
rate_per_sec = {rate}
burst = {burst}
max_in_flight = {inflight}
backoff_initial_ms = {bi}
backoff_max_ms = {bm}
breaker_failures = {bf}
breaker_cooldown_ms = {bc}
shutdown_timeout_secs = 3
{delivery_extra}

[mapping]
alert_id_field = "alert_id"
{mapping_extra}

[admin]
listen = "{admin}"

[log]
level = "info"
{extra}
"#,
            store = store.display(),
            url = sim.base_url(),
            secret = secret.display(),
            rate = opts.rate_per_sec,
            burst = opts.burst,
            inflight = opts.max_in_flight,
            bi = opts.backoff_initial_ms,
            bm = opts.backoff_max_ms,
            bf = opts.breaker_failures,
            bc = opts.breaker_cooldown_ms,
            request_timeout = opts.request_timeout_secs,
            delivery_extra = opts.delivery_extra,
            store_extra = opts.store_extra,
            mqtt_extra = opts.mqtt_extra,
            admin = admin.clone().unwrap_or_default(),
            extra = opts.extra,
            mapping_extra = opts.mapping_extra,
        );
        std::fs::write(&config, text).expect("write config");
        let mut a = Agent {
            dir,
            config,
            child: None,
            starts: 0,
            admin,
            env: Vec::new(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{}.log", self.starts)))
            .expect("log file");
        let child = command(env!("CARGO_BIN_EXE_alertbridge"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn alertbridge");
        self.child = Some(child);
    }

    /// The environment of the next start ([`Agent::restart`], [`Agent::start_again`]).
    pub(crate) fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Start after the process ended by itself.
    pub(crate) fn start_again(&mut self) {
        self.child = None;
        self.spawn();
    }

    /// Wait until the process exits by itself; its exit status, `None` on timeout.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown path runs, exactly like a crash.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same store.
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub(crate) fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All log output so far (for assertion messages).
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            if let Ok(s) = std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log"))) {
                out.push_str(&format!("--- run {i} ---\n{s}"));
            }
        }
        out
    }

    /// `GET path` on this agent's admin endpoint (`AgentOptions::admin`).
    pub(crate) fn get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        http_get(self.admin.as_deref()?, path)
    }

    /// The client secret file the agent reads (rewrite it to rotate the secret).
    pub(crate) fn secret_path(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    /// The status as `alertbridge status --json` prints it: while the agent runs with
    /// `admin: true`, read from its status endpoint (`GET /status`, the JSON the CLI relays);
    /// otherwise from the CLI, which reads the log of the stopped agent. `None` when it failed
    /// (e.g. not up yet).
    pub(crate) fn status(&self) -> Option<serde_json::Value> {
        if let (Some(addr), Some(_)) = (&self.admin, &self.child) {
            return http_get_json(addr, "/status");
        }
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Wait until `status` reports backpressure (ingest holding back at its budget); false when
    /// `timeout` passed first.
    pub(crate) async fn wait_backpressure(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.status()
                .is_some_and(|s| s["counters"]["backpressure"] == true)
        })
        .await
    }

    /// `alertbridge dead-letters --json` (agent stopped): one JSON object per dead letter.
    pub(crate) fn dead_letters(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["dead-letters", "--json"]);
        assert!(
            out.status.success(),
            "dead-letters failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("dead-letters --json prints JSON lines"))
            .collect()
    }

    /// The pending records in the agent's log (agent stopped or killed: sled locks the store).
    pub(crate) fn pending_records(&self) -> Vec<(alertbridge_wal::Key, alertbridge_wal::Record)> {
        let cfg = alertbridge::Config::load(&self.config).expect("test config loads");
        let wal = alertbridge::open_wal(&cfg).expect("the log opens while the agent is down");
        wal.pending()
            .map(|r| r.expect("no corrupt record in a test log"))
            .collect()
    }

    /// Run a CLI subcommand against this agent's config.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        command(env!("CARGO_BIN_EXE_alertbridge"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run alertbridge cli")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET http://{addr}{path}` over a plain loopback socket: the status code and the JSON body.
pub(crate) fn http_get(addr: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    // generous: on a loaded 2-core CI machine an agent busy with a 20 MiB publish answers late
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, serde_json::from_str(body).ok()?))
}

/// [`http_get`] for a 200 answer: its JSON body.
fn http_get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    match http_get(addr, path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// A command for a test binary, through the qemu runner when cross-testing
/// (`CARGO_TARGET_<TRIPLE>_RUNNER`, like ripgrep's tests/util.rs).
pub(crate) fn command(bin: &str) -> Command {
    let runner = std::env::vars()
        .find(|(k, v)| k.starts_with("CARGO_TARGET_") && k.ends_with("_RUNNER") && !v.is_empty());
    match runner {
        Some((_, r)) => {
            let mut parts = r.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or("sh"));
            c.args(parts).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// What one run of the `alertbridge` binary printed, and its exit code.
pub(crate) struct CliOutput {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl CliOutput {
    /// Standard output then standard error, for assertions about everything printed.
    pub(crate) fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `alertbridge <cmd> --config <config>` to its end with stdin closed, with systemd's
/// `CREDENTIALS_DIRECTORY` set to `credentials` when given.
pub(crate) fn run_cli(cmd: &str, config: &Path, credentials: Option<&Path>) -> CliOutput {
    let mut c = command(env!("CARGO_BIN_EXE_alertbridge"));
    c.args([cmd, "--config"]).arg(config).stdin(Stdio::null());
    if let Some(dir) = credentials {
        c.env("CREDENTIALS_DIRECTORY", dir);
    }
    let out = c.output().expect("run alertbridge");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Alert ids the simulator accepted, with how often.
pub(crate) fn accepted_counts(sim: &Sim) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in sim.accepted() {
        if let Some(id) = a.alert_id {
            *m.entry(id).or_insert(0) += 1;
        }
    }
    m
}

/// Acked ids that the simulator never accepted.
pub(crate) fn missing(acked: &HashSet<String>, sim: &Sim) -> Vec<String> {
    let got = accepted_counts(sim);
    let mut v: Vec<String> = acked
        .iter()
        .filter(|id| !got.contains_key(*id))
        .cloned()
        .collect();
    v.sort();
    v
}

/// An alert of a given `alert_level` (`critical` puts it in the critical lane), identified as
/// `<prefix>-<n>`; `pad` adds a field of that many bytes (to exceed a size limit).
pub(crate) fn leveled_alert(
    prefix: &str,
    n: usize,
    level: &str,
    pad: usize,
) -> (String, String, String) {
    let alert_id = format!("{prefix}-{n:05}");
    let device = format!("SN-north-{:04}", n % 250);
    let mut body = serde_json::json!({
        "alert_id": alert_id,
        "device_id": device,
        "sensor_type": "temperature_probe",
        "alert_level": level,
        "reading_value": 80.5,
        "threshold_exceeded": true,
    });
    if pad > 0 {
        // words, not one long run: the mapping strips binary-looking (base64-like) strings
        let words = "probe reading above threshold on line four; ".repeat(pad / 44 + 1);
        body["note"] = serde_json::Value::String(words[..pad].to_string());
    }
    (
        format!("plant/north/alerts/{device}"),
        body.to_string(),
        alert_id,
    )
}

/// Publish one [`leveled_alert`]; returns its id.
pub(crate) async fn publish_leveled(plant: &Plant, prefix: &str, n: usize, level: &str) -> String {
    let (t, b, id) = leveled_alert(prefix, n, level, 0);
    plant
        .publish(t, b, id.clone())
        .await
        .expect("publish queued");
    id
}

/// The simulator's log of workflow launches (`POST /api/v2/flows/executions`), in arrival order.
pub(crate) fn launches(sim: &Sim) -> Vec<genesys_sim::LoggedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.endpoint == genesys_sim::Endpoint::FlowExecution)
        .collect()
}

/// Milliseconds since the unix epoch of a `SystemTime`.
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publish `n` alerts numbered from `start`, `per_ms` per millisecond.
pub(crate) async fn publish_alerts(plant: &Plant, start: usize, n: usize, pause_every: usize) {
    let mut rng = fastrand::Rng::with_seed(start as u64 + 1);
    for i in start..start + n {
        let (t, b, id) = alert(i, &mut rng);
        plant.publish(t, b, id).await.expect("publish queued");
        if pause_every > 0 && i % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A simulator that answers every workflow launch with `status` until the test clears its
/// faults (`sim.set_faults(Faults::default())`).
pub(crate) async fn failing_sim(status: u16) -> Sim {
    let sim = sim(Duration::from_secs(3600)).await;
    sim.set_faults(Faults {
        force_status: Some(status),
        ..Faults::default()
    });
    sim
}

/// Wait (up to 15 s) until the agent's subscription is acknowledged (its log says
/// `subscribed`), so nothing published afterwards misses the persistent session.
pub(crate) async fn wait_subscribed(agent: &Agent) {
    assert_logged(
        agent,
        "subscribed",
        Duration::from_secs(15),
        "the agent did not subscribe",
    )
    .await;
}

/// Wait until the agent's log contains `text`; else the test fails with `what` and the logs.
pub(crate) async fn assert_logged(agent: &Agent, text: &str, timeout: Duration, what: &str) {
    assert!(
        wait_until(timeout, || agent.logs().contains(text)).await,
        "{what}\n{}",
        agent.logs()
    );
}

/// The broker acked exactly `n` publishes of the plant within `timeout`.
pub(crate) async fn assert_all_acked(plant: &Plant, n: usize, timeout: Duration) {
    assert!(
        wait_until(timeout, || plant.acked_count() == n).await,
        "broker acked {} of {n}",
        plant.acked_count()
    );
}

/// The kill -9 scenario's middle: the plant publishes `n` alerts while the agent is SIGKILLed
/// and restarted on the same store `kills` times, each after a random pause in
/// `[pause, 2 × pause)`; returns the ids the broker acked (all `n`, asserted).
pub(crate) async fn publish_while_killing(
    plant: Plant,
    agent: &mut Agent,
    n: usize,
    kills: usize,
    pause: Duration,
) -> HashSet<String> {
    let publisher = tokio::spawn(async move {
        publish_alerts(&plant, 0, n, 4).await;
        plant
    });
    let pause_ms = pause.as_millis() as u64;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(pause_ms + fastrand::u64(0..pause_ms))).await;
        agent.restart(); // SIGKILL, then start on the same store
    }
    let plant = publisher.await.expect("publisher");
    assert_all_acked(&plant, n, Duration::from_secs(30)).await;
    plant.acked_ids()
}

/// Every id in `acked` reaches Genesys within `timeout`: lost = acked − accepted = ∅.
pub(crate) async fn assert_all_delivered(
    acked: &HashSet<String>,
    sim: &Sim,
    agent: &Agent,
    timeout: Duration,
) {
    let done = wait_until(timeout, || missing(acked, sim).is_empty()).await;
    let lost = missing(acked, sim);
    assert!(
        done && lost.is_empty(),
        "LOST {} acked alerts, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        agent.logs()
    );
}

/// SIGTERM the agent and assert a clean exit (code 0).
pub(crate) fn assert_clean_exit(agent: &mut Agent) {
    let code = tokio::task::block_in_place(|| agent.stop());
    assert_eq!(code, Some(0), "agent exit\n{}", agent.logs());
}

/// Broker, simulator, agent and plant of one test. Dropping it kills what still runs;
/// [`Scenario::finish`] ends it cleanly.
pub(crate) struct Scenario {
    /// The test's own mosquitto; killed on drop.
    pub(crate) broker: Mosquitto,
    pub(crate) sim: Sim,
    pub(crate) agent: Agent,
    pub(crate) plant: Plant,
    /// Cancels the plant's event loop.
    pub(crate) cancel: CancellationToken,
    /// The plant's event loop.
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Scenario {
    /// Start a broker and the agent and connect the plant `name`, without waiting for anything.
    pub(crate) fn start(name: &str, sim: Sim, opts: &AgentOptions) -> Scenario {
        let broker = Mosquitto::start();
        let agent = Agent::start(broker.port, &sim, opts);
        Scenario::connect(name, broker, sim, agent)
    }

    /// [`Scenario::start`] with the agent's log in `store`.
    pub(crate) fn start_with_store(
        name: &str,
        sim: Sim,
        opts: &AgentOptions,
        store: &Path,
    ) -> Scenario {
        let broker = Mosquitto::start();
        let agent = Agent::start_with_store(broker.port, &sim, opts, store);
        Scenario::connect(name, broker, sim, agent)
    }

    /// Start a broker and the agent, wait until the agent subscribed ([`wait_subscribed`]),
    /// then connect the plant `name`.
    pub(crate) async fn start_subscribed(name: &str, sim: Sim, opts: &AgentOptions) -> Scenario {
        let broker = Mosquitto::start();
        let agent = Agent::start(broker.port, &sim, opts);
        wait_subscribed(&agent).await;
        Scenario::connect(name, broker, sim, agent)
    }

    /// [`Scenario::start_subscribed`] against a [`failing_sim`] answering every launch with
    /// `status` until the test clears its faults.
    pub(crate) async fn start_failing(name: &str, status: u16, opts: &AgentOptions) -> Scenario {
        Scenario::start_subscribed(name, failing_sim(status).await, opts).await
    }

    fn connect(name: &str, broker: Mosquitto, sim: Sim, agent: Agent) -> Scenario {
        let cancel = CancellationToken::new();
        let (plant, task) = Plant::connect(broker.port, name, cancel.clone());
        Scenario {
            broker,
            sim,
            agent,
            plant,
            cancel,
            task,
        }
    }

    /// Publish alerts `<prefix>-<i>` for `i` in `range`, all of one level; returns their ids.
    pub(crate) async fn publish(
        &self,
        prefix: &str,
        range: std::ops::Range<usize>,
        level: &str,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for i in range {
            ids.push(publish_leveled(&self.plant, prefix, i, level).await);
        }
        ids
    }

    /// Ids of the alerts the broker acked, without the malformed payloads (which have no alert
    /// to deliver: they become dead letters).
    pub(crate) fn acked_alert_ids(&self) -> HashSet<String> {
        self.plant
            .acked_ids()
            .into_iter()
            .filter(|id| !id.starts_with("malformed-"))
            .collect()
    }

    /// Wait until the broker acked at least `n` publishes of the plant.
    pub(crate) async fn wait_acked(&self, n: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.plant.acked_count() >= n).await,
            "the broker acked {} of {n}\n{}",
            self.plant.acked_count(),
            self.agent.logs()
        );
    }

    /// Wait until Genesys accepted at least `n` distinct alerts.
    pub(crate) async fn wait_accepted(&self, n: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || accepted_counts(&self.sim).len() >= n).await,
            "Genesys accepted {} of {n} alerts\n{}",
            accepted_counts(&self.sim).len(),
            self.agent.logs()
        );
    }

    /// Poll `status --json` until `cond` holds.
    pub(crate) async fn status_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let st = tokio::task::block_in_place(|| self.agent.status());
            if let Some(st) = st {
                if cond(&st) {
                    return st;
                }
                last = Some(st);
            }
            assert!(
                Instant::now() < deadline,
                "status never matched; last: {last:#?}\n{}",
                self.agent.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the agent cleanly (exit 0) and the plant.
    pub(crate) async fn stop(&mut self) {
        assert_clean_exit(&mut self.agent);
        self.cancel.cancel();
    }

    /// [`Scenario::stop`] unless stopped already, then wait for the plant's event loop.
    pub(crate) async fn finish(mut self) {
        if !self.cancel.is_cancelled() {
            self.stop().await;
        }
        let _ = (&mut self.task).await;
    }
}
