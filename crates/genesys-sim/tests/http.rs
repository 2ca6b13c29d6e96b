//! genesys-sim over real HTTP on 127.0.0.1 with a plain reqwest client: the shapes a Genesys client
//! sees, token life cycle, fault injection, logs, admin endpoints and shutdown.

use std::time::{Duration, Instant};

use base64::Engine as _;
use genesys_sim::{Endpoint, Faults, Sim, SimConfig};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

const FORM: &str = "application/x-www-form-urlencoded";

/// A plain-HTTP reqwest client. reqwest is built with `rustls-no-provider` and panics on `build()`
/// until a crypto provider is installed, even for `http://` URLs.
fn http_client() -> reqwest::Client {
    // Err only means another test installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("plain http client builds")
}

/// A tiny Genesys client for the tests.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(sim: &Sim) -> Self {
        Client {
            http: http_client(),
            base: sim.base_url(),
        }
    }

    async fn token_request(
        &self,
        id: &str,
        secret: &str,
        content_type: &str,
        body: &str,
    ) -> reqwest::Response {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        self.http
            .post(format!("{}/oauth/token", self.base))
            .header(AUTHORIZATION, format!("Basic {basic}"))
            .header(CONTENT_TYPE, content_type)
            .body(body.to_owned())
            .send()
            .await
            .expect("token request is answered")
    }

    async fn token_with(&self, secret: &str) -> reqwest::Response {
        self.token_request("sim-client", secret, FORM, "grant_type=client_credentials")
            .await
    }

    /// A fresh token with the default credentials.
    async fn token(&self) -> String {
        self.token_for("sim-secret").await
    }

    /// A fresh token with the default client id and `secret`.
    async fn token_for(&self, secret: &str) -> String {
        let response = self.token_with(secret).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("token json");
        body["access_token"]
            .as_str()
            .expect("access_token is a string")
            .to_owned()
    }

    async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, content_type)
            .body(body);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request.send().await.expect("request is answered")
    }

    async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        self.post_raw(path, token, "application/json", body.to_string())
            .await
    }

    async fn launch(&self, token: &str, body: &Value) -> reqwest::Response {
        self.post_json("/api/v2/flows/executions", Some(token), body)
            .await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request.send().await.expect("request is answered")
    }
}

fn flow_body() -> Value {
    json!({"flowId": "flow-1", "inputData": {"alertId": "a-1", "deviceId": "d-7"}, "name": "alert a-1"})
}

async fn start(cfg: SimConfig) -> (Sim, Client) {
    let sim = Sim::start(cfg).await.expect("sim starts");
    let client = Client::new(&sim);
    (sim, client)
}

fn correlation_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("ININ-Correlation-Id")
        .expect("every answer carries ININ-Correlation-Id")
        .to_str()
        .expect("ascii header")
        .to_owned()
}

/// Status, `code` and `contextId` (checked against the header) of an ErrorBody answer.
async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let header = correlation_id(&response);
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["status"], json!(status.as_u16()), "body {body}");
    assert_eq!(
        body["contextId"],
        json!(header),
        "contextId matches the header"
    );
    assert!(body["message"].is_string(), "body {body}");
    (status, body["code"].as_str().expect("code").to_owned())
}

async fn oauth_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("oauth error is JSON");
    assert!(body["error_description"].is_string(), "body {body}");
    (status, body["error"].as_str().expect("error").to_owned())
}

// ---- token endpoint ------------------------------------------------------------------------

#[tokio::test]
async fn token_happy_path_issues_a_bearer_token_with_expires_in() {
    let (_sim, client) = start(SimConfig::default()).await;
    let response = client.token_with("sim-secret").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], json!(86_400));
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() >= 32));
    assert!(body.get("refresh_token").is_none());
}

