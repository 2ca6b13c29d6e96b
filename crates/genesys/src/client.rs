//! The client: request building for the two targets, one delivery with its 401 rule. Its
//! settings are in `config.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::{TokenCache, TokenEndpoint, TokenError, TokenStats};
use crate::classify::{classify, header_text, Classified, CORRELATION_ID_HEADER};
use crate::config::{ClientConfig, ClientError, EventsAuth, Target};
use crate::disposition::Disposition;

/// Idle pooled connections are closed after this, below the usual 60 s idle timeout of load
/// balancers, so a request rarely meets a connection the other side has just closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// At most this much of an answer body is read (answers are small JSON; a proxy's error page
/// may not be).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The Genesys Cloud client. Cheap to clone: one pooled HTTP client and one token cache shared
/// by all clones.
#[derive(Clone)]
pub struct GenesysClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Pooled; shared with the token cache.
    http: reqwest::Client,
    /// Where deliveries are posted. A secret when `bearer` is false.
    url: Url,
    /// Host of `url`, the only part of an invocation URL that is logged.
    host: String,
    /// Send `Authorization: Bearer`.
    bearer: bool,
    target: Target,
    tokens: TokenCache,
    /// The configured whole-request timeout ([`GenesysClient::deliver`]).
    request_timeout: Duration,
}

impl std::fmt::Debug for GenesysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        f.debug_struct("GenesysClient")
            .field("target", &inner.target)
            .field("host", &inner.host)
            .field("tokens", &inner.tokens)
            .finish_non_exhaustive()
    }
}

