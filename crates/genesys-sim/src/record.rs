//! What the simulator records: the request log ([`LoggedRequest`]), accepted calls ([`Accepted`]) and
//! counters ([`SimStats`]), with the bounds that keep them from growing without limit.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How many [`LoggedRequest`]s the log keeps; older entries are discarded first. Counters in
/// [`SimStats`] stay exact beyond this bound.
pub const REQUEST_LOG_CAPACITY: usize = 200_000;

/// How many [`Accepted`] calls are kept (with their bodies, at most `max_body_bytes` each); older ones
/// are discarded first. [`SimStats::accepted`] and [`crate::Sim::wait_for_accepted`] count them all.
pub const ACCEPTED_CAPACITY: usize = 200_000;

/// Which simulated endpoint a request was addressed to, decided by its path alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// `/oauth/token`.
    Token,
    /// `/api/v2/flows/executions` (a workflow launch; `GET .../executions/{id}` is [`Endpoint::Other`]).
    FlowExecution,
    /// `/api/v2/events`.
    Events,
    /// `/api/v2/integrations/webhooks/{token}/events`, with or without the `/platform` prefix.
    Webhook,
    /// Anything else (unknown paths, execution look-ups).
    Other,
}

impl Endpoint {
    /// Classifies a request path.
    pub(crate) fn of_path(path: &str) -> Endpoint {
        match path {
            "/oauth/token" => Endpoint::Token,
            "/api/v2/flows/executions" => Endpoint::FlowExecution,
            "/api/v2/events" => Endpoint::Events,
            _ if webhook_token_of(path).is_some() => Endpoint::Webhook,
            _ => Endpoint::Other,
        }
    }
}

/// The `{token}` segment of a webhook invocation path, if `path` is one.
pub(crate) fn webhook_token_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/platform").unwrap_or(path);
    let token = rest
        .strip_prefix("/api/v2/integrations/webhooks/")?
        .strip_suffix("/events")?;
    (!token.is_empty() && !token.contains('/')).then_some(token)
}

/// `path` with a webhook token cut to its first 6 characters followed by `***`: the invocation URL is
/// a credential and must not land in logs whole.
pub(crate) fn redact_path(path: &str) -> String {
    match webhook_token_of(path) {
        Some(token) => path.replacen(token, &format!("{}***", prefix6(token)), 1),
        None => path.to_owned(),
    }
}

/// The first 6 characters of a credential (never more).
pub(crate) fn prefix6(s: &str) -> String {
    s.chars().take(6).collect()
}

/// One request as the simulator saw it. Admin requests (`/sim/*`) are not logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// When it arrived.
    pub at: SystemTime,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path without query; a webhook token is cut to 6 characters + `***`.
    pub path: String,
    /// Endpoint the path names.
    pub endpoint: Endpoint,
    /// Status answered; `0` while the request is still being answered (e.g. during `latency_ms`).
    pub status: u16,
    /// First 6 characters of the bearer token sent, if any (never the whole token).
    pub token_prefix: Option<String>,
    /// Length of the request body in bytes.
    pub body_len: usize,
    /// `Retry-After` seconds sent with the answer, if any.
    pub retry_after: Option<u64>,
    /// `ININ-Correlation-Id` sent with the answer (also the `contextId` of an error body).
    pub correlation_id: String,
}

/// A 2xx answer to a flow launch, event or webhook call, with the request body it accepted.
/// Recorded before the answer is written, so a client that got its 200 finds it here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// When the request arrived.
    pub at: SystemTime,
    /// [`Endpoint::FlowExecution`], [`Endpoint::Events`] or [`Endpoint::Webhook`].
    pub endpoint: Endpoint,
    /// The flow execution id or `invocationId` answered.
    pub id: String,
    /// The parsed request body.
    pub body: serde_json::Value,
    /// `inputData.alertId` (flow launch) or `data.alertId` (events, webhook) if present, else the
    /// same object's `alert_id`; a number is given as its decimal text.
    pub alert_id: Option<String>,
}

/// Counters since start. Exact (not bounded like the logs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests to `/oauth/token`, whatever their outcome.
    pub token_requests: u64,
    /// Tokens issued (200 answers of the token endpoint).
    pub tokens_issued: u64,
    /// Every other logged request (API calls, unknown paths; not `/sim/*`).
    pub api_requests: u64,
    /// 2xx launches, events and webhook calls (the [`Accepted`] records, including discarded ones).
    pub accepted: u64,
    /// Answers by status code, over all logged requests that were answered.
    pub by_status: BTreeMap<u16, u64>,
}

