//! The local status endpoint (`[admin] listen`, loopback by default): `GET /status` (JSON),
//! `GET /health` (liveness, alias `/healthz`) and `GET /ready` (readiness), each 200 or 503 with
//! a JSON body `{"ok": bool, "reasons": [...]}` saying why, and `GET /metrics` (Prometheus text
//! format, see `crate::metrics`). `alertbridge status` reads it while the agent runs (the agent locks the store
//! directory, so a second process cannot open the log then) and opens the log itself otherwise.
//! On a loopback address it also serves the dead-letter routes of [`crate::letters`], which
//! `alertbridge dead-letters` uses while the agent runs.

use std::net::SocketAddr;
use std::sync::Arc;

use alertbridge_wal::Wal;
use axum::{extract::State, routing::get, Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::events::{Counters, Snapshot};

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
    /// Delivery receipts waiting in the log to be published to MQTT (`[receipts]`).
    #[serde(default)]
    pub receipts_pending: u64,
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
        receipts_pending: s.outbox_pending,
        store_bytes: s.size_on_disk,
        data_bytes: s.data_bytes,
        counters: counters.map(Counters::snapshot),
    })
}

#[derive(Clone)]
struct AppState {
    wal: Wal,
    counters: Arc<Counters>,
    liveness: Liveness,
    started_ms: u64,
}

/// How long each main loop may go without turning before `/health` says the agent is stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// The drain loop turns at least every `drain::IDLE_WAKE` (5 s).
    pub drain_stale: std::time::Duration,
    /// The MQTT loop turns at every keep-alive ping and after every reconnect attempt.
    pub mqtt_stale: std::time::Duration,
}

impl Liveness {
    /// Limits for a broker keep-alive and the longest reconnect wait.
    pub fn for_mqtt(
        keep_alive: std::time::Duration,
        reconnect_max: std::time::Duration,
    ) -> Liveness {
        Liveness {
            drain_stale: crate::drain::IDLE_WAKE * 6,
            mqtt_stale: keep_alive * 3 + reconnect_max + std::time::Duration::from_secs(30),
        }
    }
}

/// Liveness, pure: why the agent is not alive (a main loop stopped turning); empty when it is.
/// A tick of 0 (the loop has not turned yet) counts from the process start.
pub fn health_problems(
    now_ms: u64,
    started_ms: u64,
    drain_tick_ms: u64,
    mqtt_tick_ms: u64,
    limits: &Liveness,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, tick, limit) in [
        ("drain", drain_tick_ms, limits.drain_stale),
        ("mqtt", mqtt_tick_ms, limits.mqtt_stale),
    ] {
        let since = if tick == 0 { started_ms } else { tick };
        let age = now_ms.saturating_sub(since);
        if age > limit.as_millis() as u64 {
            out.push(format!(
                "the {name} loop has not turned for {} s (limit {} s)",
                age / 1000,
                limit.as_secs()
            ));
        }
    }
    out
}

/// Readiness, pure: why the agent cannot do its job now; empty when it can. Ready = the log is
/// usable, the broker connected, every subscription held at QoS 1, delivery not paused by a
/// configuration fault.
pub fn readiness_problems(s: &Snapshot, log_poisoned: bool) -> Vec<String> {
    let mut out = Vec::new();
    if log_poisoned {
        out.push("the write-ahead log failed (poisoned); the agent is stopping".into());
    }
    if !s.connected {
        out.push("not connected to the MQTT broker".into());
    }
    if !s.subscribed() {
        out.push(format!(
            "subscriptions held {} of {}{}",
            s.subscriptions_held,
            s.subscriptions_wanted,
            s.subscription_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    if s.paused {
        out.push(format!(
            "delivery paused by a configuration fault{}",
            s.pause_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }
    out
}

fn verdict(reasons: Vec<String>) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let ok = reasons.is_empty();
    let code = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "ok": ok, "reasons": reasons })),
    )
}