impl GenesysClient {
    /// Checks the configuration and builds the pooled HTTP client (timeouts, idle pool timeout,
    /// no redirects). Sends nothing; call [`GenesysClient::ensure_token`] to test credentials.
    ///
    /// Needs a rustls `CryptoProvider` installed by the caller, e.g.
    /// `rustls::crypto::ring::default_provider().install_default()`.
    pub fn new(cfg: ClientConfig) -> Result<GenesysClient, ClientError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(ClientError::NoCryptoProvider);
        }
        let invalid = |field, reason: &str| ClientError::InvalidConfig {
            field,
            reason: reason.to_owned(),
        };
        if cfg.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be more than 0"));
        }
        if cfg.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be more than 0"));
        }
        let login_url = cfg.login_url.trim().trim_end_matches('/').to_owned();
        let api_url = cfg.api_url.trim().trim_end_matches('/').to_owned();
        let token_url = parse_http_url("login_url", &format!("{login_url}/oauth/token"), true)?;
        let (url, bearer) = match &cfg.target {
            Target::Workflow { flow_id, .. } => {
                if flow_id.trim().is_empty() {
                    return Err(invalid("flow_id", "is empty"));
                }
                let url = parse_http_url(
                    "api_url",
                    &format!("{api_url}/api/v2/flows/executions"),
                    true,
                )?;
                (url, true)
            }
            Target::Events {
                event_name,
                events_url,
                auth,
            } => {
                if event_name.trim().is_empty() {
                    return Err(invalid("event_name", "is empty"));
                }
                let shown = matches!(auth, EventsAuth::Bearer);
                let url = match events_url {
                    Some(u) => parse_http_url("events_url", u.trim(), shown)?,
                    None => parse_http_url("api_url", &format!("{api_url}/api/v2/events"), true)?,
                };
                (url, shown)
            }
        };
        if bearer && cfg.client_id.trim().is_empty() {
            return Err(invalid("client_id", "is empty"));
        }
        for (field, u) in [("login_url", &token_url), ("target url", &url)] {
            let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if u.scheme() == "http" && !loopback && (bearer || field == "target url") {
                tracing::warn!(
                    field,
                    host = u.host_str().unwrap_or(""),
                    "plain http to a non-loopback host: credentials travel unencrypted"
                );
            }
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A redirect from these POST endpoints means a wrong URL; following it could carry
            // the body (and, same host, the token) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("alertbridge-genesys/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build {
                reason: transport_reason(e),
            })?;
        let host = url.host_str().unwrap_or("").to_owned();
        let tokens = TokenCache::new(
            http.clone(),
            TokenEndpoint {
                token_url,
                login_url,
                client_id: cfg.client_id.trim().to_owned(),
                secret: cfg.secret,
                refresh_margin: cfg.refresh_margin,
            },
        );
        Ok(GenesysClient {
            inner: Arc::new(Inner {
                http,
                url,
                host,
                bearer,
                target: cfg.target,
                tokens,
                request_timeout: cfg.request_timeout,
            }),
        })
    }

    /// Sends one alert and classifies the answer. Never fails: every outcome is a
    /// [`Disposition`] with a reason. A 401 drops the token (if still current), fetches a new
    /// one and sends once more; a second 401 pauses. The request is bounded by the configured
    /// `request_timeout`.
    pub async fn deliver(&self, alert_id: &str, data: &Map<String, Value>) -> Disposition {
        self.deliver_within(alert_id, data, self.inner.request_timeout)
            .await
    }

    /// [`GenesysClient::deliver`] with this request bounded by `timeout` instead of the
    /// configured `request_timeout` (the caller lengthens it for an alert whose earlier attempt
    /// timed out: a slow API answers a longer wait, instead of being asked again). The token
    /// request, if one is needed, keeps the configured timeout. A zero `timeout` counts as 1 ms.
    pub async fn deliver_within(
        &self,
        alert_id: &str,
        data: &Map<String, Value>,
        timeout: Duration,
    ) -> Disposition {
        let body = self.inner.body(alert_id, data);
        let timeout = timeout.max(Duration::from_millis(1));
        let (disposition, correlation_id) = self.send(&body, timeout).await;
        let correlation_id = correlation_id.as_deref();
        let status = disposition.status();
        let host = self.inner.host.as_str();
        match &disposition {
            Disposition::Delivered(receipt) => tracing::debug!(
                alert_id,
                status,
                correlation_id,
                execution_id = receipt.execution_id.as_deref(),
                host,
                "alert delivered"
            ),
            Disposition::Pause { reason, .. } => tracing::warn!(
                alert_id,
                status,
                correlation_id,
                outcome = disposition.kind(),
                reason = reason.as_str(),
                host,
                "delivery paused: configuration fault"
            ),
            Disposition::Retry { reason, .. } | Disposition::DeadLetter { reason, .. } => {
                tracing::debug!(
                    alert_id,
                    status,
                    correlation_id,
                    outcome = disposition.kind(),
                    reason = reason.as_str(),
                    host,
                    "alert not delivered"
                )
            }
        }
        disposition
    }

    /// One delivery with its 401 rule; also returns the last answer's correlation id (for logs).
    async fn send(&self, body: &[u8], timeout: Duration) -> (Disposition, Option<String>) {
        let inner = &self.inner;
        let mut reauthenticated = false;
        loop {
            let bearer = if inner.bearer {
                match inner.tokens.bearer().await {
                    Ok(b) => Some(b),
                    Err(e) => return (e.to_disposition(), None),
                }
            } else {
                None
            };
            let mut request = inner
                .http
                .post(inner.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .timeout(timeout)
                .body(body.to_vec());
            if let Some(b) = &bearer {
                request = request.bearer_auth(b.token.expose_secret());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    // Sent, and no answer in time: it may have run. A connect timeout sent
                    // nothing.
                    let timed_out = e.is_timeout() && !e.is_connect();
                    let retry = Disposition::Retry {
                        after: None,
                        reason: inner.redact(transport_reason(e)),
                        status: None,
                        timed_out,
                    };
                    return (retry, None);
                }
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let correlation = header_text(&headers, CORRELATION_ID_HEADER);
            let answer = match read_body(response).await {
                Ok(a) => a,
                // Accepted is accepted, even if the receipt body got lost; for a failure the
                // status and headers still classify it.
                Err(e) => {
                    tracing::debug!(
                        status,
                        error = %inner.redact(transport_reason(e)),
                        "answer body unreadable"
                    );
                    Vec::new()
                }
            };
            let classified = classify(status, &headers, &answer, SystemTime::now());
            let reason = match classified {
                Classified::Final(d) => return (inner.redact_disposition(d), correlation),
                Classified::Reauthenticate { reason, .. } => reason,
            };
            let hint = match &bearer {
                Some(b) if !reauthenticated => {
                    tracing::info!(
                        status,
                        correlation_id = correlation.as_deref(),
                        "401 from the API: dropping the token and authenticating again"
                    );
                    inner.tokens.drop_if_current(b.id);
                    reauthenticated = true;
                    continue;
                }
                Some(_) => {
                    "a fresh token was rejected too: check the OAuth client (roles, IP allow-list) \
                     and the region"
                }
                None => "the webhook invocation URL was rejected: check events_url",
            };
            let pause = Disposition::Pause {
                reason: inner.redact(format!("{reason}; {hint}")),
                status: Some(401),
                after: None,
            };
            return (pause, correlation);
        }
    }

    /// Makes sure a fresh token is cached (at start, to check credentials early, and in tests).
    /// A target that needs no token ([`EventsAuth::None`]) has nothing to do.
    pub async fn ensure_token(&self) -> Result<(), TokenError> {
        if !self.inner.bearer {
            return Ok(());
        }
        self.inner.tokens.bearer().await.map(|_| ())
    }

    /// Forgets the cached token (e.g. on SIGHUP after a secret rotation); the next request
    /// fetches a new one with a freshly read secret.
    pub fn drop_token(&self) {
        self.inner.tokens.drop_token();
    }

    /// Token counters (no secrets).
    pub fn token_stats(&self) -> TokenStats {
        self.inner.tokens.stats()
    }

    /// The configured whole-request timeout ([`ClientConfig::request_timeout`]).
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Whether requests carry `Authorization: Bearer` (false for a webhook invocation URL).
    pub(crate) fn uses_bearer(&self) -> bool {
        self.inner.bearer
    }

    /// A current access token from the cache (fetched when needed).
    pub(crate) async fn bearer_token(&self) -> Result<secrecy::SecretString, TokenError> {
        self.inner.tokens.bearer().await.map(|b| b.token)
    }

    /// The pooled HTTP client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Where deliveries are posted (a secret for a webhook invocation URL: never show it).
    pub(crate) fn target_url(&self) -> &Url {
        &self.inner.url
    }

    /// The configured target.
    pub(crate) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// The host deliveries go to (the only part of a webhook invocation URL that may be shown).
    pub fn target_host(&self) -> &str {
        &self.inner.host
    }
}

