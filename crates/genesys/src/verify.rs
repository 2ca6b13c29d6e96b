//! `alertbridge check --online`: is the configured target usable by this OAuth client? One
//! token fetch and one read-only request; nothing is launched and no event is posted.
//!
//! - Workflow target: `GET {api_url}/api/v2/flows/{flow_id}` (permission `architect:flow:view`)
//!   must answer a flow of type `WORKFLOW` with a `publishedVersion`: only a published workflow
//!   can be launched, and the launch answers 404 otherwise.
//! - Events target: the URL must answer HTTP at all (any status): posting to it would run the
//!   workflow behind it, so the check only proves the host, TLS and path are reachable.
//!
//! Every problem names the setting or the permission to fix; an invocation URL is never shown.

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::client::{transport_reason, GenesysClient};
use crate::config::Target;

/// The permission `GET /api/v2/flows/{id}` needs.
pub const PERMISSION_FLOW_VIEW: &str = "architect:flow:view";
/// The permission a workflow launch needs.
pub const PERMISSION_FLOW_LAUNCH: &str = "architect:flow:launch";

/// What the online check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetCheck {
    /// The target is usable; the text says what was verified (flow name and version, or the
    /// status the events URL answered).
    Ready(String),
    /// It is not: what is wrong, and which setting or permission fixes it.
    Problem {
        /// What is wrong.
        problem: String,
        /// What to change.
        fix: String,
    },
}

fn problem(problem: impl Into<String>, fix: impl Into<String>) -> TargetCheck {
    TargetCheck::Problem {
        problem: problem.into(),
        fix: fix.into(),
    }
}

impl GenesysClient {
    /// Fetches a token (when the target needs one) and checks the target as the module doc
    /// says. Never fails: every outcome is a [`TargetCheck`].
    pub async fn verify_target(&self) -> TargetCheck {
        let token = if self.uses_bearer() {
            match self.bearer_token().await {
                Ok(t) => Some(t),
                Err(e) => {
                    return problem(
                        format!("fetching a token: {e}"),
                        "check genesys.client_id, the client secret, genesys.region (or \
                         login_url), and that the OAuth client uses the client-credentials grant",
                    )
                }
            }
        } else {
            None
        };
        let mut url = self.target_url().clone();
        let flow_id = match self.target() {
            Target::Workflow { flow_id, .. } => {
                // `{api_url}/api/v2/flows/executions` → `{api_url}/api/v2/flows/{flow_id}`.
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments.pop().push(flow_id);
                }
                Some(flow_id.clone())
            }
            Target::Events { .. } => None,
        };
        let mut request = self.http().get(url.clone());
        if let Some(t) = &token {
            request = request.bearer_auth(t.expose_secret());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let host = url.host_str().unwrap_or("").to_owned();
                return problem(
                    format!("cannot reach {host}: {}", transport_reason(e)),
                    "check genesys.region (or api_url / events_url), DNS, the proxy and the \
                     firewall towards that host",
                );
            }
        };
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        match flow_id {
            Some(id) => flow_verdict(&id, status, &body),
            None => TargetCheck::Ready(format!(
                "the events URL on {} answers (HTTP {status} to a GET; nothing was posted)",
                self.target_host()
            )),
        }
    }
}

/// Pure: what a `GET /api/v2/flows/{id}` answer says about the configured flow.
pub fn flow_verdict(flow_id: &str, status: u16, body: &[u8]) -> TargetCheck {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let api_message = json
        .get("message")
        .and_then(Value::as_str)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match status {
        200..=299 => {
            let kind = json.get("type").and_then(Value::as_str).unwrap_or("");
            let name = json.get("name").and_then(Value::as_str).unwrap_or(flow_id);
            if !kind.eq_ignore_ascii_case("workflow") {
                return problem(
                    format!("flow {flow_id} ({name}) is of type {kind:?}, not a workflow"),
                    "set genesys.flow_id to the id of an Architect workflow (Architect → \
                     Workflows), or use target = \"events\"",
                );
            }
            let published = json
                .get("publishedVersion")
                .filter(|v| !v.is_null())
                .map(|v| {
                    v.get("name")
                        .or_else(|| v.get("id"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                });
            match published {
                Some(version) => TargetCheck::Ready(format!(
                    "workflow {flow_id} ({name}) is published (version {version})"
                )),
                None => problem(
                    format!("workflow {flow_id} ({name}) has never been published"),
                    "publish it in Architect: only a published workflow can be launched",
                ),
            }
        }
        401 => problem(
            format!("the API refused the new token (HTTP 401{api_message})"),
            "check that genesys.region matches the org of the OAuth client",
        ),
        403 => problem(
            format!("the OAuth client may not read flow {flow_id} (HTTP 403{api_message})"),
            format!(
                "give the OAuth client's role {PERMISSION_FLOW_VIEW} (for this check) and \
                 {PERMISSION_FLOW_LAUNCH} (for delivery), in the division of the workflow"
            ),
        ),
        404 => problem(
            format!("no flow {flow_id} in this org (HTTP 404{api_message})"),
            "check genesys.flow_id (Architect → the workflow → its id) and genesys.region",
        ),
        410 => problem(
            format!("flow {flow_id} has been deleted (HTTP 410{api_message})"),
            "set genesys.flow_id to a published workflow",
        ),
        _ => problem(
            format!("reading flow {flow_id} answered HTTP {status}{api_message}"),
            "try again later; if it persists, check the Genesys Cloud status page",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_problem_with(check: &TargetCheck, words: &[&str]) -> bool {
        match check {
            TargetCheck::Problem { problem, fix } => {
                let all = format!("{problem} {fix}");
                words.iter().all(|w| all.contains(w))
            }
            TargetCheck::Ready(_) => false,
        }
    }

    #[test]
    fn a_flow_answer_is_ready_only_for_a_published_workflow() {
        let published = br#"{"id":"f","name":"Pump","type":"WORKFLOW","publishedVersion":{"id":"3.0","name":"3.0"}}"#;
        assert_eq!(
            flow_verdict("f", 200, published),
            TargetCheck::Ready("workflow f (Pump) is published (version 3.0)".into())
        );
        let cases: [(u16, &[u8], &[&str]); 6] = [
            (
                200,
                br#"{"id":"f","name":"Pump","type":"INBOUNDCALL","publishedVersion":{"id":"1"}}"#,
                &["INBOUNDCALL", "not a workflow", "genesys.flow_id"],
            ),
            (
                200,
                br#"{"id":"f","name":"Pump","type":"WORKFLOW","publishedVersion":null}"#,
                &["never been published", "publish it"],
            ),
            (
                403,
                br#"{"message":"You are missing the following permission(s): architect:flow:view"}"#,
                &["HTTP 403", PERMISSION_FLOW_VIEW, PERMISSION_FLOW_LAUNCH],
            ),
            (404, br#"{"message":"Flow f not found."}"#, &["no flow f", "genesys.flow_id"]),
            (410, b"", &["deleted"]),
            (401, b"", &["genesys.region"]),
        ];
        for (status, body, words) in cases {
            let check = flow_verdict("f", status, body);
            assert!(is_problem_with(&check, words), "{status}: {check:?}");
        }
    }
}
