//! Dead letters for the operator: list, show, replay, purge.
//!
//! A running agent holds the store's lock, so a second process cannot open it. The same
//! operations therefore exist twice over one implementation: on the [`Wal`] directly (the CLI,
//! agent stopped) and as routes of the admin endpoint (agent running), which the CLI calls
//! through [`Letters::Agent`]. Both answer in the JSON shape of [`crate::export::dead_letter_json`].
//!
//! | route (admin endpoint, loopback only) | body | answer |
//! |---|---|---|
//! | `GET /dead-letters` | | `[dead letter]`, oldest first |
//! | `GET /dead-letters/{id}` | | the dead letter, or 404 |
//! | `POST /dead-letters/replay` | [`ReplayRequest`] | `[`[`ReplayOutcome`]`]` |
//! | `POST /dead-letters/purge` | [`PurgeRequest`] | [`PurgeOutcome`] |
//!
//! The routes are served only when `admin.listen` is a loopback address: the endpoint has no
//! authentication, and these routes show payloads and change the store.

use std::net::SocketAddr;

use alertbridge_wal::{DeadLetter, Wal, WalError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::export::dead_letter_json;
use crate::ingest::DrainFeed;

/// Which dead letters a purge selects; every field left out selects all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Selection {
    /// Only those that became dead letters before this time (unix ms).
    pub before_ms: Option<u64>,
    /// Only this kind (`Rejected`, `Malformed`, … case-insensitive).
    pub kind: Option<String>,
}

impl Selection {
    /// Whether `d` is selected.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.before_ms.is_none_or(|t| d.dead_at_ms < t)
            && self
                .kind
                .as_deref()
                .is_none_or(|k| format!("{:?}", d.reason.kind).eq_ignore_ascii_case(k))
    }
}

/// What to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplayRequest {
    /// These dead-letter ids.
    pub ids: Vec<u64>,
    /// Every dead letter that still has its record (a corrupt one has none).
    pub all: bool,
}

/// What became of one dead letter asked to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOutcome {
    /// The dead-letter id.
    pub id: u64,
    /// Its new pending sequence number, when it was replayed.
    pub seq: Option<u64>,
    /// Why not, when it was not.
    pub error: Option<String>,
}

/// What to purge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeRequest {
    /// Which dead letters.
    #[serde(flatten)]
    pub selection: Selection,
    /// Only count them.
    pub dry_run: bool,
}

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeOutcome {
    /// Dead letters selected (and deleted unless `dry_run`).
    pub count: u64,
    /// False for a dry run.
    pub deleted: bool,
}

/// Every dead letter, oldest first. Stops at the first unreadable one (its error names it).
pub fn list(wal: &Wal) -> Result<Vec<Value>, WalError> {
    wal.dead_letters()
        .map(|d| d.map(|d| dead_letter_json(&d)))
        .collect()
}

/// One dead letter.
pub fn show(wal: &Wal, id: u64) -> Result<Option<Value>, WalError> {
    Ok(wal.get_dead_letter(id)?.map(|d| dead_letter_json(&d)))
}

/// Moves dead letters back to pending (fresh attempt count) and makes that durable; a running
/// agent's drain is told through `feed`, like after an ingest append. One outcome per id.
pub fn replay(
    wal: &Wal,
    req: &ReplayRequest,
    feed: Option<&DrainFeed>,
) -> Result<Vec<ReplayOutcome>, WalError> {
    let targets: Vec<u64> = if req.all {
        wal.dead_letters()
            .filter_map(|d| d.ok())
            .filter(|d| d.record.is_some())
            .map(|d| d.id)
            .collect()
    } else {
        req.ids.clone()
    };
    let mut out = Vec::with_capacity(targets.len());
    for id in targets {
        match wal.replay(id) {
            Ok(key) => {
                if let Some(feed) = feed {
                    // The drain may have stopped (shutting down): the record is pending in the
                    // log either way, and the next start delivers it.
                    let _ = feed.send(key);
                }
                out.push(ReplayOutcome {
                    id,
                    seq: Some(key.seq),
                    error: None,
                });
            }
            Err(e) => out.push(ReplayOutcome {
                id,
                seq: None,
                error: Some(e.to_string()),
            }),
        }
    }
    wal.flush()?;
    Ok(out)
}

/// Deletes the selected dead letters for good (or counts them for a dry run).
pub fn purge(wal: &Wal, req: &PurgeRequest) -> Result<PurgeOutcome, WalError> {
    let count = if req.dry_run {
        wal.dead_letters()
            .filter_map(|d| d.ok())
            .filter(|d| req.selection.matches(d))
            .count() as u64
    } else {
        wal.purge_dead_letters(|d| req.selection.matches(d))?
    };
    Ok(PurgeOutcome {
        count,
        deleted: !req.dry_run,
    })
}

#[derive(Clone)]
struct RouteState {
    wal: Wal,
    feed: DrainFeed,
}

type Answer<T> = Result<Json<T>, (StatusCode, Json<Value>)>;

fn failed(status: StatusCode, message: String) -> (StatusCode, Json<Value>) {
    (status, Json(serde_json::json!({ "error": message })))
}