#[tokio::test]
async fn token_with_wrong_secret_is_invalid_client() {
    let (_sim, client) = start(SimConfig::default()).await;
    let response = client.token_with("wrong").await;
    let body: Value = {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        response.json().await.expect("json")
    };
    assert_eq!(
        body,
        json!({"error":"invalid_client","description":"authentication failed","error_description":"authentication failed"})
    );
}

#[tokio::test]
async fn token_error_status_can_be_400() {
    let (_sim, client) = start(SimConfig {
        token_error_status: 400,
        ..SimConfig::default()
    })
    .await;
    let (status, error) = oauth_error(client.token_with("wrong").await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_client")
    );
}

#[tokio::test]
async fn token_request_without_basic_credentials_is_invalid_client() {
    let (_sim, client) = start(SimConfig::default()).await;
    let response = client
        .http
        .post(format!("{}/oauth/token", client.base))
        .header(CONTENT_TYPE, FORM)
        .body("grant_type=client_credentials&client_id=sim-client&client_secret=sim-secret")
        .send()
        .await
        .expect("answered");
    let (status, error) = oauth_error(response).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
}

#[tokio::test]
async fn token_request_with_json_body_or_wrong_grant_is_rejected() {
    let (sim, client) = start(SimConfig::default()).await;
    let table = [
        (
            "application/json",
            r#"{"grant_type":"client_credentials"}"#,
            "invalid_request",
        ),
        (FORM, "", "invalid_request"),
        (FORM, "scope=x", "invalid_request"),
        (FORM, "grant_type=password", "unsupported_grant_type"),
    ];
    for (content_type, body, want) in table {
        let response = client
            .token_request("sim-client", "sim-secret", content_type, body)
            .await;
        let (status, error) = oauth_error(response).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::BAD_REQUEST, want),
            "{body}"
        );
    }
    assert_eq!(sim.stats().tokens_issued, 0);
    assert_eq!(sim.stats().token_requests, 4);
}

#[tokio::test]
async fn token_expires_after_its_ttl() {
    let (_sim, client) = start(SimConfig {
        token_ttl: Duration::from_millis(400),
        ..SimConfig::default()
    })
    .await;
    let response = client.token_with("sim-secret").await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["expires_in"],
        json!(1),
        "sub-second ttl rounds up to 1 s"
    );
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );

    // Waiting for the clock is the behaviour under test here, not synchronisation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, code) = error_code(client.launch(&token, &flow_body()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "credentials.expired")
    );
}

