//! genesys-sim: a fake of the Genesys Cloud CX API over real HTTP, for the Genesys client's unit
//! tests, the end-to-end tests and `alertbridge demo` (all in-process), and as a stand-alone binary.
//!
//! It speaks the real shapes (see `shared/reference/genesys-cloud-api.md`), so a client that works
//! against it makes the same requests it would make to `login.<domain>` and `api.<domain>`; both
//! point at [`Sim::base_url`]. It depends on none of alertbridge's crates: a shared type would let the
//! same mistake pass on both sides.
//!
//! # What it serves
//! | request | answer |
//! |---|---|
//! | `POST /oauth/token`, `Authorization: Basic base64(id:secret)`, form `grant_type=client_credentials` | 200 `{"access_token","token_type":"bearer","expires_in"}`; bad or missing Basic credentials → `token_error_status` (401, or 400) `{"error":"invalid_client","description":"authentication failed","error_description":"authentication failed"}`; not a form body (e.g. JSON) or no `grant_type` → 400 `invalid_request`; another grant → 400 `unsupported_grant_type` |
//! | `POST /api/v2/flows/executions`, bearer, `{"flowId", "flowVersion"?, "inputData"?, "name"?}` | 200 `{"id","name","flowVersion":{"id","name","selfUri"},"selfUri"}` |
//! | `GET /api/v2/flows/executions/{id}`, bearer | 200 `{"id","status":"COMPLETED","dateLaunched",...}` for a launched id, else 404 |
//! | `GET /api/v2/flows/{id}`, bearer | 200 `{"id","name","type":"WORKFLOW","publishedVersion":{"id","name","selfUri"},...}` for a known flow id (every id when `known_flow_ids` is unset), else 404 |
//! | `POST /api/v2/events`, bearer, `{"name": string, "data": object}` | 200 `{"invocationId"}` |
//! | `POST [/platform]/api/v2/integrations/webhooks/{token}/events`, no auth, any JSON object | 200 `{"invocationId"}`; a token other than `webhook_token` → 404 |
//!
//! API errors carry the platform's ErrorBody `{"message","code","status","contextId",...}`:
//! 401 `authentication.required` (no, unknown or revoked token) or `credentials.expired`;
//! 413 `request.entity.too.large` (body longer than `max_body_bytes`); 415 `unsupported.media.type`
//! (`Content-Type` not `application/json`); 400 `bad.request` (not JSON, not an object, `flowId`
//! missing, `inputData` not an object, ...); 404 `not.found` (flow not in `known_flow_ids`, unknown
//! path); 403 `missing.any.permissions` naming the permission the simulator was told the role
//! lacks (`architect:flow:launch` to launch, `architect:flow:view` to read a flow); and the injected faults of [`Faults`] (checked first, in the order given there).
//! Checks run in this order: faults, token, size, media type, body.
//!
//! # Admin endpoints (for the binary and other processes; no auth: bind to loopback)
//! | request | effect |
//! |---|---|
//! | `GET /sim/stats` | [`SimStats`] as JSON |
//! | `GET /sim/accepted` | `[Accepted]` as JSON |
//! | `GET /sim/requests` | `[LoggedRequest]` as JSON |
//! | `GET /sim/faults`, `PUT /sim/faults` (JSON [`Faults`], missing fields take defaults) | read / replace the faults |
//! | `POST /sim/outage` (text body: seconds) | outage from now for that long |
//! | `POST /sim/revoke` | [`Sim::revoke_tokens`] |
//! | `PUT /sim/secret` (text body) | [`Sim::set_client_secret`] |
//! | `PUT /sim/token-ttl` (text body: seconds, fractions allowed) | [`Sim::set_token_ttl`] |
//! | `PUT /sim/known-flow-ids` (JSON array or `null`) | [`Sim::set_known_flow_ids`] |
//! | `PUT /sim/denied-permissions` (JSON array of permissions) | [`Sim::set_denied_permissions`] |
//!
//! `SystemTime` fields are serialized in serde's form `{"secs_since_epoch","nanos_since_epoch"}`.
//!
//! # Invariants
//! 1. Every answer carries `ININ-Correlation-Id`; an ErrorBody's `contextId` is the same value.
//! 2. Every request except `/sim/*` gets one [`LoggedRequest`], appended at arrival (so the log is
//!    in arrival order) and completed with its status when answered; until then its status is 0.
//!    The log keeps the last [`REQUEST_LOG_CAPACITY`] (200 000) entries; [`SimStats`] counts all.
//! 3. An [`Accepted`] is recorded before its 200 is written: a client holding a 200 finds its call
//!    in [`Sim::accepted`]. The last [`ACCEPTED_CAPACITY`] (200 000) are kept.
//! 4. A bearer token is accepted iff this simulator issued it, it was not revoked since, and its
//!    expiry (issue time + `token_ttl` at issue, tracked to the nanosecond, whatever the rounded-up
//!    `expires_in`) has not passed. Rotating the secret does not revoke tokens.
//! 5. Neither the client secret, a whole access token, nor a whole webhook token appears in `Debug`
//!    output, `tracing` lines or the request log (tokens are cut to 6 characters).
//! 6. The state sits behind one `std::sync::Mutex`, held for short sections and never across an
//!    `.await`.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use genesys_sim::{Sim, SimConfig};
//! let sim = Sim::start(SimConfig::default()).await?;
//! let url = sim.base_url(); // login_url and api_url
//! sim.update_faults(|f| f.error_rate_503 = 0.2);
//! # let _ = url;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod answer;
mod api;
mod faults;
mod ids;
mod record;
mod server;
mod state;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::faults::Faults;
pub use crate::record::{
    Accepted, Endpoint, LoggedRequest, SimStats, ACCEPTED_CAPACITY, REQUEST_LOG_CAPACITY,
};
use crate::state::Shared;

