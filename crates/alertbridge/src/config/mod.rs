//! Configuration: raw TOML (`RawConfig`, every key optional, unknown keys rejected) → validated
//! [`Config`] (units resolved, secrets located, cross-key rules checked).
//!
//! Two stages, like ripgrep's `lowargs` → `hiargs`: serde does the syntax and names unknown keys,
//! [`Config::from_raw`] does the meaning and names the key and the fix in every error. Secrets are
//! never in this file: only the *path* of a secret file or the name of an environment variable.
//!
//! This file holds the whole-file types and the shared rules; each section's raw and validated
//! types live beside it: `mqtt`, `store`, `genesys`, `delivery`, `receipts`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alertbridge_genesys::{ClientConfig, EventsAuth, SecretSource, Target};
use alertbridge_payload::MappingConfig;
use alertbridge_wal::WalConfig;
use serde::Deserialize;

mod delivery;
mod genesys;
mod mqtt;
mod receipts;
mod store;

pub use delivery::*;
pub use genesys::*;
pub use mqtt::*;
pub use receipts::*;
pub use store::*;

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
        let mut mqtt = mqtt_from_raw(raw.mqtt)?;
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
        // Kept with the alert only while a receipt may go there (record version 3 otherwise
        // written for nothing).
        mqtt.keep_response_topic = receipts
            .as_ref()
            .is_some_and(|r| r.response_topic != ResponseTopic::Ignore);
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

#[cfg(test)]
mod tests;
