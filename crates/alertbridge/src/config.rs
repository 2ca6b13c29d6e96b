//! Configuration: raw TOML (`RawConfig`, every key optional, unknown keys rejected) → validated
//! [`Config`] (units resolved, secrets located, cross-key rules checked).
//!
//! Two stages, like ripgrep's `lowargs` → `hiargs`: serde does the syntax and names unknown keys,
//! [`Config::from_raw`] does the meaning and names the key and the fix in every error. Secrets are
//! never in this file: only the *path* of a secret file or the name of an environment variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alertbridge_genesys::{ClientConfig, EventsAuth, SecretSource, Target};
use alertbridge_payload::MappingConfig;
use alertbridge_wal::WalConfig;
use serde::Deserialize;

/// Environment variable that may hold the Genesys client secret (when no `client_secret_file`).
pub const ENV_GENESYS_SECRET: &str = "ALERTBRIDGE_GENESYS_CLIENT_SECRET";
/// Environment variable that may hold the MQTT password (when no `password_file`).
pub const ENV_MQTT_PASSWORD: &str = "ALERTBRIDGE_MQTT_PASSWORD";
/// systemd's credentials directory (`LoadCredential=`); `client_secret_file` may be relative to it.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A configuration problem: which key, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given with `--config`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, wrong type or unknown key (the message names line and key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The path given with `--config`.
        path: PathBuf,
        /// toml's message, which names the key and position.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("config key `{key}`: {problem} (fix: {fix})")]
    Invalid {
        /// Dotted key, e.g. `delivery.rate_per_sec`, `mqtt.topics[1]`.
        key: String,
        /// What is wrong with the value.
        problem: String,
        /// What to write instead.
        fix: String,
    },
}

fn invalid(
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Longest topic filter MQTT allows: a UTF-8 string field carries a 16-bit length
/// (MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4).
pub const MAX_TOPIC_FILTER_BYTES: usize = 65_535;

/// What is wrong with an MQTT topic filter, and how to fix it; `None` when it is valid.
///
/// The rules of MQTT 3.1.1 §4.7 (MQTT 5 §4.7): not empty, at most 65 535 bytes, no NUL
/// character, `#` only as the whole last level (`plant/#`, `#`), `+` only as a whole level
/// (`plant/+/alerts`). Empty levels (`a//b`) are legal. A broker refuses an invalid filter in
/// its SUBACK (or drops the connection), and the agent would then sit connected and deaf.
pub fn topic_filter_problem(filter: &str) -> Option<(String, String)> {
    let shown = || {
        let mut end = filter.len().min(80);
        while !filter.is_char_boundary(end) {
            end -= 1;
        }
        let more = if end < filter.len() { "..." } else { "" };
        format!("{:?}{more}", &filter[..end])
    };
    if filter.is_empty() {
        return Some((
            "is empty".into(),
            "write a filter such as \"plant/+/alerts/#\", or remove the entry".into(),
        ));
    }
    if filter.len() > MAX_TOPIC_FILTER_BYTES {
        return Some((
            format!(
                "{} is {} bytes, over MQTT's limit of {MAX_TOPIC_FILTER_BYTES}",
                shown(),
                filter.len()
            ),
            "use a shorter filter, with `+` or `#` wildcards".into(),
        ));
    }
    if filter.contains('\0') {
        return Some((
            format!("{} contains a NUL character", shown()),
            "remove the NUL (\\u0000) from the filter".into(),
        ));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some((
                format!("{}: `#` is allowed only as the whole last level", shown()),
                "end the filter with `/#` for everything below a level (\"plant/#\"), or use \
                 `+` for exactly one level (\"plant/+/alerts\")"
                    .into(),
            ));
        }
        if level.contains('+') && *level != "+" {
            return Some((
                format!("{}: `+` is allowed only as a whole level", shown()),
                "put `+` alone between slashes (\"plant/+/alerts\"); it matches exactly one level"
                    .into(),
            ));
        }
    }
    None
}

/// The first `@` of `url` that can belong to credentials (`scheme://user:password@host`): one
/// before the query or fragment. A path with a literal `@` is refused too (it must be written
/// `%40`): with a password holding `/`, the `@` would otherwise look like part of the path, and
/// the password would be shown as the host.
fn credentials_at(url: &str) -> Option<usize> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['?', '#'])
        .map_or(url.len(), |i| start + i);
    url[start..end].rfind('@').map(|i| start + i)
}

/// `url` as it may be shown in an error, a log line or `check` output: anything between
/// `scheme://` and the last `@` before the query (credentials, see [`credentials_at`]) is
/// removed. Validation refuses such URLs; this is the second line, for every place that prints
/// one.
pub fn display_url(url: &str) -> std::borrow::Cow<'_, str> {
    match credentials_at(url) {
        None => std::borrow::Cow::Borrowed(url),
        Some(at) => {
            let start = url.find("://").map_or(0, |i| i + 3);
            std::borrow::Cow::Owned(format!("{}{}", &url[..start], &url[at + 1..]))
        }
    }
}

