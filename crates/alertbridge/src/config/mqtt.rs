//! `[mqtt]`: broker URL, client id, topic filters (and their syntax), shared subscriptions,
//! MQTT 5 session settings, credentials, reconnect backoff.

use super::*;

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
    /// MQTT version: "3.1.1" (default) or "5".
    pub protocol: Option<String>,
    /// MQTT 5: how long the broker keeps our session (and queues alerts) while we are away.
    pub session_expiry_secs: Option<u64>,
    /// MQTT 5: most unacked QoS 1 publishes the broker may send us at once.
    pub receive_maximum: Option<u64>,
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
    /// MQTT version spoken to the broker (`mqtt.protocol`).
    pub protocol: MqttProtocol,
    /// MQTT 5 Session Expiry Interval in seconds (`mqtt.session_expiry_secs`): how long the
    /// broker keeps the session, its subscriptions and the alerts queued for it after the
    /// connection is lost. Unused in MQTT 3.1.1, where a persistent session never expires.
    pub session_expiry_secs: u32,
    /// MQTT 5 Receive Maximum (`mqtt.receive_maximum`): most unacked QoS 1 publishes the broker
    /// may send at once; bounds the acks waiting to be written. Unused in MQTT 3.1.1.
    pub receive_maximum: u16,
    /// Whether ingest keeps an MQTT 5 publisher's Response Topic and Correlation Data with the
    /// alert: derived from `[receipts]` (on, `response_topic` not `"ignore"`), not a key.
    pub keep_response_topic: bool,
}

/// Which MQTT version ingest speaks (`mqtt.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 3.1.1 (`"3.1.1"`, the default).
    V311,
    /// MQTT 5 (`"5"`): message expiry becomes the alert's TTL, user properties reach the
    /// mapping (`$props.<name>`), SUBACK reason codes are logged, the session expires after
    /// `session_expiry_secs`.
    V5,
}

/// Default `mqtt.session_expiry_secs`: 7 days, so the broker keeps queuing alerts across a long
/// outage of the gateway (a weekend, a replaced disk) instead of dropping the session.
pub const DEFAULT_SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;

/// Default `mqtt.receive_maximum`: as many unacked publishes as mosquitto's default in-flight
/// window, enough for several full group commits in flight.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 100;

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

pub(super) fn mqtt_from_raw(raw: RawMqtt) -> Result<MqttConfig, ConfigError> {
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
    let protocol = match raw.protocol.as_deref() {
        None | Some("3.1.1") => MqttProtocol::V311,
        Some("5") => MqttProtocol::V5,
        Some(other) => {
            return Err(invalid(
                "mqtt.protocol",
                format!("`{other}` is not an MQTT version alertbridge speaks"),
                "write \"3.1.1\" (the default) or \"5\"",
            ))
        }
    };
    if protocol == MqttProtocol::V311 {
        for (key, set) in [
            (
                "mqtt.session_expiry_secs",
                raw.session_expiry_secs.is_some(),
            ),
            ("mqtt.receive_maximum", raw.receive_maximum.is_some()),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "only has a meaning in MQTT 5, and mqtt.protocol is \"3.1.1\"",
                    "set mqtt.protocol = \"5\" or remove the key",
                ));
            }
        }
    }
    // 0 would end the session at every disconnect: whatever is published while alertbridge
    // reconnects (or restarts) is never queued for it, a loss at the broker on every blip.
    let session_expiry_secs = match raw.session_expiry_secs {
        None => DEFAULT_SESSION_EXPIRY_SECS,
        Some(0) => {
            return Err(invalid(
                "mqtt.session_expiry_secs",
                "is 0: the broker would end the session at every disconnect, and alerts published \
                 while alertbridge reconnects or restarts would be lost at the broker",
                "set it to the longest outage to survive (default 604800 = 7 days; 4294967295: \
                 never expires)",
            ))
        }
        Some(s) => u32::try_from(s).map_err(|_| {
            invalid(
                "mqtt.session_expiry_secs",
                format!("{s} is above the MQTT 5 maximum 4294967295"),
                "use 1..=4294967295 (4294967295: the session never expires; default 604800 = 7 days)",
            )
        })?,
    };
    let receive_maximum = match raw.receive_maximum {
        None => DEFAULT_RECEIVE_MAXIMUM,
        Some(r) => u16::try_from(r).ok().filter(|r| *r > 0).ok_or_else(|| {
            invalid(
                "mqtt.receive_maximum",
                format!("{r} is outside 1..=65535"),
                "use 1..=65535 (default 100)",
            )
        })?,
    };
    Ok(MqttConfig {
        protocol,
        session_expiry_secs,
        receive_maximum,
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
        // Set with `[receipts]` (`Config::parse`).
        keep_response_topic: false,
    })
}