#[tokio::test]
async fn revoked_tokens_answer_401_and_a_new_token_works() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
    sim.revoke_tokens();
    let (status, code) = error_code(client.launch(&token, &flow_body()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "authentication.required")
    );
    let fresh = client.token().await;
    assert_eq!(
        client.launch(&fresh, &flow_body()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn rotated_secret_refuses_the_old_one_and_keeps_issued_tokens() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.set_client_secret("rotated");
    let (status, error) = oauth_error(client.token_with("sim-secret").await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    assert_eq!(client.token_with("rotated").await.status(), StatusCode::OK);
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn token_ttl_change_applies_to_new_tokens() {
    let (sim, client) = start(SimConfig::default()).await;
    sim.set_token_ttl(Duration::from_secs(300));
    let body: Value = client
        .token_with("sim-secret")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["expires_in"], json!(300));
}

// ---- flow executions -----------------------------------------------------------------------

#[tokio::test]
async fn flow_execution_answers_the_real_shape_and_is_recorded() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let response = client.launch(&token, &flow_body()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let correlation = correlation_id(&response);
    assert!(!correlation.is_empty());
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("execution id").to_owned();
    assert_eq!(id.len(), 36, "uuid-like id {id}");
    assert_eq!(body["name"], "alert a-1");
    assert_eq!(body["flowVersion"]["id"], "1.0");
    assert_eq!(body["flowVersion"]["name"], "1.0");
    assert!(body["flowVersion"]["selfUri"].is_string());
    assert_eq!(
        body["selfUri"],
        json!(format!("/api/v2/flows/executions/{id}"))
    );

    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].endpoint, Endpoint::FlowExecution);
    assert_eq!(accepted[0].id, id);
    assert_eq!(accepted[0].alert_id.as_deref(), Some("a-1"));
    assert_eq!(accepted[0].body, flow_body());

    let launch = sim
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::FlowExecution)
        .expect("launch is logged");
    assert_eq!(launch.status, 200);
    assert_eq!(launch.correlation_id, correlation);
    assert_eq!(launch.token_prefix.as_deref(), Some(&token[..6]));
    assert_eq!(launch.body_len, flow_body().to_string().len());

    let status = client
        .get(&format!("/api/v2/flows/executions/{id}"), Some(&token))
        .await;
    assert_eq!(status.status(), StatusCode::OK);
    let status: Value = status.json().await.expect("json");
    assert_eq!(status["status"], "COMPLETED");
    assert_eq!(status["id"], json!(id));
    let (code, _) = error_code(
        client
            .get("/api/v2/flows/executions/nope", Some(&token))
            .await,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn flow_execution_uses_the_given_flow_version() {
    let (_sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let body: Value = client
        .launch(&token, &json!({"flowId": "f", "flowVersion": "3.0"}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["flowVersion"]["id"], "3.0");
}

#[tokio::test]
async fn flow_execution_without_a_token_is_401_authentication_required() {
    let (_sim, client) = start(SimConfig::default()).await;
    let response = client
        .post_json("/api/v2/flows/executions", None, &flow_body())
        .await;
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "authentication.required")
    );
    let (status, _) = error_code(client.launch("made-up-token", &flow_body()).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_flow_bodies_are_400_bad_request() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let bodies = [
        "{not json".to_owned(),
        "[1,2]".to_owned(),
        json!({"inputData": {}}).to_string(),
        json!({"flowId": ""}).to_string(),
        json!({"flowId": 7}).to_string(),
        json!({"flowId": "f", "inputData": "x"}).to_string(),
        json!({"flowId": "f", "inputData": [1]}).to_string(),
        json!({"flowId": "f", "flowVersion": 2}).to_string(),
    ];
    for body in bodies {
        let response = client
            .post_raw(
                "/api/v2/flows/executions",
                Some(&token),
                "application/json",
                body.clone(),
            )
            .await;
        let (status, code) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "bad.request"),
            "{body}"
        );
    }
    assert!(sim.accepted().is_empty());
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let filler = "x".repeat(10_240);
    let body = json!({"flowId": "f", "inputData": {"blob": filler}});
    let (status, code) = error_code(client.launch(&token, &body).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "request.entity.too.large")
    );

    // Exactly at the limit is accepted.
    let mut at_limit = json!({"flowId": "f", "inputData": {"blob": ""}}).to_string();
    at_limit.insert_str(at_limit.len() - 3, &"y".repeat(10_240 - at_limit.len()));
    assert_eq!(at_limit.len(), 10_240);
    let response = client
        .post_raw(
            "/api/v2/flows/executions",
            Some(&token),
            "application/json",
            at_limit,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sim.accepted().len(), 1);
}

#[tokio::test]
async fn body_larger_than_axum_default_limit_still_gets_the_platform_413() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let big = vec![b'x'; 3 * 1024 * 1024];
    let response = client
        .post_raw(
            "/api/v2/flows/executions",
            Some(&token),
            "application/json",
            big,
        )
        .await;
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "request.entity.too.large")
    );
    let logged = sim.requests().pop().expect("logged");
    assert_eq!(logged.body_len, 3 * 1024 * 1024);
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let (_sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let response = client
        .post_raw(
            "/api/v2/flows/executions",
            Some(&token),
            "text/plain",
            flow_body().to_string(),
        )
        .await;
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported.media.type")
    );
}