/// The error for a URL setting that carries credentials: it names the key and, in `fix`, the
/// setting that holds the secret instead, and never repeats any part of the URL.
fn credentials_in_url(key: &'static str, fix: &str) -> ConfigError {
    invalid(
        key,
        "holds credentials (`user:password@` before the host, or an `@` in the path); secrets in \
         URLs end up in logs and process listings, so they are refused (the URL is not repeated \
         here)",
        fix,
    )
}

/// What is wrong with a shared-subscription group name; `None` when it is valid. MQTT 5
/// §4.8.2: a ShareName is at least one character and contains no `/`, `+` or `#` (it is one
/// topic level of `$share/<ShareName>/<filter>`); NUL is refused in every MQTT string.
pub fn share_group_problem(group: &str) -> Option<String> {
    if group.is_empty() {
        return Some("is empty".into());
    }
    if let Some(c) = group.chars().find(|c| matches!(c, '/' | '+' | '#' | '\0')) {
        return Some(format!(
            "{:?} contains {c:?}: a share group is one topic level, without `/`, `+`, `#` or NUL",
            group.chars().take(80).collect::<String>()
        ));
    }
    None
}

/// The shared form of `filter` in `group`: `$share/<group>/<filter>` (MQTT 5 §4.8.2; mosquitto,
/// EMQX, HiveMQ and VerneMQ accept it from MQTT 3.1.1 clients too, see docs/scale.md).
pub fn shared_filter(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// The file as written. Every section and key is optional; defaults live in [`Config::from_raw`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[mqtt]`
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// `[store]`
    #[serde(default)]
    pub store: RawStore,
    /// `[genesys]`
    #[serde(default)]
    pub genesys: RawGenesys,
    /// `[delivery]`
    #[serde(default)]
    pub delivery: RawDelivery,
    /// `[mapping]` (owned by the payload crate)
    #[serde(default)]
    pub mapping: MappingConfig,
    /// `[admin]`
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[log]`
    #[serde(default)]
    pub log: RawLog,
    /// `[receipts]`: present (even empty) turns delivery receipts to MQTT on.
    #[serde(default)]
    pub receipts: Option<RawReceipts>,
}

/// `[mqtt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: Option<String>,
    /// Stable client id: the broker keeps the persistent session under it.
    pub client_id: Option<String>,
    /// Topic filters subscribed at QoS 1.
    pub topics: Option<Vec<String>>,
    /// Shared-subscription group: every filter is subscribed as `$share/<group>/<filter>`.
    pub share_group: Option<String>,
    /// Optional user name.
    pub username: Option<String>,
    /// File holding the password (or env `ALERTBRIDGE_MQTT_PASSWORD`).
    pub password_file: Option<PathBuf>,
    /// PEM file with the CA that signed the broker's certificate (mqtts only).
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive.
    pub keep_alive_secs: Option<u64>,
    /// First reconnect delay.
    pub reconnect_min_ms: Option<u64>,
    /// Largest reconnect delay.
    pub reconnect_max_ms: Option<u64>,
}

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Directory of the write-ahead log.
    pub dir: Option<PathBuf>,
    /// Disk budget of the log.
    pub max_bytes: Option<u64>,
    /// Ignored since store format 2 (it sized sled's page cache); accepted with a warning so an
    /// old config still starts.
    pub cache_capacity_bytes: Option<u64>,
    /// Size at which a segment file of the log is sealed.
    pub segment_bytes: Option<u64>,
    /// How many alert ids the duplicate window remembers.
    pub dedup_window: Option<usize>,
    /// How long an alert id stays in the duplicate window.
    pub dedup_window_secs: Option<u64>,
    /// Most dead letters kept in the store.
    pub dead_letters_max: Option<u64>,
    /// Most bytes of dead letters kept in the store.
    pub dead_letters_max_bytes: Option<u64>,
    /// Where dead letters beyond the budget are exported (JSON lines).
    pub dead_letters_export_dir: Option<PathBuf>,
    /// Export files kept.
    pub dead_letters_export_files: Option<usize>,
    /// How many delivery receipts are kept.
    pub delivered_keep: Option<usize>,
    /// Most publishes in one group commit.
    pub batch_max: Option<usize>,
    /// Free space to leave on the store's filesystem.
    pub min_free_bytes: Option<u64>,
}

/// `[genesys]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGenesys {
    /// Region id (`eu-west-1`) or domain (`mypurecloud.ie`).
    pub region: Option<String>,
    /// Override of the OAuth host.
    pub login_url: Option<String>,
    /// Override of the API host.
    pub api_url: Option<String>,
    /// OAuth client id (not secret).
    pub client_id: Option<String>,
    /// File holding the OAuth client secret.
    pub client_secret_file: Option<PathBuf>,
    /// `workflow` (default) or `events`.
    pub target: Option<String>,
    /// Workflow id for `workflow`.
    pub flow_id: Option<String>,
    /// Optional workflow version.
    pub flow_version: Option<String>,
    /// Event name for `events`.
    pub event_name: Option<String>,
    /// Invocation URL for `events` (a secret when it is a webhook URL).
    pub events_url: Option<String>,
    /// `bearer` (default) or `none`.
    pub events_auth: Option<String>,
    /// Whole-request timeout.
    pub request_timeout_secs: Option<u64>,
    /// TCP+TLS connect timeout.
    pub connect_timeout_secs: Option<u64>,
    /// Refresh the token this long before it expires.
    pub token_refresh_margin_secs: Option<u64>,
}

