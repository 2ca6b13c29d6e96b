//! The client's settings: the target (workflow or events), the events authentication, the
//! endpoints and timeouts, and why a client could not be built.

use std::time::Duration;

use crate::auth::SecretSource;
use crate::client::redacted_url;

/// Where alerts go.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// Launch an Architect workflow: `POST {api_url}/api/v2/flows/executions` with
    /// `{"flowId", "flowVersion"?, "inputData": data, "name": "<alert_id>"}`.
    Workflow {
        /// Id of a published workflow.
        flow_id: String,
        /// Version to launch; `None` or empty = latest published.
        flow_version: Option<String>,
    },
    /// Post a named event: `POST {events_url}` with `{"name": event_name, "data": data}`.
    Events {
        /// The `name` of every event.
        event_name: String,
        /// `None` = `{api_url}/api/v2/events` (the simulator's path; it does not exist on a real
        /// org). On a real org: the webhook integration's invocation URL, verbatim, with
        /// [`EventsAuth::None`].
        events_url: Option<String>,
        /// How requests authenticate.
        auth: EventsAuth,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Workflow {
                flow_id,
                flow_version,
            } => f
                .debug_struct("Workflow")
                .field("flow_id", flow_id)
                .field("flow_version", flow_version)
                .finish(),
            Target::Events {
                event_name,
                events_url,
                auth,
            } => {
                // A webhook invocation URL is a credential: show its host only.
                let url = events_url.as_deref().map(|u| match auth {
                    EventsAuth::Bearer => u.to_owned(),
                    EventsAuth::None => redacted_url(u),
                });
                f.debug_struct("Events")
                    .field("event_name", event_name)
                    .field("events_url", &url)
                    .field("auth", auth)
                    .finish()
            }
        }
    }
}

/// How an events request authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventsAuth {
    /// `Authorization: Bearer <OAuth token>` (the simulator's `/api/v2/events`).
    #[default]
    Bearer,
    /// No header: the URL is a webhook invocation URL and itself the credential. It is never
    /// logged or shown in full (only its host).
    None,
}

/// Everything the client needs. `Debug` shows no secret and no invocation URL.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `https://login.mypurecloud.ie`; the token endpoint is `{login_url}/oauth/token`.
    pub login_url: String,
    /// e.g. `https://api.mypurecloud.ie`.
    pub api_url: String,
    /// OAuth client id (client-credentials grant).
    pub client_id: String,
    /// Read on every token fetch.
    pub secret: SecretSource,
    /// Where alerts go.
    pub target: Target,
    /// Whole request including the answer body ([`ClientConfig::DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// TCP + TLS connect ([`ClientConfig::DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Refresh a token this long before it expires ([`ClientConfig::DEFAULT_REFRESH_MARGIN`]),
    /// capped at a quarter of the token's lifetime ([`crate::effective_refresh_margin`]).
    pub refresh_margin: Duration,
}

impl ClientConfig {
    /// 10 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// 5 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// 300 s.
    pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

    /// A config with the default timeouts and margin.
    pub fn new(
        login_url: impl Into<String>,
        api_url: impl Into<String>,
        client_id: impl Into<String>,
        secret: SecretSource,
        target: Target,
    ) -> ClientConfig {
        ClientConfig {
            login_url: login_url.into(),
            api_url: api_url.into(),
            client_id: client_id.into(),
            secret,
            target,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            refresh_margin: Self::DEFAULT_REFRESH_MARGIN,
        }
    }
}

/// Why a client could not be built. A configuration or start-up error: nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// reqwest is built without a default rustls provider; the binary installs one at start.
    #[error("no rustls CryptoProvider is installed: call rustls::crypto::ring::default_provider().install_default() once at start")]
    NoCryptoProvider,
    /// A setting is missing or malformed; fix the configuration.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting, e.g. `api_url`.
        field: &'static str,
        /// What is wrong (an invocation URL is never echoed).
        reason: String,
    },
    /// reqwest could not build its client (e.g. no usable trust roots).
    #[error("cannot build the HTTP client: {reason}")]
    Build {
        /// reqwest's error chain.
        reason: String,
    },
}
