//! Genesys Cloud client for alertbridge: OAuth client-credentials token cache, request building
//! for two targets, and classification of every answer into a [`Disposition`].
//!
//! # What it owns, what it does not
//! It owns: getting and caching the access token (secret from a [`SecretSource`]), building the
//! request for the configured [`Target`], sending it over one pooled HTTP client, and turning the
//! answer into "delivered / retry / dead-letter / pause" with a reason. It knows nothing about
//! MQTT, the write-ahead log, backoff schedules, rate limiting or circuit breaking: the agent does
//! those with the [`Disposition`] it gets. It never retries on its own, except once after a 401
//! with a new token.
//!
//! # Requests (formats)
//! - Token: `POST {login_url}/oauth/token`, `Authorization: Basic base64(client_id:secret)`,
//!   form body `grant_type=client_credentials`, no scope. Answer `{"access_token", "expires_in"}`.
//! - [`Target::Workflow`]: `POST {api_url}/api/v2/flows/executions`, bearer token,
//!   `{"flowId", "flowVersion"?, "inputData": <alert data>, "name": "<alert id>"}`. 200 →
//!   `{"id": <execution id>}`. The alert id is not added to `inputData` (the flow's input schema
//!   decides what it accepts); the agent puts it into the data if the workflow should de-duplicate.
//! - [`Target::Events`]: `POST {events_url}` (default `{api_url}/api/v2/events`),
//!   `{"name": <event name>, "data": <alert data>}`, bearer token or, for a webhook invocation URL,
//!   no `Authorization` ([`EventsAuth::None`]). 200 → `{"invocationId"}`.
//! - Both: `Content-Type: application/json`, no redirects followed, whole request bounded by
//!   `request_timeout`, connect by `connect_timeout`.
//! - Checking the target without launching anything ([`GenesysClient::verify_target`], for
//!   `alertbridge check --online`): `GET {api_url}/api/v2/flows/{flowId}` (permission
//!   `architect:flow:view`) must answer a published `WORKFLOW`; an events URL must answer HTTP.
//!
//! # Classification ([`classify`], one table)
//! | answer | [`Disposition`] |
//! |---|---|
//! | 2xx | `Delivered(Receipt{status, execution_id, correlation_id})` |
//! | connect error, timeout | `Retry{after: None}`; `timed_out: true` when the request went out and no answer came within its timeout (neither call is idempotent: a timed-out launch may have run; the caller may lengthen the next attempt's timeout with [`GenesysClient::deliver_within`]) |
//! | 408, 409, 423, 425 (transient by definition), 500, 502–504, other 5xx | `Retry{after: Retry-After}` |
//! | 429 | `Retry{after: Retry-After or 3 s}`; `Pause{after}` if `Retry-After` > 180 s |
//! | 401 | drop the token, new token, send once more; a second 401 → `Pause` |
//! | 403, 404, 410, 501, 3xx | `Pause` (configuration: role, flow id, URL) |
//! | 400, 413, 415, 422, other 4xx | `DeadLetter{api_message, code}` (the body's `code` names the rejection, so the agent can tell a run of identical rejections) |
//! | token endpoint 400/401 | `Pause`: "check client_id/secret and the region" |
//! | token endpoint 429 / 5xx / connect / unparsable 200 | `Retry` (429 > 180 s → `Pause`) |
//! | unreadable or empty secret, other token endpoint status | `Pause` |
//!
//! Reasons carry status, the error body's `code`, `message`, `details`, `limit` and the
//! `ININ-Correlation-Id` (or `contextId`); a non-JSON body (a load balancer's page) is quoted
//! briefly on one line.
//!
//! # Token cache
//! See [`effective_refresh_margin`] and the `auth` module: a token is refreshed proactively
//! `min(refresh_margin, lifetime / 4)` before it expires, one fetch at a time (a burst of
//! deliveries makes one token request), and a failed refresh keeps using the old token while it
//! is still valid. The secret is read from its [`SecretSource`] on every fetch, so rotation needs
//! no restart; a rejected fetch re-reads it once and retries if it changed meanwhile.
//!
//! # Invariants
//! - **I6** Secrets (client secret, access tokens, a webhook invocation URL) never reach logs,
//!   errors, `Debug` output, metrics or reasons. They live in `SecretString`s (the URL is shown as
//!   its host only); transport errors are formatted without their URL. Kept in `auth.rs` and
//!   `client.rs`, guarded by the unit tests there and `tests/http.rs`
//!   `secrets_are_absent_from_every_output`.
//! - **G1** [`GenesysClient::deliver`] never panics and never returns an error: every outcome is
//!   a [`Disposition`], and every non-delivered one has a reason.
//! - **G2** At most one token request is in flight per client (and its clones).
//! - **G3** After a 401 at most one more request is sent for that delivery.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use alertbridge_genesys::{region_hosts, ClientConfig, Disposition, GenesysClient, SecretSource, Target};
//!
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! let (login_url, api_url) = region_hosts("eu-west-1")?;
//! let target = Target::Workflow { flow_id: "5f1c…".into(), flow_version: None };
//! let secret = SecretSource::File("/run/credentials/alertbridge.service/client_secret".into());
//! let client = GenesysClient::new(ClientConfig::new(login_url, api_url, "client-id", secret, target))?;
//! client.ensure_token().await?; // fail early on wrong credentials or region
//! let data = serde_json::Map::new();
//! match client.deliver("alert-1", &data).await {
//!     Disposition::Delivered(receipt) => println!("execution {:?}", receipt.execution_id),
//!     Disposition::Retry { after, reason, .. } => println!("retry after {after:?}: {reason}"),
//!     Disposition::DeadLetter { reason, .. } => println!("dead letter: {reason}"),
//!     Disposition::Pause { reason, .. } => println!("pause the target: {reason}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Crypto provider
//! reqwest is built with `rustls-no-provider`: the binary (or test) installs one, e.g.
//! `rustls::crypto::ring::default_provider().install_default()`, before
//! [`GenesysClient::new`], which otherwise returns [`ClientError::NoCryptoProvider`].

mod auth;
mod classify;
mod client;
mod config;
mod disposition;
mod region;
mod verify;

pub use auth::{
    effective_refresh_margin, SecretSource, TokenError, TokenStats, REFRESH_RETRY_INTERVAL,
};
pub use classify::{
    classify, parse_retry_after, Classified, CORRELATION_ID_HEADER, DEFAULT_RATE_LIMIT_WAIT,
    MAX_RATE_LIMIT_WAIT, RETRY_AFTER_CAP,
};
pub use client::{GenesysClient, POOL_IDLE_TIMEOUT};
pub use config::{ClientConfig, ClientError, EventsAuth, Target};
pub use disposition::{Disposition, Receipt};
pub use region::{region_hosts, RegionError};
pub use verify::{flow_verdict, TargetCheck, PERMISSION_FLOW_LAUNCH, PERMISSION_FLOW_VIEW};