/// `[delivery]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Sustained request rate.
    pub rate_per_sec: Option<f64>,
    /// Token bucket size.
    pub burst: Option<u32>,
    /// Concurrent requests.
    pub max_in_flight: Option<usize>,
    /// First retry delay.
    pub backoff_initial_ms: Option<u64>,
    /// Largest retry delay.
    pub backoff_max_ms: Option<u64>,
    /// Growth factor of the retry delay.
    pub backoff_multiplier: Option<f64>,
    /// Consecutive retryable failures that open the circuit breaker.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe.
    pub breaker_cooldown_ms: Option<u64>,
    /// Identical permanent rejections in a row that pause delivery (0 = never).
    pub pause_after_rejections: Option<u32>,
    /// Longest request timeout after timed-out attempts (the timeout doubles per timeout).
    pub max_request_timeout_ms: Option<u64>,
    /// Timed-out attempts per alert before it is an `Unconfirmed` dead letter (0 = no limit).
    pub max_timeouts: Option<u32>,
    /// One normal alert is sent after this many critical ones when both wait.
    pub normal_every: Option<u32>,
    /// Max age of a critical alert before it is dead-lettered as expired (none by default).
    pub ttl_critical_secs: Option<u64>,
    /// Max age of other alerts before they are dead-lettered as expired (none by default).
    pub ttl_normal_secs: Option<u64>,
    /// Grace for in-flight requests at shutdown.
    pub shutdown_timeout_secs: Option<u64>,
}

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Loopback address of the status endpoint; empty string disables it.
    pub listen: Option<String>,
    /// Allow a non-loopback `listen` (the endpoint has no authentication).
    pub allow_remote: Option<bool>,
}

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Filter, `RUST_LOG` syntax.
    pub level: Option<String>,
    /// `auto` (default), `text`, `json` or `journald`.
    pub format: Option<String>,
}

/// `log.format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `journald` when stderr is connected to the journal (systemd sets `JOURNAL_STREAM` to it),
    /// `text` otherwise. The default.
    Auto,
    /// One human-readable line per event (with colour only at a terminal).
    Text,
    /// One JSON object per line.
    Json,
    /// Text with the `<N>` syslog priority prefix journald reads (`SyslogLevelPrefix=`), so
    /// `journalctl -p warning` selects warnings and errors; no timestamp (the journal has one).
    Journald,
}

/// Validated configuration, used by every stage.
#[derive(Debug, Clone)]
pub struct Config {
    /// MQTT ingest settings.
    pub mqtt: MqttConfig,
    /// Log settings.
    pub store: StoreConfig,
    /// Genesys client settings.
    pub genesys: GenesysConfig,
    /// Drain settings.
    pub delivery: DeliveryConfig,
    /// Payload mapping.
    pub mapping: MappingConfig,
    /// Status endpoint; `None` = disabled.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Log filter.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Delivery receipts published to MQTT; `None`: off (no `[receipts]` section).
    pub receipts: Option<ReceiptsConfig>,
}

/// Validated `[mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (mqtts).
    pub tls: bool,
    /// Extra CA for TLS.
    pub ca_file: Option<PathBuf>,
    /// Persistent-session client id.
    pub client_id: String,
    /// Filters, subscribed at QoS 1 (as configured; see [`MqttConfig::share_group`]).
    pub topics: Vec<String>,
    /// Shared-subscription group (`mqtt.share_group`): when set, every filter is subscribed in
    /// its shared form `$share/<group>/<filter>`, so the broker spreads the alerts among the
    /// agents of the group (docs/scale.md). Validated: non-empty, no `/`, `+`, `#` or NUL.
    pub share_group: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Where the password comes from (read at connect, never stored here).
    pub password: Option<SecretSource>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The filters as subscribed on the wire: each configured filter, in its shared form when
    /// `share_group` is set. Subscription bookkeeping (SUBACK matching, "every subscription
    /// held" readiness, status) works on these, since they are what the broker grants or refuses.
    pub fn subscribed_filters(&self) -> Vec<String> {
        match &self.share_group {
            Some(g) => self.topics.iter().map(|t| shared_filter(g, t)).collect(),
            None => self.topics.clone(),
        }
    }
}

