//! The local status endpoint (`[admin] listen`, loopback by default): `GET /status` (JSON),
//! `GET /healthz`. `alertbridge status` reads it while the agent runs (the agent locks the store
//! directory, so a second process cannot open the log then) and opens the log itself otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use alertbridge_wal::Wal;
use axum::{extract::State, routing::get, Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::{Counters, Snapshot};
use crate::ingest::now_ms;

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// alertbridge version.
    pub version: String,
    /// `running` (from the endpoint) or `stopped` (read from the log directly).
    pub source: String,
    /// Alerts waiting for delivery.
    pub pending: u64,
    /// Of those, critical.
    pub pending_critical: u64,
    /// Age of the oldest pending alert, seconds.
    pub oldest_pending_age_secs: Option<u64>,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// Bytes of the dead letters stored (bounded by `store.dead_letters_max_bytes`).
    #[serde(default)]
    pub dead_letter_bytes: u64,
    /// Dead letters exported and removed by the dead-letter budget since the agent started.
    #[serde(default)]
    pub dead_letters_exported: u64,
    /// Receipts kept.
    pub delivered_kept: u64,
    /// Log size on disk.
    pub store_bytes: u64,
    /// Bytes of the log's segments (pending alerts): what `store.max_bytes` bounds.
    #[serde(default)]
    pub data_bytes: u64,
    /// Live counters (absent when the agent is stopped).
    pub counters: Option<Snapshot>,
}

/// Build a status from the log (and the live counters when running).
pub fn status_of(
    wal: &Wal,
    counters: Option<&Counters>,
) -> Result<Status, alertbridge_wal::WalError> {
    let s = wal.stats()?;
    let now = now_ms();
    Ok(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        source: if counters.is_some() {
            "running"
        } else {
            "stopped"
        }
        .into(),
        pending: s.pending,
        pending_critical: s.pending_critical,
        oldest_pending_age_secs: s
            .oldest_pending_received_ms
            .map(|t| now.saturating_sub(t) / 1000),
        dead_letters: s.dead_letters,
        dead_letter_bytes: s.dead_bytes,
        dead_letters_exported: wal.dead_letters_evicted(),
        delivered_kept: s.delivered_kept,
        store_bytes: s.size_on_disk,
        data_bytes: s.data_bytes,
        counters: counters.map(Counters::snapshot),
    })
}

#[derive(Clone)]
struct AppState {
    wal: Wal,
    counters: Arc<Counters>,
}

async fn status(
    State(st): State<AppState>,
) -> Result<Json<Status>, (axum::http::StatusCode, String)> {
    let wal = st.wal.clone();
    let counters = st.counters.clone();
    tokio::task::spawn_blocking(move || status_of(&wal, Some(&counters)))
        .await
        .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
        .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Serve until `cancel`. A bind failure is logged, not fatal: delivery matters more than status.
pub(crate) async fn spawn(
    addr: SocketAddr,
    wal: Wal,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "admin.listen: cannot bind the status endpoint; running without it");
            return None;
        }
    };
    tracing::info!(%addr, "status endpoint listening");
    let app = Router::new()
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(AppState { wal, counters });
    Some(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "status endpoint failed");
        }
    }))
}