async fn health(State(st): State<AppState>) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    use std::sync::atomic::Ordering;
    verdict(health_problems(
        now_ms(),
        st.started_ms,
        st.counters.drain_tick_ms.load(Ordering::Relaxed),
        st.counters.mqtt_tick_ms.load(Ordering::Relaxed),
        &st.liveness,
    ))
}

async fn ready(State(st): State<AppState>) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    verdict(readiness_problems(
        &st.counters.snapshot(),
        st.wal.is_poisoned(),
    ))
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

/// `GET /metrics`: the log's stats are read off the async threads (a directory walk); if that
/// read fails the log gauges are left out and the rest is served.
async fn metrics(
    State(st): State<AppState>,
) -> Result<impl axum::response::IntoResponse, (axum::http::StatusCode, String)> {
    let wal = st.wal.clone();
    let counters = st.counters.clone();
    let body = tokio::task::spawn_blocking(move || {
        let stats = wal.stats();
        if let Err(e) = &stats {
            tracing::warn!(error = %e, "/metrics: reading the log's stats failed; log gauges left out");
        }
        crate::metrics::render(&counters, stats.ok().as_ref(), now_ms())
    })
    .await
    .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    ))
}

/// Serve until `cancel`. A bind failure is logged, not fatal: delivery matters more than status.
/// `feed` wakes the drain after a dead letter is replayed through the endpoint
/// ([`crate::letters`]).
pub(crate) async fn spawn(
    addr: SocketAddr,
    wal: Wal,
    counters: Arc<Counters>,
    liveness: Liveness,
    feed: crate::ingest::DrainFeed,
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
        .route("/health", get(health))
        .route("/healthz", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            wal: wal.clone(),
            counters,
            liveness,
            started_ms: now_ms(),
        })
        .merge(crate::letters::routes(addr, wal, feed));
    Some(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "status endpoint failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ready_snapshot() -> Snapshot {
        Snapshot {
            connected: true,
            subscriptions_wanted: 2,
            subscriptions_held: 2,
            ..Snapshot::default()
        }
    }

    #[test]
    fn ready_needs_the_broker_every_subscription_no_pause_and_a_usable_log() {
        assert!(readiness_problems(&ready_snapshot(), false).is_empty());
        let cases: Vec<(Snapshot, bool, &str)> = vec![
            (
                Snapshot {
                    connected: false,
                    ..ready_snapshot()
                },
                false,
                "not connected",
            ),
            (
                Snapshot {
                    subscriptions_held: 1,
                    subscription_error: Some("plant/# refused (0x80)".into()),
                    ..ready_snapshot()
                },
                false,
                "subscriptions held 1 of 2: plant/# refused",
            ),
            (
                Snapshot {
                    paused: true,
                    pause_reason: Some("HTTP 404 flow not found".into()),
                    ..ready_snapshot()
                },
                false,
                "paused by a configuration fault: HTTP 404",
            ),
            (ready_snapshot(), true, "poisoned"),
        ];
        for (snapshot, poisoned, expected) in cases {
            let reasons = readiness_problems(&snapshot, poisoned);
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(
                reasons[0].contains(expected),
                "{reasons:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn health_fails_when_a_main_loop_stops_turning() {
        let limits = Liveness {
            drain_stale: Duration::from_secs(30),
            mqtt_stale: Duration::from_secs(120),
        };
        let start = 1_000_000;
        // Just started, no loop turned yet: alive.
        assert!(health_problems(start + 1_000, start, 0, 0, &limits).is_empty());
        // Both turned recently.
        assert!(health_problems(
            start + 100_000,
            start,
            start + 95_000,
            start + 90_000,
            &limits
        )
        .is_empty());
        // The drain is wedged.
        let r = health_problems(
            start + 100_000,
            start,
            start + 60_000,
            start + 99_000,
            &limits,
        );
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("drain loop has not turned for 40 s"), "{r:?}");
        // The MQTT loop never turned, long after start.
        let r = health_problems(start + 200_000, start, start + 199_000, 0, &limits);
        assert!(r[0].contains("mqtt loop"), "{r:?}");
    }
}