/// Validated `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How the log is opened: directory, segment size, dedup window, receipts kept and the
    /// dead-letter budget, built here from `[store]` and handed to `Wal::open` as it is.
    pub wal: WalConfig,
    /// Disk budget: at or above it ingest stops acking (the broker keeps the alerts).
    pub max_bytes: u64,
    /// The config still sets the obsolete `cache_capacity_bytes` (a warning in `check`).
    pub cache_capacity_ignored: bool,
    /// Export directory for dead letters beyond the budget.
    pub dead_letters_export_dir: PathBuf,
    /// Export files kept (16 MiB each).
    pub dead_letters_export_files: usize,
    /// Largest group commit.
    pub batch_max: usize,
    /// Below this much free space on the store's filesystem ingest holds back like at the
    /// budget, so the log rarely meets ENOSPC (which it survives as backpressure too).
    pub min_free_bytes: u64,
}

impl StoreConfig {
    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.wal.dir
    }
}

/// Validated `[genesys]`: the client's own config, built here and handed to
/// `GenesysClient::new` as it is.
pub type GenesysConfig = ClientConfig;

/// Validated `[delivery]`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Sustained rate.
    pub rate_per_sec: f64,
    /// Bucket size.
    pub burst: u32,
    /// Concurrency cap.
    pub max_in_flight: usize,
    /// Backoff parameters.
    pub backoff: crate::schedule::Backoff,
    /// Breaker threshold.
    pub breaker_failures: u32,
    /// Breaker cool-down.
    pub breaker_cooldown: Duration,
    /// Permanent rejections in a row with the same status and API code that pause delivery
    /// instead of dead-lettering the backlog (0 = never).
    pub pause_after_rejections: u32,
    /// The request timeout doubles after each timed-out attempt of an alert, up to this.
    pub max_request_timeout: Duration,
    /// Timed-out attempts of one alert before it becomes an `Unconfirmed` dead letter (0 = no
    /// limit): bounds how often a slow API launches the same alert.
    pub max_timeouts: u32,
    /// Fairness between lanes.
    pub normal_every: u32,
    /// TTL of critical alerts.
    pub ttl_critical: Option<Duration>,
    /// TTL of other alerts.
    pub ttl_normal: Option<Duration>,
    /// Shutdown grace.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text (`path` only names the source in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Config::from_raw(raw)
    }

    /// Stage two: meaning, defaults and cross-key rules.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mqtt = mqtt_from_raw(raw.mqtt)?;
        let mut store = store_from_raw(raw.store)?;
        let genesys = genesys_from_raw(raw.genesys)?;
        let delivery = delivery_from_raw(raw.delivery)?;
        alertbridge_payload::Mapper::new(&raw.mapping).map_err(|e| ConfigError::Invalid {
            key: "mapping".into(),
            problem: e.to_string(),
            fix: "see docs/payload.md for the mapping rules".into(),
        })?;
        let admin_listen = match raw.admin.listen.as_deref() {
            None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9810))),
            Some("") => None,
            Some(s) => Some(s.parse().map_err(|_| {
                invalid(
                    "admin.listen",
                    format!("`{s}` is not an address"),
                    "write e.g. \"127.0.0.1:9810\", or \"\" to disable the status endpoint",
                )
            })?),
        };
        // The endpoint has no authentication and shows the plant's alert flow: off the
        // gateway only when the operator says so.
        if let Some(addr) = admin_listen {
            if !addr.ip().is_loopback() && raw.admin.allow_remote != Some(true) {
                return Err(invalid(
                    "admin.listen",
                    format!("`{addr}` is not a loopback address"),
                    "use 127.0.0.1 (and a reverse proxy with authentication), or set \
                     admin.allow_remote = true if every host that can reach it may read it",
                ));
            }
        }
        let log_format = match raw.log.format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            "journald" => LogFormat::Journald,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("unknown format `{other}`"),
                    "use \"auto\", \"text\", \"json\" or \"journald\"",
                ))
            }
        };
        let receipts = receipts_from_raw(raw.receipts, &mqtt, &raw.mapping)?;
        // The log keeps the receipt outbox exactly while receipts are configured.
        store.wal.outbox = receipts.is_some();
        Ok(Config {
            mqtt,
            store,
            genesys,
            delivery,
            mapping: raw.mapping,
            admin_listen,
            log_level: log_level_from_raw(raw.log.level)?,
            log_format,
            receipts,
        })
    }

    /// Non-fatal remarks for `alertbridge check` (e.g. `events` aimed at a real org without an
    /// invocation URL).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.store.cache_capacity_ignored {
            w.push(
                "store.cache_capacity_bytes is ignored since store format 2 (the log no longer has a \
                 page cache to size): remove it"
                    .into(),
            );
        }
        if let Target::Events { events_url, .. } = &self.genesys.target {
            let real = self.genesys.api_url.contains("pure.cloud")
                || self.genesys.api_url.contains("mypurecloud");
            if real && events_url.is_none() {
                w.push(
                    "genesys.target = \"events\" points at a real Genesys host, where /api/v2/events \
                     does not take {name,data}: set genesys.events_url to the webhook integration's \
                     invocation URL and genesys.events_auth = \"none\", or use target = \"workflow\""
                        .into(),
                );
            }
        }
        if self.delivery.rate_per_sec > 5.0 && self.genesys.api_url.starts_with("https://api.") {
            w.push(format!(
                "delivery.rate_per_sec = {} exceeds Genesys' documented 300 requests/min per token",
                self.delivery.rate_per_sec
            ));
        }
        w
    }
}