/// Runs a log call on the blocking pool (an fsync must not hold a runtime worker).
async fn blocking<T: Send + 'static>(
    st: &RouteState,
    f: impl FnOnce(&Wal, &DrainFeed) -> Result<T, WalError> + Send + 'static,
) -> Result<T, (StatusCode, Json<Value>)> {
    let (wal, feed) = (st.wal.clone(), st.feed.clone());
    tokio::task::spawn_blocking(move || f(&wal, &feed))
        .await
        .map_err(|e| failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn route_list(State(st): State<RouteState>) -> Answer<Vec<Value>> {
    blocking(&st, |w, _| list(w)).await.map(Json)
}

async fn route_show(State(st): State<RouteState>, Path(id): Path<u64>) -> Answer<Value> {
    match blocking(&st, move |w, _| show(w, id)).await? {
        Some(d) => Ok(Json(d)),
        None => Err(failed(
            StatusCode::NOT_FOUND,
            format!("no dead letter #{id}"),
        )),
    }
}

async fn route_replay(
    State(st): State<RouteState>,
    Json(req): Json<ReplayRequest>,
) -> Answer<Vec<ReplayOutcome>> {
    blocking(&st, move |w, feed| replay(w, &req, Some(feed)))
        .await
        .map(Json)
}

async fn route_purge(
    State(st): State<RouteState>,
    Json(req): Json<PurgeRequest>,
) -> Answer<PurgeOutcome> {
    blocking(&st, move |w, _| purge(w, &req)).await.map(Json)
}

/// The dead-letter routes of the admin endpoint (see the module doc); empty unless `listen` is
/// a loopback address.
pub(crate) fn routes(listen: SocketAddr, wal: Wal, feed: DrainFeed) -> Router {
    if !listen.ip().is_loopback() {
        return Router::new();
    }
    Router::new()
        .route("/dead-letters", get(route_list))
        .route("/dead-letters/{id}", get(route_show))
        .route("/dead-letters/replay", post(route_replay))
        .route("/dead-letters/purge", post(route_purge))
        .with_state(RouteState { wal, feed })
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LettersError {
    /// The store failed (read, or the durable write of a replay or purge).
    #[error("the dead-letter store")]
    Wal(#[from] WalError),
    /// The running agent's admin endpoint could not be reached or answered garbage.
    #[error("the running agent's admin endpoint at {addr}")]
    Endpoint {
        /// `admin.listen`.
        addr: SocketAddr,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The admin endpoint answered an error.
    #[error("the running agent's admin endpoint at {addr} answered HTTP {status}: {message}")]
    Answer {
        /// `admin.listen`.
        addr: SocketAddr,
        /// Its status.
        status: u16,
        /// Its `error` text.
        message: String,
    },
}

/// A 404 where a dead-letter route should be: the agent serves none (an older release, or a
/// non-loopback `admin.listen`).
fn no_routes(addr: SocketAddr) -> LettersError {
    LettersError::Answer {
        addr,
        status: 404,
        message: "the agent serves no dead-letter routes (they need a loopback admin.listen and \
                  this release): stop the agent to work on the store directly"
            .into(),
    }
}

/// Where the operator's dead-letter commands go.
#[derive(Debug)]
pub enum Letters {
    /// The store itself: the agent is stopped (this process holds the lock).
    Store(Wal),
    /// The running agent, through its admin endpoint on loopback.
    Agent {
        /// `admin.listen`.
        addr: SocketAddr,
        /// A client with a short timeout.
        http: reqwest::Client,
    },
}

impl Letters {
    async fn call<T: serde::de::DeserializeOwned>(
        addr: SocketAddr,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, LettersError> {
        let endpoint = |source| LettersError::Endpoint { addr, source };
        let response = request.send().await.map_err(endpoint)?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return Err(LettersError::Answer {
                addr,
                status: status.as_u16(),
                message: body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
                    .to_owned(),
            });
        }
        response.json().await.map(Some).map_err(endpoint)
    }

    fn url(addr: SocketAddr, path: &str) -> String {
        format!("http://{addr}{path}")
    }

    /// Every dead letter, oldest first.
    pub async fn list(&self) -> Result<Vec<Value>, LettersError> {
        match self {
            // The CLI process has nothing else to do: blocking here holds no one up.
            Letters::Store(wal) => Ok(list(wal)?),
            Letters::Agent { addr, http } => {
                Self::call(*addr, http.get(Self::url(*addr, "/dead-letters")))
                    .await?
                    .ok_or_else(|| no_routes(*addr))
            }
        }
    }

    /// One dead letter, `None` when there is no such id.
    pub async fn show(&self, id: u64) -> Result<Option<Value>, LettersError> {
        match self {
            Letters::Store(wal) => Ok(show(wal, id)?),
            Letters::Agent { addr, http } => {
                Self::call(
                    *addr,
                    http.get(Self::url(*addr, &format!("/dead-letters/{id}"))),
                )
                .await
            }
        }
    }

    /// Replays dead letters (see [`replay`]).
    pub async fn replay(&self, req: &ReplayRequest) -> Result<Vec<ReplayOutcome>, LettersError> {
        match self {
            Letters::Store(wal) => Ok(replay(wal, req, None)?),
            Letters::Agent { addr, http } => Self::call(
                *addr,
                http.post(Self::url(*addr, "/dead-letters/replay"))
                    .json(req),
            )
            .await?
            .ok_or_else(|| no_routes(*addr)),
        }
    }

    /// Purges dead letters (see [`purge`]).
    pub async fn purge(&self, req: &PurgeRequest) -> Result<PurgeOutcome, LettersError> {
        match self {
            Letters::Store(wal) => Ok(purge(wal, req)?),
            Letters::Agent { addr, http } => Self::call(
                *addr,
                http.post(Self::url(*addr, "/dead-letters/purge")).json(req),
            )
            .await?
            .ok_or_else(|| no_routes(*addr)),
        }
    }
}