#[tokio::test]
async fn unknown_flow_is_404_when_known_flow_ids_are_set() {
    let (sim, client) = start(SimConfig {
        known_flow_ids: Some(vec!["flow-1".into()]),
        ..SimConfig::default()
    })
    .await;
    let token = client.token().await;
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
    let other = json!({"flowId": "flow-2"});
    let (status, code) = error_code(client.launch(&token, &other).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not.found")
    );
    sim.set_known_flow_ids(None);
    assert_eq!(client.launch(&token, &other).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_known_flow_reads_as_a_published_workflow_and_another_id_is_404() {
    let (_sim, client) = start(SimConfig {
        known_flow_ids: Some(vec!["flow-1".into()]),
        ..SimConfig::default()
    })
    .await;
    let token = client.token().await;
    let response = client.get("/api/v2/flows/flow-1", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let flow: Value = response.json().await.expect("json");
    assert_eq!(flow["id"], "flow-1");
    assert_eq!(flow["type"], "WORKFLOW");
    assert!(flow["publishedVersion"]["id"].is_string(), "{flow}");
    let (status, code) = error_code(client.get("/api/v2/flows/flow-2", Some(&token)).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not.found")
    );
    let (status, _) = error_code(client.get("/api/v2/flows/flow-1", None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_denied_permission_answers_403_naming_it() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.set_denied_permissions(vec!["architect:flow:view".into()]);
    let response = client.get("/api/v2/flows/flow-1", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("architect:flow:view")),
        "{body}"
    );
    // Launching needs another permission, still granted.
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
    sim.set_denied_permissions(vec!["architect:flow:launch".into()]);
    let (status, code) = error_code(client.launch(&token, &flow_body()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "missing.any.permissions")
    );
}

// ---- events and webhooks -------------------------------------------------------------------

#[tokio::test]
async fn events_need_a_token_and_a_name_and_data_object() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let event = json!({"name": "iot.device.alert", "data": {"alert_id": "a-9"}});
    let response = client
        .post_json("/api/v2/events", Some(&token), &event)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert!(body["invocationId"].is_string());

    let (status, _) = error_code(client.post_json("/api/v2/events", None, &event).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"name": "x"}),
        json!({"name": "x", "data": 1}),
        json!({"data": {}}),
    ] {
        let (status, _) =
            error_code(client.post_json("/api/v2/events", Some(&token), &bad).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].endpoint, Endpoint::Events);
    assert_eq!(accepted[0].alert_id.as_deref(), Some("a-9"));
    assert_eq!(accepted[0].id, body["invocationId"].as_str().expect("id"));
}

#[tokio::test]
async fn webhook_needs_no_auth_and_the_right_path_token() {
    let (sim, client) = start(SimConfig {
        webhook_token: "0123456789abcdef".into(),
        ..SimConfig::default()
    })
    .await;
    let event = json!({"name": "iot.device.alert", "data": {"alertId": "w-1"}});
    for prefix in ["", "/platform"] {
        let path = format!("{prefix}/api/v2/integrations/webhooks/0123456789abcdef/events");
        let response = client.post_json(&path, None, &event).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.expect("json");
        assert!(body["invocationId"].is_string());
    }
    assert_eq!(
        sim.webhook_url(),
        format!(
            "{}/api/v2/integrations/webhooks/0123456789abcdef/events",
            sim.base_url()
        )
    );
    let response = client
        .post_json("/api/v2/integrations/webhooks/wrong/events", None, &event)
        .await;
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not.found")
    );

    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 2);
    assert!(accepted.iter().all(|a| a.endpoint == Endpoint::Webhook));
    assert_eq!(accepted[0].alert_id.as_deref(), Some("w-1"));
    for logged in sim.requests() {
        assert!(
            !logged.path.contains("0123456789abcdef"),
            "webhook token is redacted in {}",
            logged.path
        );
    }
}

// ---- faults --------------------------------------------------------------------------------