fn mqtt_from_raw(raw: RawMqtt) -> Result<MqttConfig, ConfigError> {
    let url = raw.url.unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    // First, before any message could repeat the URL. An MQTT URL here has no path, so any `@`
    // is a credential.
    if url.contains('@') {
        return Err(credentials_in_url(
            "mqtt.url",
            &format!(
                "write only mqtt[s]://host:port; set mqtt.username, and put the password in a file \
                 named by mqtt.password_file (systemd LoadCredential=) or in ${ENV_MQTT_PASSWORD}"
            ),
        ));
    }
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(invalid(
            "mqtt.url",
            format!("`{}` has no mqtt:// or mqtts:// scheme", display_url(&url)),
            "write e.g. \"mqtt://127.0.0.1:1883\" or \"mqtts://broker.plant.local:8883\"",
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>().map_err(|_| {
                invalid(
                    "mqtt.url",
                    format!("port `{p}` is not a number 1-65535"),
                    "write e.g. \"mqtt://127.0.0.1:1883\"",
                )
            })?,
        ),
        None => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(invalid(
            "mqtt.url",
            "no host",
            "write e.g. \"mqtt://127.0.0.1:1883\"",
        ));
    }
    let client_id = raw.client_id.unwrap_or_else(|| "alertbridge".into());
    if client_id.is_empty() || client_id.len() > 23 && !client_id.is_ascii() {
        return Err(invalid(
            "mqtt.client_id",
            "must be a non-empty ASCII string",
            "use a stable id per gateway, e.g. \"alertbridge-gw01\"",
        ));
    }
    let topics = raw
        .topics
        .unwrap_or_else(|| vec!["plant/+/alerts/#".into()]);
    if topics.is_empty() {
        return Err(invalid(
            "mqtt.topics",
            "needs at least one topic filter",
            "e.g. topics = [\"plant/+/alerts/#\"]",
        ));
    }
    for (i, t) in topics.iter().enumerate() {
        if let Some((problem, fix)) = topic_filter_problem(t) {
            return Err(invalid(format!("mqtt.topics[{i}]"), problem, fix));
        }
    }
    if let Some(group) = &raw.share_group {
        if let Some(problem) = share_group_problem(group) {
            return Err(invalid(
                "mqtt.share_group",
                problem,
                "use a plain name such as \"alertbridge\" (the same on every agent of the group), \
                 or remove the key to receive every alert",
            ));
        }
        // The shared form is what goes on the wire: it must fit the filter rules too (length).
        for (i, t) in topics.iter().enumerate() {
            if let Some((problem, fix)) = topic_filter_problem(&shared_filter(group, t)) {
                return Err(invalid(format!("mqtt.topics[{i}]"), problem, fix));
            }
        }
    }
    let password = match (raw.password_file, std::env::var_os(ENV_MQTT_PASSWORD)) {
        (Some(p), _) => Some(SecretSource::File(resolve_credential(p))),
        (None, Some(_)) => Some(SecretSource::Env(ENV_MQTT_PASSWORD.into())),
        (None, None) => None,
    };
    if password.is_some() && raw.username.is_none() {
        return Err(invalid(
            "mqtt.username",
            "a password is configured but no username",
            "set mqtt.username",
        ));
    }
    if raw.ca_file.is_some() && !tls {
        return Err(invalid(
            "mqtt.ca_file",
            "set, but the url is not mqtts://",
            "use an mqtts:// url or remove ca_file",
        ));
    }
    let keep_alive = Duration::from_secs(raw.keep_alive_secs.unwrap_or(30));
    if keep_alive < Duration::from_secs(5) {
        return Err(invalid(
            "mqtt.keep_alive_secs",
            "below 5",
            "use 5..=600 (default 30)",
        ));
    }
    let reconnect_min = Duration::from_millis(raw.reconnect_min_ms.unwrap_or(500));
    let reconnect_max = Duration::from_millis(raw.reconnect_max_ms.unwrap_or(30_000));
    if reconnect_min.is_zero() || reconnect_max < reconnect_min {
        return Err(invalid(
            "mqtt.reconnect_max_ms",
            "must be ≥ reconnect_min_ms > 0",
            "e.g. reconnect_min_ms = 500, reconnect_max_ms = 30000",
        ));
    }
    Ok(MqttConfig {
        host,
        port,
        tls,
        ca_file: raw.ca_file,
        client_id,
        topics,
        share_group: raw.share_group,
        username: raw.username,
        password,
        keep_alive,
        reconnect_min,
        reconnect_max,
    })
}