/// The workflow launch body (`FlowExecutionLaunchRequest`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FlowLaunch<'a> {
    flow_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_version: Option<&'a str>,
    input_data: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
}

/// The events body.
#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    data: &'a Map<String, Value>,
}

impl Inner {
    fn body(&self, alert_id: &str, data: &Map<String, Value>) -> Vec<u8> {
        let result = match &self.target {
            Target::Workflow {
                flow_id,
                flow_version,
            } => serde_json::to_vec(&FlowLaunch {
                flow_id,
                flow_version: flow_version.as_deref().filter(|v| !v.trim().is_empty()),
                input_data: data,
                name: alert_id,
            }),
            Target::Events { event_name, .. } => serde_json::to_vec(&Event {
                name: event_name,
                data,
            }),
        };
        result.expect("string-keyed JSON maps and strings always serialize")
    }

    /// Removes the invocation URL (and its path parts) from operator text when the URL is the
    /// credential; an error page might echo the path.
    fn redact(&self, text: String) -> String {
        if self.bearer {
            return text;
        }
        let mut out = text.replace(self.url.as_str(), "[events_url]");
        let path = self.url.path();
        if path.len() > 1 {
            out = out.replace(path, "[path]");
        }
        for segment in self.url.path().split('/').filter(|s| s.len() >= 8) {
            out = out.replace(segment, "[redacted]");
        }
        if let Some(query) = self.url.query().filter(|q| !q.is_empty()) {
            out = out.replace(query, "[redacted]");
        }
        out
    }