#[tokio::test]
async fn error_rate_503_of_one_fails_every_api_call_but_not_the_token() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.update_faults(|f| {
        f.error_rate_503 = 1.0;
        f.retry_after_secs = Some(4);
    });
    for _ in 0..3 {
        let response = client.launch(&token, &flow_body()).await;
        assert_eq!(response.headers()[RETRY_AFTER], "4");
        let (status, code) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "service.unavailable")
        );
    }
    assert_eq!(
        client.token_with("sim-secret").await.status(),
        StatusCode::OK
    );
    assert!(sim.accepted().is_empty());
    assert_eq!(sim.stats().by_status.get(&503), Some(&3));
}

#[tokio::test]
async fn outage_window_fails_token_and_api_calls_until_it_ends() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.outage_for(Duration::from_millis(400));
    let (status, code) = error_code(client.launch(&token, &flow_body()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "service.unavailable")
    );
    let (status, error) = oauth_error(client.token_with("sim-secret").await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
    );

    // The window ending is the behaviour under test: wait for the clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        client.token_with("sim-secret").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn rate_limit_429_carries_retry_after() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.set_faults(Faults {
        rate_limit_429: 1.0,
        retry_after_secs: Some(7),
        ..Faults::default()
    });
    let response = client.launch(&token, &flow_body()).await;
    assert_eq!(response.headers()[RETRY_AFTER], "7");
    let (status, code) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too.many.requests")
    );
    let logged = sim.requests().pop().expect("logged");
    assert_eq!((logged.status, logged.retry_after), (429, Some(7)));
}

#[tokio::test]
async fn force_status_403_answers_every_api_call() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.update_faults(|f| f.force_status = Some(403));
    let (status, code) = error_code(client.launch(&token, &flow_body()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "not.authorized")
    );
    let event = json!({"name": "n", "data": {}});
    let (status, _) = error_code(
        client
            .post_json("/api/v2/events", Some(&token), &event)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    sim.update_faults(|f| f.force_status = Some(502));
    let (status, code) = error_code(client.launch(&token, &flow_body()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_GATEWAY, "bad.gateway")
    );
}

#[tokio::test]
async fn token_failure_answers_the_token_endpoint() {
    let (sim, client) = start(SimConfig::default()).await;
    sim.update_faults(|f| f.token_failure = Some(500));
    let (status, error) = oauth_error(client.token_with("sim-secret").await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    );
    assert_eq!(sim.stats().tokens_issued, 0);
}

#[tokio::test]
async fn max_requests_per_sec_refuses_the_excess_with_retry_after_1() {
    let (sim, client) = start(SimConfig {
        faults: Faults {
            max_requests_per_sec: Some(2),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let token = client.token().await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let response = client.launch(&token, &flow_body()).await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            assert_eq!(response.headers()[RETRY_AFTER], "1");
            let body: Value = response.json().await.expect("json");
            limited = Some(body);
        }
    }
    // The window is empty at first, so the first two are always admitted.
    assert_eq!(&statuses[..2], &[StatusCode::OK, StatusCode::OK]);
    let body = limited.expect("six calls in a row exceed 2 per second");
    assert_eq!(body["code"], "too.many.requests.retry.after");
    assert_eq!(body["limit"]["value"], json!(2));
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(sim.stats().accepted, ok as u64);
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    sim.update_faults(|f| f.latency_ms = 150);
    let started = Instant::now();
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
}

// ---- waiting, logs, admin, lifecycle ---------------------------------------------------------

#[tokio::test]
async fn wait_for_accepted_wakes_when_calls_are_accepted() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let sender = tokio::spawn(async move {
        for _ in 0..3 {
            assert_eq!(
                client.launch(&token, &flow_body()).await.status(),
                StatusCode::OK
            );
        }
    });
    assert!(sim.wait_for_accepted(3, Duration::from_secs(10)).await);
    sender.await.expect("sender task");
    assert!(!sim.wait_for_accepted(4, Duration::from_millis(50)).await);
    assert!(sim.wait_for_accepted(0, Duration::ZERO).await);
}