fn store_from_raw(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let max_bytes = raw.max_bytes.unwrap_or(1 << 30);
    if max_bytes < 64 << 10 {
        return Err(invalid(
            "store.max_bytes",
            format!("{max_bytes} is below 64 KiB"),
            "give the log at least 65536 bytes (default 1 GiB)",
        ));
    }
    let segment_bytes = raw.segment_bytes.unwrap_or(8 << 20);
    if !(64 << 10..=1 << 30).contains(&segment_bytes) || segment_bytes > max_bytes / 4 {
        return Err(invalid(
            "store.segment_bytes",
            format!("{segment_bytes} is outside 64 KiB ..= min(1 GiB, store.max_bytes / 4)"),
            "use the default 8388608 (8 MiB), or a smaller value for a small store.max_bytes",
        ));
    }
    let batch_max = raw.batch_max.unwrap_or(512);
    if batch_max == 0 {
        return Err(invalid(
            "store.batch_max",
            "is 0",
            "use 1..=4096 (default 512)",
        ));
    }
    let dir = raw
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/alertbridge"));
    Ok(StoreConfig {
        wal: WalConfig {
            dir: dir.clone(),
            segment_bytes,
            dedup_window: raw.dedup_window.unwrap_or(100_000),
            dedup_window_ms: raw.dedup_window_secs.unwrap_or(300).saturating_mul(1000),
            delivered_keep: raw.delivered_keep.unwrap_or(10_000),
            dead_max_count: raw.dead_letters_max.unwrap_or(100_000),
            dead_max_bytes: raw.dead_letters_max_bytes.unwrap_or(64 << 20),
            ..WalConfig::default()
        },
        max_bytes,
        cache_capacity_ignored: raw.cache_capacity_bytes.is_some(),
        dead_letters_export_dir: raw
            .dead_letters_export_dir
            .unwrap_or_else(|| crate::export::default_dir(&dir)),
        dead_letters_export_files: raw.dead_letters_export_files.unwrap_or(16),
        batch_max,
        min_free_bytes: raw.min_free_bytes.unwrap_or(64 << 20),
    })
}

/// A relative `*_file` path is looked up in systemd's `$CREDENTIALS_DIRECTORY` when set.
fn resolve_credential(p: PathBuf) -> PathBuf {
    if p.is_relative() {
        if let Some(dir) = std::env::var_os(ENV_CREDENTIALS_DIRECTORY) {
            return PathBuf::from(dir).join(p);
        }
    }
    p
}

fn genesys_from_raw(raw: RawGenesys) -> Result<GenesysConfig, ConfigError> {
    // First, before any message could repeat a URL.
    let secret_fix = "remove the credentials from the URL: the OAuth client id goes in \
                      genesys.client_id, its secret in the file named by \
                      genesys.client_secret_file (systemd LoadCredential=)";
    for (key, url) in [
        ("genesys.region", &raw.region),
        ("genesys.login_url", &raw.login_url),
        ("genesys.api_url", &raw.api_url),
    ] {
        if url.as_deref().and_then(credentials_at).is_some() {
            return Err(credentials_in_url(key, secret_fix));
        }
    }
    if raw.events_url.as_deref().and_then(credentials_at).is_some() {
        return Err(credentials_in_url(
            "genesys.events_url",
            "use the webhook integration's invocation URL as Genesys shows it (its token is in \
             the path, never as user:password@), with events_auth = \"none\"; or events_auth = \
             \"bearer\" with the OAuth client (genesys.client_id and genesys.client_secret_file)",
        ));
    }
    let (mut login_url, mut api_url) = (None, None);
    if let Some(region) = &raw.region {
        let (l, a) = alertbridge_genesys::region_hosts(region).map_err(|e| {
            invalid(
                "genesys.region",
                e.to_string(),
                "use a region id like \"eu-west-1\" or a domain like \"mypurecloud.ie\"",
            )
        })?;
        login_url = Some(l);
        api_url = Some(a);
    }
    let login_url = raw.login_url.or(login_url).ok_or_else(|| {
        invalid(
            "genesys.region",
            "neither region nor login_url/api_url is set",
            "set genesys.region, e.g. \"mypurecloud.ie\"",
        )
    })?;
    let api_url = raw.api_url.or(api_url).ok_or_else(|| {
        invalid(
            "genesys.api_url",
            "login_url is set but api_url is not",
            "set genesys.region or both login_url and api_url",
        )
    })?;
    for (key, url) in [
        ("genesys.login_url", &login_url),
        ("genesys.api_url", &api_url),
    ] {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                key,
                format!("`{}` is not an http(s) URL", display_url(url)),
                "write e.g. \"https://api.mypurecloud.ie\"",
            ));
        }
    }
    let client_id = raw.client_id.filter(|s| !s.is_empty()).ok_or_else(|| {
        invalid(
            "genesys.client_id",
            "missing",
            "set the OAuth client id (client credentials grant) from Admin > Integrations > OAuth",
        )
    })?;
    let secret = match raw.client_secret_file {
        Some(p) => SecretSource::File(resolve_credential(p)),
        None if std::env::var_os(ENV_GENESYS_SECRET).is_some() => {
            SecretSource::Env(ENV_GENESYS_SECRET.into())
        }
        None => {
            return Err(invalid(
                "genesys.client_secret_file",
                format!("no client secret: neither client_secret_file nor ${ENV_GENESYS_SECRET} is set"),
                "put the secret in a file readable only by the service (systemd LoadCredential) and name it here",
            ))
        }
    };
    let target = match raw.target.as_deref().unwrap_or("workflow") {
        "workflow" => {
            let flow_id = raw.flow_id.filter(|s| !s.is_empty()).ok_or_else(|| {
                invalid(
                    "genesys.flow_id",
                    "target is \"workflow\" but flow_id is missing",
                    "set the id of the published Architect workflow",
                )
            })?;
            Target::Workflow {
                flow_id,
                flow_version: raw.flow_version,
            }
        }
        "events" => {
            let auth = match raw.events_auth.as_deref().unwrap_or("bearer") {
                "bearer" => EventsAuth::Bearer,
                "none" => EventsAuth::None,
                other => {
                    return Err(invalid(
                        "genesys.events_auth",
                        format!("unknown `{other}`"),
                        "use \"bearer\" or \"none\" (webhook invocation URL)",
                    ))
                }
            };
            Target::Events {
                event_name: raw.event_name.unwrap_or_else(|| "iot.device.alert".into()),
                events_url: raw.events_url,
                auth,
            }
        }
        other => {
            return Err(invalid(
                "genesys.target",
                format!("unknown target `{other}`"),
                "use \"workflow\" (default) or \"events\"",
            ))
        }
    };
    let request_timeout = Duration::from_secs(raw.request_timeout_secs.unwrap_or(10));
    if request_timeout.is_zero() {
        return Err(invalid(
            "genesys.request_timeout_secs",
            "is 0",
            "use e.g. 10",
        ));
    }
    Ok(GenesysConfig {
        login_url: login_url.trim_end_matches('/').to_string(),
        api_url: api_url.trim_end_matches('/').to_string(),
        client_id,
        secret,
        target,
        request_timeout,
        connect_timeout: Duration::from_secs(raw.connect_timeout_secs.unwrap_or(5)),
        refresh_margin: Duration::from_secs(raw.token_refresh_margin_secs.unwrap_or(300)),
    })
}

