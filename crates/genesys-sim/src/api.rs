//! Handlers of the simulated Genesys endpoints: `/oauth/token`, flow launch and look-up, events and
//! webhook invocations. Each one applies latency and faults first ([`gate`]), then the checks the
//! real platform makes, then answers in the real shape.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::answer::{self, error_body, standard_error_body, Rejection, RequestContext};
use crate::faults::{decide_api, decide_token};
use crate::ids;
use crate::record::{alert_id_of, Accepted, Endpoint};
use crate::state::{Execution, Shared, TokenRefusal};

/// Waits `latency_ms` as configured when the request arrived.
async fn latency(shared: &Shared) {
    let ms = shared.lock().faults.latency_ms;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Waits `answer_latency_ms` after a call was accepted (and recorded), before its 2xx goes out.
async fn answer_latency(shared: &Shared) {
    let ms = shared.lock().faults.answer_latency_ms;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Whether an API call needs a bearer token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Bearer,
    None,
}

/// Latency, injected faults, then (for [`Auth::Bearer`]) the token check. `Err` is the answer.
async fn gate(
    shared: &Shared,
    ctx: &RequestContext,
    headers: &HeaderMap,
    auth: Auth,
) -> Result<(), Response> {
    latency(shared).await;
    let mut state = shared.lock();
    let state = &mut *state;
    if let Some(injected) = decide_api(
        &state.faults,
        &mut state.limiter,
        SystemTime::now(),
        Instant::now(),
        &mut fastrand::f64,
    ) {
        return Err(answer::api_fault(injected, ctx));
    }
    if auth == Auth::None {
        return Ok(());
    }
    let Some(token) = bearer_token(headers) else {
        return Err(error_body(
            401,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
            ctx,
        ));
    };
    match state.check_token(token, Instant::now()) {
        Ok(()) => Ok(()),
        Err(TokenRefusal::Unknown) => Err(error_body(
            401,
            "authentication.required",
            "Invalid or revoked access token.",
            ctx,
        )),
        Err(TokenRefusal::Expired) => Err(error_body(
            401,
            "credentials.expired",
            "The access token has expired.",
            ctx,
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `client_id` and `client_secret` of an `Authorization: Basic base64(id:secret)` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Whether the `Content-Type` (parameters ignored) is `expected`.
fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// Parses an `application/x-www-form-urlencoded` body into its pairs.
fn form_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Decodes `+` and `%XX` of a form component; `None` on a broken escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `POST /oauth/token`: client credentials grant.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    latency(&shared).await;
    let (client_ok, error_status) = {
        let state = shared.lock();
        if let Some(injected) = decide_token(&state.faults, SystemTime::now()) {
            return answer::token_fault(injected);
        }
        let ok = basic_credentials(&headers)
            .is_some_and(|(id, secret)| id == state.client_id && secret == state.client_secret);
        (ok, state.token_error_status)
    };
    if !client_ok {
        return answer::oauth_error(error_status, "invalid_client", "authentication failed");
    }
    if !content_type_is(&headers, "application/x-www-form-urlencoded") {
        return answer::oauth_error(
            400,
            "invalid_request",
            "the request body must be application/x-www-form-urlencoded",
        );
    }
    let Some(pairs) = form_pairs(&body) else {
        return answer::oauth_error(400, "invalid_request", "malformed form body");
    };
    match pairs.iter().find(|(k, _)| k == "grant_type") {
        None => {
            return answer::oauth_error(400, "invalid_request", "grant_type is required");
        }
        Some((_, grant)) if grant != "client_credentials" => {
            return answer::oauth_error(
                400,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        Some(_) => {}
    }
    let (access_token, expires_in) = shared.lock().issue_token(Instant::now());
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": expires_in,
    }))
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Size, media type and JSON-object checks shared by the JSON endpoints.
fn json_object(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, Rejection> {
    let max = shared.lock().max_body_bytes;
    if body.len() > max {
        return Err(Rejection {
            status: 413,
            code: "request.entity.too.large",
            message: format!("The request is over the size limit. Maximum bytes: {max}"),
        });
    }
    if !content_type_is(headers, "application/json") {
        return Err(Rejection::standard(415));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Rejection::bad_request(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(Rejection::bad_request(format!(
            "Unable to parse the request body as JSON: {e}"
        ))),
    }
}

/// An optional field that must be a string when present and not null.
fn optional_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::bad_request(format!("{field} must be a string."))),
    }
}

/// The checked fields of a flow launch body.
struct LaunchRequest<'a> {
    flow_id: &'a str,
    flow_version: Option<&'a str>,
    name: Option<&'a str>,
    input_data: Option<&'a Value>,
}

/// Checks a flow launch body: `flowId` a non-empty string, `flowVersion` and `name` strings,
/// `inputData` an object (each optional field may be absent or null).
fn launch_request(object: &Map<String, Value>) -> Result<LaunchRequest<'_>, Rejection> {
    let flow_id = match object.get("flowId") {
        Some(Value::String(id)) if !id.is_empty() => id,
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(Rejection::bad_request("flowId is required."))
        }
        Some(_) => return Err(Rejection::bad_request("flowId must be a string.")),
    };
    let input_data = match object.get("inputData") {
        None | Some(Value::Null) => None,
        Some(data @ Value::Object(_)) => Some(data),
        Some(_) => return Err(Rejection::bad_request("inputData must be a JSON object.")),
    };
    Ok(LaunchRequest {
        flow_id,
        flow_version: optional_str(object, "flowVersion")?,
        name: optional_str(object, "name")?,
        input_data,
    })
}