/// Configuration of a [`Sim`]. Every field has a default ([`SimConfig::default`]).
#[derive(Clone)]
pub struct SimConfig {
    /// OAuth client id accepted by `/oauth/token`. Default `sim-client`.
    pub client_id: String,
    /// OAuth client secret accepted by `/oauth/token`. Default `sim-secret`. Never printed.
    pub client_secret: String,
    /// Lifetime of issued tokens. Default 24 h (the platform's default); sub-second values work
    /// (`expires_in` is rounded up to at least 1).
    pub token_ttl: Duration,
    /// Largest accepted API body in bytes; longer → 413. Default 10 240.
    pub max_body_bytes: usize,
    /// `Some(ids)`: a launch of any other flow id → 404. Default `None` (every id is known).
    pub known_flow_ids: Option<Vec<String>>,
    /// The `{token}` of the webhook invocation path. Default `sim-webhook-token`. Never printed.
    pub webhook_token: String,
    /// Faults in force from the start. Default none.
    pub faults: Faults,
    /// Address to listen on. Default `127.0.0.1:0` (a free port).
    pub bind: SocketAddr,
    /// Status for bad client credentials at `/oauth/token`: 401 (default) or 400, as both are seen
    /// from the real platform.
    pub token_error_status: u16,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            token_ttl: Duration::from_secs(24 * 60 * 60),
            max_body_bytes: 10_240,
            known_flow_ids: None,
            webhook_token: "sim-webhook-token".into(),
            faults: Faults::default(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token_error_status: 401,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("token_ttl", &self.token_ttl)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("known_flow_ids", &self.known_flow_ids)
            .field("webhook_token", &"[redacted]")
            .field("faults", &self.faults)
            .field("bind", &self.bind)
            .field("token_error_status", &self.token_error_status)
            .finish()
    }
}

/// A running simulator. Dropping it (or [`Sim::shutdown`]) stops it: the listener closes at once,
/// requests being answered are finished.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Dropping this sender tells the server to stop.
    stop: oneshot::Sender<()>,
    /// The server task; ends when the server has stopped.
    task: JoinHandle<()>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("addr", &self.addr).finish()
    }
}