#[tokio::test]
async fn every_answer_carries_a_correlation_id_even_unknown_paths_and_methods() {
    let (sim, client) = start(SimConfig::default()).await;
    let (status, code) = error_code(client.get("/api/v2/nothing", None).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not.found")
    );
    let response = client.get("/api/v2/flows/executions", None).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    correlation_id(&response);
    let response = client.get("/sim/stats", None).await;
    correlation_id(&response);
    let logged: Vec<_> = sim
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        logged,
        vec![
            ("/api/v2/nothing".to_owned(), 404),
            ("/api/v2/flows/executions".to_owned(), 405),
        ],
        "admin calls are not logged"
    );
}

#[tokio::test]
async fn stats_count_tokens_api_calls_and_statuses() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    client.launch(&token, &flow_body()).await;
    client.launch("bogus", &flow_body()).await;
    client.token_with("wrong").await;
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 2);
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.api_requests, 2);
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.by_status.get(&200), Some(&2));
    assert_eq!(stats.by_status.get(&401), Some(&2));
}

#[tokio::test]
async fn admin_endpoints_change_faults_secret_and_tokens() {
    let (sim, client) = start(SimConfig::default()).await;
    let token = client.token().await;
    let put = |path: &str, body: String| {
        client
            .http
            .put(format!("{}{path}", client.base))
            .body(body)
            .send()
    };

    let response = put("/sim/faults", r#"{"force_status": 500}"#.into())
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sim.faults().force_status, Some(500));
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let response = put("/sim/faults", "{}".into()).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sim.faults(), Faults::default());
    let response = put("/sim/faults", "{nope".into()).await.expect("answered");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::OK
    );
    let response = client.post_raw("/sim/revoke", None, "text/plain", "").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let response = put("/sim/secret", "new-secret".into())
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        client.token_with("sim-secret").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.token_with("new-secret").await.status(),
        StatusCode::OK
    );

    let response = put("/sim/known-flow-ids", r#"["only"]"#.into())
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let token = client.token_for("new-secret").await;
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::NOT_FOUND
    );

    let response = client
        .post_raw("/sim/outage", None, "text/plain", "60")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        client.launch(&token, &flow_body()).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let stats: Value = client
        .get("/sim/stats", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(stats["accepted"], json!(1));
    let accepted: Value = client
        .get("/sim/accepted", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(accepted.as_array().map(Vec::len), Some(1));
    assert_eq!(accepted[0]["alert_id"], "a-1");
    let requests: Value = client
        .get("/sim/requests", None)
        .await
        .json()
        .await
        .expect("json");
    let paths: Vec<_> = requests
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["path"].as_str().expect("path"))
        .collect();
    assert!(paths.iter().all(|p| !p.starts_with("/sim")), "{paths:?}");
}

#[tokio::test]
async fn shutdown_closes_the_port_and_a_new_sim_can_take_it() {
    let (sim, client) = start(SimConfig::default()).await;
    let addr = sim.addr();
    client.token().await;
    sim.shutdown().await;
    let fresh = http_client();
    let refused = fresh
        .post(format!("http://{addr}/oauth/token"))
        .send()
        .await;
    assert!(refused.is_err(), "nothing listens after shutdown");

    let (again, client) = start(SimConfig {
        bind: addr,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(again.addr(), addr);
    client.token().await;
}

#[test]
fn debug_output_never_shows_the_secret_or_webhook_token() {
    let cfg = SimConfig {
        client_secret: "s3cr3t-value".into(),
        webhook_token: "hook-t0ken-value".into(),
        ..SimConfig::default()
    };
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
    assert!(!shown.contains("hook-t0ken-value"), "{shown}");
}