    fn redact_disposition(&self, d: Disposition) -> Disposition {
        if self.bearer {
            return d;
        }
        match d {
            Disposition::Retry {
                after,
                reason,
                status,
                timed_out,
            } => Disposition::Retry {
                after,
                reason: self.redact(reason),
                status,
                timed_out,
            },
            Disposition::DeadLetter {
                status,
                reason,
                api_message,
                code,
            } => Disposition::DeadLetter {
                status,
                reason: self.redact(reason),
                api_message: api_message.map(|m| self.redact(m)),
                code: code.map(|c| self.redact(c)),
            },
            Disposition::Pause {
                reason,
                status,
                after,
            } => Disposition::Pause {
                reason: self.redact(reason),
                status,
                after,
            },
            delivered @ Disposition::Delivered(_) => delivered,
        }
    }
}

/// Parses an http(s) URL; `shown = false` keeps the URL out of the error (an invocation URL).
/// A URL with credentials (`user:password@host`, or any `@` the parser might take for one) is
/// refused and never shown: the OAuth secret comes from its [`SecretSource`], not from a URL.
fn parse_http_url(field: &'static str, url: &str, shown: bool) -> Result<Url, ClientError> {
    let shown = shown && !url.contains('@');
    let invalid = |what: String| ClientError::InvalidConfig {
        field,
        reason: if shown {
            format!("{what} ({url:?})")
        } else {
            what
        },
    };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "holds credentials (user:password@); the client id and secret are separate settings"
                .into(),
        ));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            "scheme must be https (or http for a local simulator)".into(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    Ok(parsed)
}

/// `scheme://host/…` with everything after the host hidden.
pub(crate) fn redacted_url(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(u) => format!("{}://{}/[redacted]", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "[redacted]".to_owned(),
    }
}