impl Sim {
    /// How long [`Sim::shutdown`] waits for requests being answered before it stops the server task.
    const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

    /// Binds `cfg.bind` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// The bind error (address in use, permission denied, ...).
    pub async fn start(cfg: SimConfig) -> std::io::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&cfg));
        let app = server::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let signal = async {
                // Resolves on send or when the Sim (holding the sender) is dropped.
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(error = %e, "genesys-sim server stopped with an error");
            }
        });
        tracing::info!(%addr, "genesys-sim listening");
        Ok(Sim {
            shared,
            addr,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (an unspecified bind address is replaced by loopback): use it as
    /// both the login URL and the API URL.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The full webhook invocation URL (a credential: keep it out of logs).
    pub fn webhook_url(&self) -> String {
        let token = self.shared.lock().webhook_token.clone();
        format!(
            "{}/api/v2/integrations/webhooks/{token}/events",
            self.base_url()
        )
    }

    /// Replaces the faults (applies to requests arriving from now on).
    pub fn set_faults(&self, f: Faults) {
        self.shared.lock().faults = f;
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// Changes the faults in place, e.g. `sim.update_faults(|f| f.latency_ms = 200)`.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.lock().faults);
    }

    /// Every API and token call answers 503 for `d` from now.
    pub fn outage_for(&self, d: Duration) {
        self.shared.lock().faults.outage_until = Some(SystemTime::now() + d);
    }

    /// Invalidates every token issued so far: calls with them answer 401.
    pub fn revoke_tokens(&self) {
        self.shared.lock().revoke_tokens();
    }

    /// Rotates the client secret: token requests with the old one get `invalid_client`. Tokens
    /// already issued stay valid.
    pub fn set_client_secret(&self, s: &str) {
        self.shared.lock().client_secret = s.to_owned();
    }

    /// Lifetime of tokens issued from now on (issued tokens keep theirs).
    pub fn set_token_ttl(&self, d: Duration) {
        self.shared.lock().token_ttl = d;
    }

    /// `Some(ids)`: launches of other flow ids answer 404; `None`: every flow id is known.
    pub fn set_known_flow_ids(&self, ids: Option<Vec<String>>) {
        self.shared.lock().known_flow_ids = ids;
    }

    /// Permissions the OAuth client's role lacks from now on (e.g. `architect:flow:view`,
    /// `architect:flow:launch`): a call that needs one answers 403 `missing.any.permissions`
    /// naming it. Empty (the default): every permission is granted.
    pub fn set_denied_permissions(&self, permissions: Vec<String>) {
        self.shared.lock().denied_permissions = permissions;
    }

    /// The request log (bounded, see [`REQUEST_LOG_CAPACITY`]), in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.snapshot()
    }

    /// Accepted launches, events and webhook calls (bounded, see [`ACCEPTED_CAPACITY`]), in the
    /// order they were accepted.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.lock().accepted()
    }

    /// Counters since start.
    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    /// Waits until at least `n` calls were accepted since start (counting ones no longer kept), or
    /// `timeout` passed. Returns whether `n` was reached. Woken by each acceptance; no polling.
    pub async fn wait_for_accepted(&self, n: usize, timeout: Duration) -> bool {
        let target = u64::try_from(n).unwrap_or(u64::MAX);
        let mut accepted = self.shared.subscribe_accepted();
        let reached = tokio::time::timeout(timeout, accepted.wait_for(|total| *total >= target))
            .await
            .is_ok_and(|waited| waited.is_ok());
        reached
    }

    /// Stops the server: closes the listener, lets requests being answered finish (at most
    /// 5 s, then the server task is aborted) and returns when the server is down.
    pub async fn shutdown(self) {
        let Sim { stop, mut task, .. } = self;
        let _ = stop.send(());
        if tokio::time::timeout(Self::SHUTDOWN_DEADLINE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