/// `log.level` must be a filter `tracing` understands (`RUST_LOG` syntax): a typo would otherwise
/// silently log nothing, or everything.
fn log_level_from_raw(level: Option<String>) -> Result<String, ConfigError> {
    let level = level.unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
        invalid(
            "log.level",
            format!("`{level}` is not a log filter: {e}"),
            "write a level (error, warn, info, debug, trace) or RUST_LOG directives such as \
             \"info,alertbridge::drain=debug\"",
        )
    })?;
    Ok(level)
}

pub(crate) fn delivery_from_raw(raw: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    let rate_per_sec = raw.rate_per_sec.unwrap_or(4.0);
    if !(rate_per_sec.is_finite() && rate_per_sec >= 0.001) {
        return Err(invalid(
            "delivery.rate_per_sec",
            format!("{rate_per_sec} is not a positive number"),
            "use e.g. 4.0 (Genesys allows 300 requests/min per token)",
        ));
    }
    let burst = raw.burst.unwrap_or(8);
    if burst == 0 {
        return Err(invalid("delivery.burst", "is 0", "use ≥ 1 (default 8)"));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(4);
    if max_in_flight == 0 || max_in_flight > 1024 {
        return Err(invalid(
            "delivery.max_in_flight",
            format!("{max_in_flight} is out of range"),
            "use 1..=1024 (default 4)",
        ));
    }
    let initial = Duration::from_millis(raw.backoff_initial_ms.unwrap_or(3_000));
    let max = Duration::from_millis(raw.backoff_max_ms.unwrap_or(300_000));
    let multiplier = raw.backoff_multiplier.unwrap_or(3.0);
    if initial.is_zero() || max < initial {
        return Err(invalid(
            "delivery.backoff_max_ms",
            "must be ≥ backoff_initial_ms > 0",
            "e.g. backoff_initial_ms = 3000, backoff_max_ms = 300000",
        ));
    }
    if !(multiplier.is_finite() && multiplier >= 1.0) {
        return Err(invalid(
            "delivery.backoff_multiplier",
            "must be ≥ 1.0",
            "e.g. 3.0",
        ));
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        return Err(invalid(
            "delivery.breaker_failures",
            "is 0",
            "use ≥ 1 (default 5)",
        ));
    }
    let max_request_timeout = Duration::from_millis(raw.max_request_timeout_ms.unwrap_or(60_000));
    if max_request_timeout.is_zero() {
        return Err(invalid(
            "delivery.max_request_timeout_ms",
            "is 0",
            "use e.g. 60000 (at least genesys.request_timeout_secs; a smaller value keeps that)",
        ));
    }
    let normal_every = raw.normal_every.unwrap_or(10);
    if normal_every == 0 {
        return Err(invalid(
            "delivery.normal_every",
            "is 0",
            "use ≥ 1: one normal alert after that many critical ones (default 10)",
        ));
    }
    Ok(DeliveryConfig {
        rate_per_sec,
        burst,
        max_in_flight,
        backoff: crate::schedule::Backoff {
            initial,
            max,
            multiplier,
        },
        breaker_failures,
        breaker_cooldown: Duration::from_millis(raw.breaker_cooldown_ms.unwrap_or(30_000)),
        pause_after_rejections: raw.pause_after_rejections.unwrap_or(5),
        max_request_timeout,
        max_timeouts: raw.max_timeouts.unwrap_or(3),
        normal_every,
        ttl_critical: raw.ttl_critical_secs.map(Duration::from_secs),
        ttl_normal: raw.ttl_normal_secs.map(Duration::from_secs),
        shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_secs.unwrap_or(10)),
    })
}

