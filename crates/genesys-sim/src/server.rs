//! The HTTP side: routes, the recording middleware every request passes through, and the `/sim/*`
//! admin endpoints.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::answer::{error_body, RequestContext, CORRELATION_HEADER};
use crate::api;
use crate::faults::Faults;
use crate::ids;
use crate::record::{prefix6, redact_path, Endpoint, LoggedRequest};
use crate::state::Shared;

/// Bodies are read whole up to this size (or `max_body_bytes + 1` if larger); a longer body is
/// answered 413 without being read further. The API checks its own, smaller `max_body_bytes`
/// afterwards, so axum's default 2 MB limit never answers first.
const BODY_READ_CAP: usize = 16 * 1024 * 1024;

/// All routes, with the recording middleware around them.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let webhook = "/api/v2/integrations/webhooks/{token}/events";
    Router::new()
        .route("/oauth/token", post(api::token))
        .route("/api/v2/flows/executions", post(api::launch_flow))
        .route("/api/v2/flows/executions/{id}", get(api::get_execution))
        .route("/api/v2/flows/{id}", get(api::get_flow))
        .route("/api/v2/events", post(api::post_event))
        .route(webhook, post(api::post_webhook))
        .route(&format!("/platform{webhook}"), post(api::post_webhook))
        .route("/sim/stats", get(admin_stats))
        .route("/sim/accepted", get(admin_accepted))
        .route("/sim/requests", get(admin_requests))
        .route("/sim/faults", get(admin_get_faults).put(admin_put_faults))
        .route("/sim/outage", post(admin_outage))
        .route("/sim/revoke", post(admin_revoke))
        .route("/sim/secret", put(admin_secret))
        .route("/sim/token-ttl", put(admin_token_ttl))
        .route("/sim/known-flow-ids", put(admin_known_flow_ids))
        .route("/sim/denied-permissions", put(admin_denied_permissions))
        .fallback(api::not_found)
        // The middleware below reads the body under its own cap.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

fn is_admin(path: &str) -> bool {
    path == "/sim" || path.starts_with("/sim/")
}

/// Gives each request its correlation id, logs it at arrival (except `/sim/*`), reads its body,
/// runs the handler, then stamps `ININ-Correlation-Id` on the answer and completes the log entry.
async fn record(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let ctx = RequestContext {
        correlation_id: ids::uuid(),
    };
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let endpoint = Endpoint::of_path(&path);
    let logged = !is_admin(&path);
    let (seq, cap) = {
        let mut state = shared.lock();
        let cap = BODY_READ_CAP.max(state.max_body_bytes.saturating_add(1));
        let seq = logged.then(|| {
            state.log_arrival(LoggedRequest {
                at: SystemTime::now(),
                method: method.to_string(),
                path: redact_path(&path),
                endpoint,
                status: 0,
                token_prefix: api::bearer_token(&parts.headers).map(prefix6),
                body_len: 0,
                retry_after: None,
                correlation_id: ctx.correlation_id.clone(),
            })
        });
        (seq, cap)
    };

    let (body_len, response) = match to_bytes(body, cap).await {
        Ok(bytes) => {
            let len = bytes.len();
            parts.extensions.insert(ctx.clone());
            let request = Request::from_parts(parts, Body::from(bytes));
            (len, next.run(request).await)
        }
        Err(_) => {
            // Over the read cap (or the client broke off): answer without reading on.
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(cap);
            let answer = error_body(
                413,
                "request.entity.too.large",
                format!("The request is over the size limit. Maximum bytes: {cap}"),
                &ctx,
            );
            (declared, answer)
        }
    };
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&ctx.correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    if let Some(seq) = seq {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        {
            let mut state = shared.lock();
            if let Some(entry) = state.log.get_mut(seq) {
                entry.body_len = body_len;
            }
            state.log_answer(seq, status, retry_after);
        }
        tracing::debug!(
            %method,
            path = %redact_path(&path),
            ?endpoint,
            status,
            correlation_id = %ctx.correlation_id,
            "genesys-sim answered"
        );
    }
    response
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().stats.clone()).into_response()
}

async fn admin_accepted(State(shared): State<Arc<Shared>>) -> Response {
    let accepted = shared.lock().accepted();
    Json(accepted).into_response()
}

async fn admin_requests(State(shared): State<Arc<Shared>>) -> Response {
    let requests = shared.lock().log.snapshot();
    Json(requests).into_response()
}

async fn admin_get_faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().faults.clone()).into_response()
}

fn admin_bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn admin_put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            shared.lock().faults = faults.clone();
            Json(faults).into_response()
        }
        Err(e) => admin_bad_request(format!("invalid faults JSON: {e}")),
    }
}

/// Parses a text body holding a non-negative number of seconds (fractions allowed).
fn seconds_body(body: &[u8]) -> Option<Duration> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

fn seconds_expected() -> Response {
    admin_bad_request("body must be a number of seconds, e.g. 30".into())
}

async fn admin_outage(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match seconds_body(&body) {
        Some(d) => {
            let mut state = shared.lock();
            state.faults.outage_until = Some(SystemTime::now() + d);
            Json(state.faults.clone()).into_response()
        }
        None => seconds_expected(),
    }
}

async fn admin_revoke(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.lock().revoke_tokens();
    StatusCode::NO_CONTENT
}

async fn admin_secret(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match std::str::from_utf8(&body).map(str::trim) {
        Ok(secret) if !secret.is_empty() => {
            shared.lock().client_secret = secret.to_owned();
            StatusCode::NO_CONTENT.into_response()
        }
        _ => admin_bad_request("body must be the new client secret (UTF-8 text)".into()),
    }
}

async fn admin_token_ttl(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match seconds_body(&body) {
        Some(d) => {
            shared.lock().token_ttl = d;
            StatusCode::NO_CONTENT.into_response()
        }
        None => seconds_expected(),
    }
}

async fn admin_known_flow_ids(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Option<Vec<String>>>(&body) {
        Ok(ids) => {
            shared.lock().known_flow_ids = ids;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_bad_request(format!(
            "body must be a JSON array of flow ids or null: {e}"
        )),
    }
}

async fn admin_denied_permissions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(permissions) => {
            shared.lock().denied_permissions = permissions;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_bad_request(format!(
            "body must be a JSON array of permissions, e.g. [\"architect:flow:view\"]: {e}"
        )),
    }
}