/// A transport error as text: kind and cause chain, without the URL (it may be a credential).
pub(crate) fn transport_reason(e: reqwest::Error) -> String {
    let timed_out = e.is_timeout();
    let connect = e.is_connect();
    let e = e.without_url();
    let mut text = if timed_out && connect {
        "connect timed out".to_owned()
    } else if timed_out {
        "timed out waiting for the answer".to_owned()
    } else if connect {
        "connect error".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let part = cause.to_string();
        // reqwest's own timeout cause says nothing the first words do not.
        if !text.contains(&part) && part != "operation timed out" {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer body.
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SecretSource;

    fn install_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    fn workflow() -> Target {
        Target::Workflow {
            flow_id: "flow-1".into(),
            flow_version: None,
        }
    }

    fn config(target: Target) -> ClientConfig {
        ClientConfig::new(
            "https://login.mypurecloud.ie",
            "https://api.mypurecloud.ie/",
            "client-1",
            SecretSource::Static("TOPSECRET-abc".into()),
            target,
        )
    }

    fn data() -> Map<String, Value> {
        let Value::Object(m) = serde_json::json!({"deviceId": "d-7", "level": 3}) else {
            unreachable!()
        };
        m
    }

    #[test]
    fn workflow_body_has_flow_id_input_data_and_name() {
        install_provider();
        let client = GenesysClient::new(config(Target::Workflow {
            flow_id: "flow-1".into(),
            flow_version: Some("3.0".into()),
        }))
        .expect("builds");
        let body: Value = serde_json::from_slice(&client.inner.body("a-1", &data())).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"flowId": "flow-1", "flowVersion": "3.0",
                "inputData": {"deviceId": "d-7", "level": 3}, "name": "a-1"})
        );
        assert_eq!(
            client.inner.url.as_str(),
            "https://api.mypurecloud.ie/api/v2/flows/executions"
        );
    }

    #[test]
    fn empty_flow_version_and_alert_id_are_left_out() {
        install_provider();
        let client = GenesysClient::new(config(Target::Workflow {
            flow_id: "flow-1".into(),
            flow_version: Some(" ".into()),
        }))
        .expect("builds");
        let body: Value = serde_json::from_slice(&client.inner.body("", &data())).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"flowId": "flow-1", "inputData": {"deviceId": "d-7", "level": 3}})
        );
    }

    #[test]
    fn events_body_and_default_url() {
        install_provider();
        let client = GenesysClient::new(config(Target::Events {
            event_name: "iot.device.alert".into(),
            events_url: None,
            auth: EventsAuth::Bearer,
        }))
        .expect("builds");
        let body: Value = serde_json::from_slice(&client.inner.body("a-1", &data())).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"name": "iot.device.alert", "data": {"deviceId": "d-7", "level": 3}})
        );
        assert_eq!(
            client.inner.url.as_str(),
            "https://api.mypurecloud.ie/api/v2/events"
        );
        assert!(client.inner.bearer);
    }

    #[test]
    fn bad_settings_are_named() {
        install_provider();
        let field = |cfg: ClientConfig| match GenesysClient::new(cfg) {
            Err(ClientError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let mut c = config(workflow());
        c.api_url = "ftp://api.mypurecloud.ie".into();
        assert_eq!(field(c), "api_url");
        let mut c = config(workflow());
        c.login_url = "login.mypurecloud.ie".into();
        assert_eq!(field(c), "login_url");
        let mut c = config(workflow());
        c.client_id = " ".into();
        assert_eq!(field(c), "client_id");
        assert_eq!(
            field(config(Target::Workflow {
                flow_id: "".into(),
                flow_version: None
            })),
            "flow_id"
        );
        assert_eq!(
            field(config(Target::Events {
                event_name: "".into(),
                events_url: None,
                auth: EventsAuth::Bearer
            })),
            "event_name"
        );
    }

    #[test]
    fn invocation_url_never_shows_beyond_its_host() {
        install_provider();
        let token = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let url = format!(
            "https://api.usw2.pure.cloud/platform/api/v2/integrations/webhooks/{token}/events"
        );
        let target = Target::Events {
            event_name: "iot.device.alert".into(),
            events_url: Some(url.clone()),
            auth: EventsAuth::None,
        };
        let mut cfg = config(target);
        cfg.client_id = String::new(); // not needed without OAuth
        let client = GenesysClient::new(cfg.clone()).expect("builds");
        assert_eq!(client.target_host(), "api.usw2.pure.cloud");
        for text in [format!("{cfg:?}"), format!("{client:?}")] {
            assert!(!text.contains(token), "{text}");
            assert!(text.contains("api.usw2.pure.cloud"), "{text}");
        }
        let echoed = client.inner.redact(format!("no webhook at {url} (path /platform/api/v2/integrations/webhooks/{token}/events, token {token})"));
        assert!(!echoed.contains(token), "{echoed}");

        // A malformed invocation URL is not echoed in the error either.
        let mut bad = config(Target::Events {
            event_name: "e".into(),
            events_url: Some(format!("htps:/{token}")),
            auth: EventsAuth::None,
        });
        bad.client_id = String::new();
        let err = GenesysClient::new(bad).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(token), "{err:?}");
    }

    #[test]
    fn urls_with_credentials_are_refused_without_showing_them() {
        install_provider();
        let canary = "canary-pw-5f1e";
        let field_of = |cfg: ClientConfig| match GenesysClient::new(cfg) {
            Err(e @ ClientError::InvalidConfig { field, .. }) => {
                let text = format!("{e} {e:?}");
                assert!(!text.contains(canary), "{text}");
                field
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let mut c = config(workflow());
        c.api_url = format!("https://user:{canary}@api.mypurecloud.ie");
        assert_eq!(field_of(c), "api_url");
        let mut c = config(workflow());
        c.login_url = format!("https://user:{canary}@login.mypurecloud.ie");
        assert_eq!(field_of(c), "login_url");
        // A password with a `/` makes the parser see a bad port: still not shown.
        let mut c = config(workflow());
        c.api_url = format!("https://user:{canary}/x@api.mypurecloud.ie");
        assert_eq!(field_of(c), "api_url");
        let events = |url: String| {
            config(Target::Events {
                event_name: "e".into(),
                events_url: Some(url),
                auth: EventsAuth::Bearer,
            })
        };
        assert_eq!(
            field_of(events(format!("https://u:{canary}@api.mypurecloud.ie/e"))),
            "events_url"
        );
    }

    #[test]
    fn debug_of_config_and_client_hides_the_secret() {
        install_provider();
        let cfg = config(workflow());
        let client = GenesysClient::new(cfg.clone()).expect("builds");
        for text in [format!("{cfg:?}"), format!("{client:?}")] {
            assert!(!text.contains("TOPSECRET"), "{text}");
        }
    }
}