#[cfg(test)]
mod tests {
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
        let text = include_str!("../../../config/alertbridge.example.toml");
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
        let text = format!(
            "{MINIMAL}login_url = \"http://127.0.0.1:1\"\napi_url = \"http://127.0.0.1:2/\"\n"
        );
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
}

/// `[receipts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceipts {
    /// Topic template; `{name}` takes the placeholder `name` of `mapping.topic_pattern` from the
    /// alert's topic, `{client_id}` is `mqtt.client_id`.
    pub topic: Option<String>,
    /// Publish receipts retained (the topic holds its latest receipt).
    pub retain: Option<bool>,
    /// Most receipts waiting to be published; beyond it the oldest are dropped (counted).
    pub max_pending: Option<u64>,
    /// A receipt older than this when it could be published is dropped (counted).
    pub max_age_secs: Option<u64>,
}

/// Delivery receipts to MQTT, validated (see `crate::receipts`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiptsConfig {
    /// Topic template (validated: placeholders known, no wildcard, no ingest filter matches it).
    pub topic: String,
    /// `mapping.topic_pattern`, where the template's placeholders take their values.
    pub topic_pattern: String,
    /// Publish retained.
    pub retain: bool,
    /// Most receipts waiting; the oldest beyond it are dropped.
    pub max_pending: u64,
    /// Receipts older than this are dropped instead of published.
    pub max_age: Duration,
}

/// Default receipt topic template.
pub const DEFAULT_RECEIPTS_TOPIC: &str = "alertbridge/receipts/{device}";

fn receipts_from_raw(
    raw: Option<RawReceipts>,
    mqtt: &MqttConfig,
    mapping: &MappingConfig,
) -> Result<Option<ReceiptsConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let topic = raw
        .topic
        .unwrap_or_else(|| DEFAULT_RECEIPTS_TOPIC.to_owned());
    let template = crate::receipts::Template::parse(&topic).map_err(|problem| {
        invalid(
            "receipts.topic",
            format!("{topic:?} {problem}"),
            "write a topic like \"alertbridge/receipts/{device}\": levels of text and              {placeholder}s, no '+' or '#', not starting with '$'",
        )
    })?;
    let known = crate::receipts::pattern_placeholders(&mapping.topic_pattern);
    for name in template.placeholders() {
        if name != "client_id" && !known.iter().any(|k| k == name) {
            return Err(invalid(
                "receipts.topic",
                format!(
                    "{{{name}}} is not a placeholder of mapping.topic_pattern {:?}",
                    mapping.topic_pattern
                ),
                "name the level in mapping.topic_pattern (e.g. \"plant/{site}/alerts/{device}\"), \
                 or use only {client_id} and placeholders it has",
            ));
        }
    }
    // A receipt an ingest filter matches would come back in as an alert, and its receipt too.
    for filter in &mqtt.topics {
        if crate::receipts::overlaps(&template.as_filter(), filter) {
            return Err(invalid(
                "receipts.topic",
                format!("{topic:?} can produce topics that mqtt.topics filter {filter:?} matches: receipts would come back in as alerts"),
                "publish receipts under a prefix no ingest filter covers (default \"alertbridge/receipts/{device}\")",
            ));
        }
    }
    let max_pending = raw.max_pending.unwrap_or(50_000);
    if max_pending == 0 {
        return Err(invalid(
            "receipts.max_pending",
            "is 0",
            "use at least 1 (default 50000)",
        ));
    }
    let max_age_secs = raw.max_age_secs.unwrap_or(86_400);
    if max_age_secs == 0 {
        return Err(invalid(
            "receipts.max_age_secs",
            "is 0",
            "use at least 1 (default 86400 = 1 day)",
        ));
    }
    Ok(Some(ReceiptsConfig {
        topic,
        topic_pattern: mapping.topic_pattern.clone(),
        retain: raw.retain.unwrap_or(false),
        max_pending,
        max_age: Duration::from_secs(max_age_secs),
    }))
}