/// Bounded request log addressed by arrival sequence number, so the entry made at arrival can be
/// completed when the answer is known, even with other requests logged in between.
#[derive(Debug)]
pub(crate) struct RequestLog {
    entries: VecDeque<LoggedRequest>,
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    capacity: usize,
}

impl RequestLog {
    pub(crate) fn new(capacity: usize) -> Self {
        RequestLog {
            entries: VecDeque::new(),
            first_seq: 0,
            capacity: capacity.max(1),
        }
    }

    /// Appends an entry and returns its sequence number.
    pub(crate) fn push(&mut self, entry: LoggedRequest) -> u64 {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.first_seq += 1;
        }
        self.entries.push_back(entry);
        self.first_seq + self.entries.len() as u64 - 1
    }

    /// The entry with sequence number `seq`, unless it was discarded.
    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut LoggedRequest> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.entries.get_mut(index)
    }

    pub(crate) fn snapshot(&self) -> Vec<LoggedRequest> {
        self.entries.iter().cloned().collect()
    }
}

/// The `alertId` (or `alert_id`) of a JSON object, as text.
pub(crate) fn alert_id_of(object: Option<&serde_json::Value>) -> Option<String> {
    let object = object?.as_object()?;
    ["alertId", "alert_id"]
        .iter()
        .filter_map(|key| object.get(*key))
        .find_map(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(path: &str) -> LoggedRequest {
        LoggedRequest {
            at: SystemTime::UNIX_EPOCH,
            method: "POST".into(),
            path: path.into(),
            endpoint: Endpoint::of_path(path),
            status: 0,
            token_prefix: None,
            body_len: 0,
            retry_after: None,
            correlation_id: String::new(),
        }
    }

    #[test]
    fn paths_classify_into_endpoints() {
        let table = [
            ("/oauth/token", Endpoint::Token),
            ("/api/v2/flows/executions", Endpoint::FlowExecution),
            ("/api/v2/flows/executions/abc", Endpoint::Other),
            ("/api/v2/events", Endpoint::Events),
            (
                "/api/v2/integrations/webhooks/abc123/events",
                Endpoint::Webhook,
            ),
            (
                "/platform/api/v2/integrations/webhooks/abc123/events",
                Endpoint::Webhook,
            ),
            ("/api/v2/integrations/webhooks//events", Endpoint::Other),
            ("/api/v2/integrations/webhooks/a/b/events", Endpoint::Other),
            ("/", Endpoint::Other),
        ];
        for (path, want) in table {
            assert_eq!(Endpoint::of_path(path), want, "{path}");
        }
    }

    #[test]
    fn webhook_token_is_redacted_to_six_characters() {
        assert_eq!(
            redact_path("/platform/api/v2/integrations/webhooks/0123456789abcdef/events"),
            "/platform/api/v2/integrations/webhooks/012345***/events"
        );
        assert_eq!(redact_path("/api/v2/events"), "/api/v2/events");
    }

    #[test]
    fn request_log_keeps_the_newest_entries_and_completes_by_sequence() {
        let mut log = RequestLog::new(2);
        let a = log.push(entry("/a"));
        let b = log.push(entry("/b"));
        let c = log.push(entry("/c"));
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(log.get_mut(a).is_none(), "oldest entry is discarded");
        log.get_mut(b).expect("b is kept").status = 200;
        let paths: Vec<_> = log
            .snapshot()
            .into_iter()
            .map(|e| (e.path, e.status))
            .collect();
        assert_eq!(paths, vec![("/b".into(), 200), ("/c".into(), 0)]);
    }

    #[test]
    fn alert_id_prefers_camel_case_and_accepts_numbers() {
        assert_eq!(
            alert_id_of(Some(&json!({"alertId": "a", "alert_id": "b"}))),
            Some("a".into())
        );
        assert_eq!(
            alert_id_of(Some(&json!({"alert_id": 42}))),
            Some("42".into())
        );
        assert_eq!(alert_id_of(Some(&json!({"alertId": true}))), None);
        assert_eq!(alert_id_of(Some(&json!("x"))), None);
        assert_eq!(alert_id_of(None), None);
    }
}