/// Checks an events body: `name` a non-empty string, `data` an object.
fn event_request(object: &Map<String, Value>) -> Result<(), Rejection> {
    match object.get("name") {
        Some(Value::String(name)) if !name.is_empty() => {}
        _ => {
            return Err(Rejection::bad_request(
                "name is required and must be a non-empty string.",
            ))
        }
    }
    if !matches!(object.get("data"), Some(Value::Object(_))) {
        return Err(Rejection::bad_request(
            "data is required and must be a JSON object.",
        ));
    }
    Ok(())
}

/// The common front of the JSON endpoints: the time the request arrived, the gate (auth,
/// injected faults, rate limit) and a JSON object body; `Err` is the answer to send instead.
async fn admit(
    shared: &Arc<Shared>,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &Bytes,
    auth: Auth,
) -> Result<(SystemTime, Map<String, Value>), Response> {
    let arrived = SystemTime::now();
    gate(shared, ctx, headers, auth).await?;
    json_object(shared, headers, body)
        .map(|object| (arrived, object))
        .map_err(|rejection| rejection.answer(ctx))
}

/// `POST /api/v2/flows/executions`: launch a workflow.
pub(crate) async fn launch_flow(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (arrived, object) = match admit(&shared, &ctx, &headers, &body, Auth::Bearer).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let launch = match launch_request(&object) {
        Ok(launch) => launch,
        Err(rejection) => return rejection.answer(&ctx),
    };
    let LaunchRequest {
        flow_id,
        flow_version,
        name,
        input_data,
    } = launch;
    if let Some(denied) = missing_permission(&shared, PERMISSION_FLOW_LAUNCH, &ctx) {
        return denied;
    }
    let known = shared
        .lock()
        .known_flow_ids
        .as_ref()
        .is_none_or(|ids| ids.iter().any(|id| id == flow_id));
    if !known {
        return error_body(
            404,
            "not.found",
            format!("Unable to find a published flow with id {flow_id}."),
            &ctx,
        );
    }
    let execution = Execution {
        id: ids::uuid(),
        name: name
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{flow_id} {}", ids::iso8601(arrived))),
        flow_id: flow_id.to_owned(),
        flow_version: flow_version
            .filter(|v| !v.is_empty())
            .unwrap_or("1.0")
            .to_owned(),
        launched: arrived,
    };
    let alert_id = alert_id_of(input_data);
    let answer = json!({
        "id": execution.id,
        "name": execution.name,
        "flowVersion": flow_version_json(&execution),
        "selfUri": format!("/api/v2/flows/executions/{}", execution.id),
    });
    let accepted = Accepted {
        at: arrived,
        endpoint: Endpoint::FlowExecution,
        id: execution.id.clone(),
        alert_id,
        body: Value::Object(object),
    };
    shared.record_accepted(accepted, Some(execution));
    answer_latency(&shared).await;
    Json(answer).into_response()
}

