//! Building answers in the real shapes: the platform's ErrorBody for `api.<domain>` paths, the OAuth
//! error body for `login.<domain>/oauth/token`, and the `Retry-After` header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::faults::Injected;

/// Name of the header carrying the request's correlation id on every answer.
pub(crate) const CORRELATION_HEADER: &str = "ININ-Correlation-Id";

/// Per-request facts the recording middleware hands to the handlers.
#[derive(Clone, Debug)]
pub(crate) struct RequestContext {
    /// Sent as `ININ-Correlation-Id` and as `contextId` in error bodies.
    pub(crate) correlation_id: String,
}

/// A request the API refuses, before it is rendered as an ErrorBody with the request's context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Rejection {
    /// 400 `bad.request` with `message`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Rejection {
            status: 400,
            code: "bad.request",
            message: message.into(),
        }
    }

    /// `status` with its standard code and message.
    pub(crate) fn standard(status: u16) -> Self {
        let (code, message) = standard_error(status);
        Rejection {
            status,
            code,
            message: message.to_owned(),
        }
    }

    /// The ErrorBody answer.
    pub(crate) fn answer(self, ctx: &RequestContext) -> Response {
        error_body(self.status, self.code, self.message, ctx)
    }
}

/// The standard `code` and `message` for a status, as the platform declares them.
pub(crate) fn standard_error(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("bad.request", "The request could not be understood by the server due to malformed syntax."),
        401 => ("authentication.required", "No authentication bearer token specified in authorization header."),
        403 => ("not.authorized", "You are not authorized to perform the requested action."),
        404 => ("not.found", "The requested resource was not found."),
        408 => ("client.timeout", "The client did not produce a request within the server timeout limit."),
        409 => ("conflict", "The request could not be completed due to a conflict with the current state of the resource."),
        410 => ("architect.flow.deleted", "Flow has been deleted."),
        413 => ("request.entity.too.large", "The request is over the size limit."),
        415 => ("unsupported.media.type", "Unsupported Media Type - Unsupported or incorrect media type, such as an incorrect Content-Type value in the header."),
        422 => ("payload.or.params.invalid", "The payload or parameters are invalid."),
        429 => ("too.many.requests", "Rate limit exceeded the maximum. Retry the request later."),
        500 => ("internal.server.error", "The server encountered an unexpected condition which prevented it from fulfilling the request."),
        502 => ("bad.gateway", "The server, acting as a gateway or proxy, received an invalid response from the upstream server."),
        503 => ("service.unavailable", "Service Unavailable - The server is currently unavailable (because it is overloaded or down for maintenance)."),
        504 => ("request.timeout", "The server, acting as a gateway or proxy, did not receive a timely response from the upstream server."),
        s if s >= 500 => ("internal.server.error", "The server encountered an error."),
        _ => ("bad.request", "The request was rejected."),
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An ErrorBody answer: `{"message","code","status","messageParams","contextId","details","errors"}`.
pub(crate) fn error_body(
    status: u16,
    code: &str,
    message: impl Into<String>,
    ctx: &RequestContext,
) -> Response {
    let body = json!({
        "message": message.into(),
        "code": code,
        "status": status,
        "messageParams": {},
        "contextId": ctx.correlation_id,
        "details": [],
        "errors": [],
    });
    (status_code(status), Json(body)).into_response()
}

/// An ErrorBody answer with the standard code and message of `status`.
pub(crate) fn standard_error_body(status: u16, ctx: &RequestContext) -> Response {
    let (code, message) = standard_error(status);
    error_body(status, code, message, ctx)
}

/// An OAuth error answer: `{"error","description","error_description"}`.
pub(crate) fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    let body = json!({
        "error": error,
        "description": description,
        "error_description": description,
    });
    (status_code(status), Json(body)).into_response()
}

/// Adds `Retry-After: <secs>` when `secs` is given.
pub(crate) fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The answer of an injected fault on an API path.
pub(crate) fn api_fault(injected: Injected, ctx: &RequestContext) -> Response {
    match injected {
        Injected::Outage { retry_after } | Injected::Random503 { retry_after } => {
            with_retry_after(standard_error_body(503, ctx), retry_after)
        }
        Injected::Forced {
            status,
            retry_after,
        } => with_retry_after(standard_error_body(status, ctx), retry_after),
        Injected::Limited { limit } => with_retry_after(limit_body(limit, ctx), Some(1)),
        Injected::RandomRateLimit { retry_after } => {
            let message = match retry_after {
                Some(secs) => format!(
                    "Rate limit exceeded the maximum. Retry the request in [{secs}] seconds"
                ),
                None => standard_error(429).1.to_owned(),
            };
            with_retry_after(
                error_body(429, "too.many.requests", message, ctx),
                retry_after,
            )
        }
    }
}

/// The limiter's 429 with the ErrorBody `limit` object filled in.
fn limit_body(limit: u32, ctx: &RequestContext) -> Response {
    let body = json!({
        "message": format!("Rate limit exceeded the maximum of {limit} requests per second. Retry the request in [1] seconds"),
        "code": "too.many.requests.retry.after",
        "status": 429,
        "messageParams": {},
        "contextId": ctx.correlation_id,
        "details": [],
        "errors": [],
        "limit": {"key": "sim.requests.per.second", "namespace": "genesys-sim", "value": limit},
    });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

/// The answer of an injected fault on the token endpoint.
pub(crate) fn token_fault(injected: Injected) -> Response {
    let (status, retry_after) = match injected {
        Injected::Outage { retry_after } => (503, retry_after),
        Injected::Forced {
            status,
            retry_after,
        } => (status, retry_after),
        // The API-only faults are never decided for the token endpoint; mapped for completeness.
        Injected::Limited { .. } => (429, Some(1)),
        Injected::RandomRateLimit { retry_after } => (429, retry_after),
        Injected::Random503 { retry_after } => (503, retry_after),
    };
    let error = match status {
        503 => "temporarily_unavailable",
        429 => "too_many_requests",
        401 => "invalid_client",
        s if s >= 500 => "server_error",
        _ => "invalid_request",
    };
    with_retry_after(
        oauth_error(status, error, "injected failure (genesys-sim)"),
        retry_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_status_has_its_platform_code() {
        let table = [
            (400, "bad.request"),
            (401, "authentication.required"),
            (404, "not.found"),
            (408, "client.timeout"),
            (410, "architect.flow.deleted"),
            (413, "request.entity.too.large"),
            (415, "unsupported.media.type"),
            (422, "payload.or.params.invalid"),
            (429, "too.many.requests"),
            (500, "internal.server.error"),
            (503, "service.unavailable"),
            (504, "request.timeout"),
        ];
        for (status, code) in table {
            assert_eq!(standard_error(status).0, code, "{status}");
        }
    }
}