fn flow_version_json(execution: &Execution) -> Value {
    json!({
        "id": execution.flow_version,
        "name": execution.flow_version,
        "selfUri": format!("/api/v2/flows/{}/versions/{}", execution.flow_id, execution.flow_version),
    })
}

/// The permission a role needs to launch a workflow.
const PERMISSION_FLOW_LAUNCH: &str = "architect:flow:launch";
/// The permission a role needs to read a flow.
const PERMISSION_FLOW_VIEW: &str = "architect:flow:view";

/// A 403 naming `permission` when the simulator was told the OAuth client's role lacks it
/// ([`crate::Sim::set_denied_permissions`]), in the platform's shape.
fn missing_permission(shared: &Shared, permission: &str, ctx: &RequestContext) -> Option<Response> {
    let denied = shared
        .lock()
        .denied_permissions
        .iter()
        .any(|p| p == permission);
    denied.then(|| {
        error_body(
            403,
            "missing.any.permissions",
            format!("You are missing the following permission(s): {permission}"),
            ctx,
        )
    })
}

/// `GET /api/v2/flows/{id}`: a flow the simulator knows (every id when `known_flow_ids` is
/// unset) is a published workflow; another id → 404. Needs `architect:flow:view`.
pub(crate) async fn get_flow(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = gate(&shared, &ctx, &headers, Auth::Bearer).await {
        return answer;
    }
    if let Some(denied) = missing_permission(&shared, PERMISSION_FLOW_VIEW, &ctx) {
        return denied;
    }
    let known = shared
        .lock()
        .known_flow_ids
        .as_ref()
        .is_none_or(|ids| ids.contains(&id));
    if !known {
        return error_body(404, "not.found", format!("Flow {id} not found."), &ctx);
    }
    let version = json!({
        "id": "1.0",
        "name": "1.0",
        "selfUri": format!("/api/v2/flows/{id}/versions/1.0"),
    });
    Json(json!({
        "id": id,
        "name": format!("sim workflow {id}"),
        "type": "WORKFLOW",
        "active": true,
        "system": false,
        "deleted": false,
        "publishedVersion": version,
        "checkedInVersion": version,
        "selfUri": format!("/api/v2/flows/{id}"),
    }))
    .into_response()
}

/// `GET /api/v2/flows/executions/{id}`: a launched execution, always `COMPLETED`.
pub(crate) async fn get_execution(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = gate(&shared, &ctx, &headers, Auth::Bearer).await {
        return answer;
    }
    let Some(execution) = shared.lock().execution(&id) else {
        return error_body(
            404,
            "not.found",
            format!("Flow execution {id} not found."),
            &ctx,
        );
    };
    Json(json!({
        "id": execution.id,
        "name": execution.name,
        "flowVersion": flow_version_json(&execution),
        "flowType": "WORKFLOW",
        "flow": {"id": execution.flow_id, "selfUri": format!("/api/v2/flows/{}", execution.flow_id)},
        "dateLaunched": ids::iso8601(execution.launched),
        "status": "COMPLETED",
        "dateCompleted": ids::iso8601(execution.launched),
        "selfUri": format!("/api/v2/flows/executions/{}", execution.id),
    }))
    .into_response()
}

/// `POST /api/v2/events`: `{"name": string, "data": object}`, bearer token required.
pub(crate) async fn post_event(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (arrived, object) = match admit(&shared, &ctx, &headers, &body, Auth::Bearer).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    if let Err(rejection) = event_request(&object) {
        return rejection.answer(&ctx);
    }
    let answer = accept_invocation(&shared, Endpoint::Events, arrived, object);
    answer_latency(&shared).await;
    answer
}

/// `POST [/platform]/api/v2/integrations/webhooks/{token}/events`: no auth, the path token is the
/// credential; any JSON object is accepted (like the real integration).
pub(crate) async fn post_webhook(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<RequestContext>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = SystemTime::now();
    if let Err(answer) = gate(&shared, &ctx, &headers, Auth::None).await {
        return answer;
    }
    if token != shared.lock().webhook_token {
        return error_body(404, "not.found", "Webhook not found.", &ctx);
    }
    let object = match json_object(&shared, &headers, &body) {
        Ok(object) => object,
        Err(rejection) => return rejection.answer(&ctx),
    };
    let answer = accept_invocation(&shared, Endpoint::Webhook, arrived, object);
    answer_latency(&shared).await;
    answer
}

fn accept_invocation(
    shared: &Shared,
    endpoint: Endpoint,
    arrived: SystemTime,
    object: Map<String, Value>,
) -> Response {
    let invocation_id = ids::uuid();
    let accepted = Accepted {
        at: arrived,
        endpoint,
        id: invocation_id.clone(),
        alert_id: alert_id_of(object.get("data")),
        body: Value::Object(object),
    };
    shared.record_accepted(accepted, None);
    Json(json!({ "invocationId": invocation_id })).into_response()
}

/// Any other path: 404 `not.found`.
pub(crate) async fn not_found(Extension(ctx): Extension<RequestContext>) -> Response {
    standard_error_body(404, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                name.clone(),
                HeaderValue::from_str(value).expect("test header"),
            );
        }
        map
    }

    #[test]
    fn basic_credentials_decode_id_and_secret() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("id:se:cret");
        let h = headers(&[(header::AUTHORIZATION, &format!("Basic {encoded}"))]);
        assert_eq!(basic_credentials(&h), Some(("id".into(), "se:cret".into())));
        let h = headers(&[(header::AUTHORIZATION, "Bearer abc")]);
        assert_eq!(basic_credentials(&h), None);
        let h = headers(&[(header::AUTHORIZATION, "Basic !!!")]);
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn bearer_token_needs_the_scheme_and_a_value() {
        let h = headers(&[(header::AUTHORIZATION, "Bearer abc")]);
        assert_eq!(bearer_token(&h), Some("abc"));
        let h = headers(&[(header::AUTHORIZATION, "bearer   abc ")]);
        assert_eq!(bearer_token(&h), Some("abc"));
        let h = headers(&[(header::AUTHORIZATION, "Bearer ")]);
        assert_eq!(bearer_token(&h), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn form_body_decodes_escapes_and_rejects_broken_ones() {
        assert_eq!(
            form_pairs(b"grant_type=client_credentials&x=a%20b+c"),
            Some(vec![
                ("grant_type".into(), "client_credentials".into()),
                ("x".into(), "a b c".into())
            ])
        );
        assert_eq!(form_pairs(b"x=%zz"), None);
        assert_eq!(form_pairs(b"x=%2"), None);
        assert_eq!(form_pairs(b""), Some(vec![]));
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test body must be an object, got {other}"),
        }
    }

    #[test]
    fn launch_bodies_are_checked_field_by_field() {
        let table = [
            (json!({"flowId": "f"}), true),
            (
                json!({"flowId": "f", "flowVersion": null, "name": null, "inputData": null}),
                true,
            ),
            (
                json!({"flowId": "f", "flowVersion": "2.0", "name": "n", "inputData": {"a": 1}}),
                true,
            ),
            (json!({}), false),
            (json!({"flowId": ""}), false),
            (json!({"flowId": null}), false),
            (json!({"flowId": ["f"]}), false),
            (json!({"flowId": "f", "inputData": "x"}), false),
            (json!({"flowId": "f", "flowVersion": 1}), false),
            (json!({"flowId": "f", "name": {}}), false),
        ];
        for (body, ok) in table {
            let map = object(body.clone());
            let got = launch_request(&map);
            assert_eq!(got.is_ok(), ok, "{body}");
            if let Err(rejection) = got {
                assert_eq!((rejection.status, rejection.code), (400, "bad.request"));
            }
        }
    }

    #[test]
    fn event_bodies_need_a_name_and_a_data_object() {
        let table = [
            (json!({"name": "n", "data": {}}), true),
            (json!({"name": "n"}), false),
            (json!({"name": "", "data": {}}), false),
            (json!({"name": "n", "data": [1]}), false),
            (json!({"data": {}}), false),
        ];
        for (body, ok) in table {
            assert_eq!(event_request(&object(body.clone())).is_ok(), ok, "{body}");
        }
    }

    #[test]
    fn content_type_ignores_parameters_and_case() {
        let h = headers(&[(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")]);
        assert!(content_type_is(&h, "application/json"));
        assert!(!content_type_is(&HeaderMap::new(), "application/json"));
    }
}
