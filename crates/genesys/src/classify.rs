//! The status → action table: every answer of the API becomes one [`Classified`] with a reason.
//!
//! Pure (no I/O, time passed in), so the whole table is tested row by row. The HTTP status decides
//! the action; the body's `code`/`message` only feed the operator's reason. The body is parsed
//! defensively: it may be a Genesys `ErrorBody`, some other JSON, an HTML page from a load
//! balancer, or nothing.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use crate::disposition::{Disposition, Receipt};

/// The header Genesys puts on every API answer; logged with every failure, kept in the receipt.
pub const CORRELATION_ID_HEADER: &str = "ININ-Correlation-Id";

/// Wait after a 429 without (a parsable) `Retry-After`, as the official SDKs do.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3);

/// A 429 asking for a longer wait than this is a quota breach ("anywhere from few minutes to
/// hours", SDK comment): the target is paused until then instead of retried.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(180);

/// [`parse_retry_after`] never returns more than this, so a caller can add it to an `Instant`
/// without overflow and a broken header cannot park a target for years.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest `message` (and non-JSON body excerpt) copied into a reason, in characters.
const MAX_TEXT: usize = 300;

/// What one HTTP answer means, before the client applies its 401 rule.
///
/// A [`Disposition`] for every answer but a 401, which only the client can resolve: it turns a
/// first [`Classified::Reauthenticate`] into "drop the token, get a new one, send again" and a
/// second into a pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// What the caller does with the alert (a classified answer never has `timed_out` set: it
    /// is an answer).
    Final(Disposition),
    /// 401: the token was expired or revoked.
    Reauthenticate {
        /// Operator text, used if re-authenticating does not help.
        reason: String,
        /// `ININ-Correlation-Id` of the answer.
        correlation_id: Option<String>,
    },
}

impl Classified {
    /// The [`Disposition`] of every answer except [`Classified::Reauthenticate`], which only the
    /// client can resolve (it is returned unchanged as `Err`).
    pub fn into_disposition(self) -> Result<Disposition, Classified> {
        match self {
            Classified::Final(d) => Ok(d),
            reauth @ Classified::Reauthenticate { .. } => Err(reauth),
        }
    }
}

/// Classifies one answer of the API (the table in the crate doc).
///
/// `now` is only used for a `Retry-After` given as an HTTP-date.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Classified {
    let header_correlation = header_text(headers, CORRELATION_ID_HEADER);
    if (200..300).contains(&status) {
        return Classified::Final(Disposition::Delivered(Receipt {
            status,
            execution_id: execution_id(body),
            correlation_id: header_correlation,
        }));
    }
    let info = ErrorInfo::parse(body);
    let correlation_id = header_correlation.or_else(|| info.context_id.clone());
    let retry_after =
        header_text(headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v, now));
    let reason = |what: &str| info.reason(what, status, correlation_id.as_deref());
    let retry = |what: &str, after| {
        Classified::Final(Disposition::Retry {
            after,
            reason: reason(what),
            status: Some(status),
            timed_out: false,
        })
    };
    let pause = |what: &str| {
        Classified::Final(Disposition::Pause {
            reason: reason(what),
            status: Some(status),
            after: None,
        })
    };
    match status {
        401 => Classified::Reauthenticate {
            reason: reason("unauthorized (token expired, revoked or not accepted)"),
            correlation_id,
        },
        403 => pause(
            "forbidden: the OAuth client's role lacks the permission (architect:flow:launch) \
             or the flow's division; check the role",
        ),
        404 => pause("not found: check flow_id / events_url and the region"),
        410 => pause("gone (flow deleted): check flow_id"),
        501 => pause(
            "not implemented: this endpoint does not take this request; check api_url / events_url",
        ),
        300..=399 => pause("unexpected redirect: check api_url / events_url"),
        // Transient by definition: the same request can succeed later (RFC 9110 §15.5.9/§15.5.10,
        // RFC 4918 §11.3, RFC 8470 §5.2). Dead-lettering them would throw away alerts that only
        // met a busy or locked resource; the drain retries with backoff, `Retry-After` as a floor.
        408 => retry("client timeout", retry_after),
        409 => retry("conflict with the resource's current state", retry_after),
        423 => retry("resource locked", retry_after),
        425 => retry("too early", retry_after),
        429 => {
            let after = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
            if after > MAX_RATE_LIMIT_WAIT {
                Classified::Final(Disposition::Pause {
                    reason: reason(&format!(
                        "rate limit with Retry-After {} s (over {} s, a quota breach): pausing the target",
                        after.as_secs(),
                        MAX_RATE_LIMIT_WAIT.as_secs()
                    )),
                    status: Some(status),
                    after: Some(after),
                })
            } else {
                retry("rate limited", Some(after))
            }
        }
        500..=599 => retry("server error", retry_after),
        400..=499 => Classified::Final(Disposition::DeadLetter {
            status,
            reason: reason(match status {
                400 => "bad request (e.g. inputData does not match the flow's inputs)",
                413 => "payload too large",
                415 => "unsupported media type (a client bug)",
                422 => "payload or parameters invalid",
                _ => "rejected",
            }),
            api_message: info.message.clone(),
            code: info.code.clone(),
        }),
        _ => retry("unexpected status", retry_after),
    }
}

/// Parses a `Retry-After` value: delay-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2026 07:28:00 GMT"`, relative to `now`; a past date is zero).
/// Unparsable → `None`. Capped at [`RETRY_AFTER_CAP`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        Duration::from_secs(
            value
                .parse::<u64>()
                .unwrap_or(u64::MAX)
                .min(RETRY_AFTER_CAP.as_secs()),
        )
    } else {
        let when = httpdate::parse_http_date(value).ok()?;
        when.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(RETRY_AFTER_CAP))
}

/// A header as text, if present and visible ASCII.
pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `id` (flow execution) or `invocationId` (webhook invocation) of a 2xx body.
fn execution_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    ["id", "invocationId"]
        .iter()
        .find_map(|key| value.get(key).and_then(Value::as_str))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// What could be read from an error body; every part optional.
#[derive(Debug, Default)]
pub(crate) struct ErrorInfo {
    /// `code`, e.g. `request.entity.too.large`.
    pub(crate) code: Option<String>,
    /// `message`, or for the token endpoint `error_description` / `description`.
    pub(crate) message: Option<String>,
    /// `details[]` as `fieldName: errorCode`.
    details: Vec<String>,
    /// `limit` as `namespace/key=value`.
    limit: Option<String>,
    /// `contextId`, used when the correlation header is missing.
    context_id: Option<String>,
    /// Excerpt of a body that is not JSON (an HTML page from a load balancer).
    excerpt: Option<String>,
}

impl ErrorInfo {
    /// Reads an API `ErrorBody` or a token-endpoint error (`error`, `error_description`).
    pub(crate) fn parse(body: &[u8]) -> ErrorInfo {
        if body.iter().all(u8::is_ascii_whitespace) {
            return ErrorInfo::default();
        }
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                return ErrorInfo {
                    excerpt: Some(clean_text(&String::from_utf8_lossy(body))),
                    ..ErrorInfo::default()
                }
            }
        };
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .map(clean_text)
                .filter(|s| !s.is_empty())
        };
        let details = value
            .get("details")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .take(5)
                    .filter_map(|d| {
                        let get = |k| d.get(k).and_then(Value::as_str);
                        match (get("fieldName"), get("errorCode")) {
                            (Some(f), Some(c)) => Some(format!("{f}: {c}")),
                            (Some(f), None) => Some(f.to_owned()),
                            (None, Some(c)) => Some(c.to_owned()),
                            (None, None) => None,
                        }
                    })
                    .map(|s| clean_text(&s))
                    .collect()
            })
            .unwrap_or_default();
        let limit = value.get("limit").and_then(|l| {
            let get = |k| {
                l.get(k)
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            };
            let key = get("key")?;
            let mut s = match get("namespace") {
                Some(ns) => format!("{ns}/{key}"),
                None => key,
            };
            if let Some(v) = get("value") {
                s.push('=');
                s.push_str(&v);
            }
            Some(clean_text(&s))
        });
        ErrorInfo {
            code: text("code").or_else(|| text("error")),
            message: text("message")
                .or_else(|| text("error_description"))
                .or_else(|| text("description")),
            details,
            limit,
            context_id: text("contextId"),
            excerpt: None,
        }
    }

    /// `"<what>: HTTP 413 request.entity.too.large: <message> (details: …) (limit …) [correlation_id …]"`.
    pub(crate) fn reason(&self, what: &str, status: u16, correlation_id: Option<&str>) -> String {
        format!("{what}: {}", self.describe(status, correlation_id))
    }

    /// [`ErrorInfo::reason`] without the leading `what`.
    pub(crate) fn describe(&self, status: u16, correlation_id: Option<&str>) -> String {
        let mut s = format!("HTTP {status}");
        if let Some(code) = &self.code {
            s.push(' ');
            s.push_str(code);
        }
        if let Some(message) = &self.message {
            s.push_str(": ");
            s.push_str(message);
        }
        if !self.details.is_empty() {
            s.push_str(" (details: ");
            s.push_str(&self.details.join("; "));
            s.push(')');
        }
        if let Some(limit) = &self.limit {
            s.push_str(" (limit ");
            s.push_str(limit);
            s.push(')');
        }
        if let Some(excerpt) = &self.excerpt {
            s.push_str(" (non-JSON body: ");
            s.push_str(excerpt);
            s.push(')');
        }
        if let Some(id) = correlation_id {
            s.push_str(" [correlation_id ");
            s.push_str(&clean_text(id));
            s.push(']');
        }
        s
    }
}

/// One line, control characters and whitespace runs folded to one space, at most [`MAX_TEXT`]
/// characters (a reason goes into logs and dead-letter records).
fn clean_text(text: &str) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    let mut count = 0;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if count >= MAX_TEXT {
            out.push('…');
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn now() -> SystemTime {
        httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").expect("valid date")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid header"));
        }
        h
    }

    fn error_body(code: &str, message: &str, status: u16) -> Vec<u8> {
        serde_json::json!({"code": code, "message": message, "status": status, "contextId": "ctx-1"})
            .to_string()
            .into_bytes()
    }

    /// The expected action per row, without reasons.
    #[derive(Debug, PartialEq)]
    enum Row {
        Delivered,
        Retry(Option<u64>),
        DeadLetter,
        Pause(Option<u64>),
        Reauthenticate,
    }

    fn row(c: &Classified) -> Row {
        let secs = |d: &Option<Duration>| d.map(|d| d.as_secs());
        match c {
            Classified::Final(Disposition::Delivered(_)) => Row::Delivered,
            Classified::Final(Disposition::Retry { after, .. }) => Row::Retry(secs(after)),
            Classified::Final(Disposition::DeadLetter { .. }) => Row::DeadLetter,
            Classified::Final(Disposition::Pause { after, .. }) => Row::Pause(secs(after)),
            Classified::Reauthenticate { .. } => Row::Reauthenticate,
        }
    }

    /// The disposition of an answer that is not a 401.
    fn final_of(c: Classified) -> Disposition {
        c.into_disposition().expect("not a 401")
    }

    #[test]
    fn every_row_of_the_classification_table() {
        /// Response headers of one row.
        type Headers = &'static [(&'static str, &'static str)];
        let none: Headers = &[];
        let cases: &[(u16, Headers, Row)] = &[
            (200, none, Row::Delivered),
            (201, none, Row::Delivered),
            (202, none, Row::Delivered),
            (204, none, Row::Delivered),
            (301, none, Row::Pause(None)),
            (302, none, Row::Pause(None)),
            (307, none, Row::Pause(None)),
            (400, none, Row::DeadLetter),
            (401, none, Row::Reauthenticate),
            (403, none, Row::Pause(None)),
            (404, none, Row::Pause(None)),
            (405, none, Row::DeadLetter),
            (408, none, Row::Retry(None)),
            (408, &[("retry-after", "7")], Row::Retry(Some(7))),
            (409, none, Row::Retry(None)),
            (409, &[("retry-after", "5")], Row::Retry(Some(5))),
            (410, none, Row::Pause(None)),
            (413, none, Row::DeadLetter),
            (415, none, Row::DeadLetter),
            (422, none, Row::DeadLetter),
            (423, none, Row::Retry(None)),
            (
                423,
                &[("retry-after", "Wed, 21 Oct 2026 07:28:20 GMT")],
                Row::Retry(Some(20)),
            ),
            (424, none, Row::DeadLetter),
            (425, none, Row::Retry(None)),
            (425, &[("retry-after", "2")], Row::Retry(Some(2))),
            (426, none, Row::DeadLetter),
            (429, none, Row::Retry(Some(3))),
            (429, &[("retry-after", "not a number")], Row::Retry(Some(3))),
            (429, &[("retry-after", "0")], Row::Retry(Some(0))),
            (429, &[("retry-after", "17")], Row::Retry(Some(17))),
            (429, &[("retry-after", "180")], Row::Retry(Some(180))),
            (429, &[("retry-after", "181")], Row::Pause(Some(181))),
            (429, &[("retry-after", "3600")], Row::Pause(Some(3600))),
            (
                429,
                &[("retry-after", "Wed, 21 Oct 2026 07:28:30 GMT")],
                Row::Retry(Some(30)),
            ),
            (
                429,
                &[("retry-after", "Wed, 21 Oct 2026 09:28:00 GMT")],
                Row::Pause(Some(7200)),
            ),
            (500, none, Row::Retry(None)),
            (501, none, Row::Pause(None)),
            (502, none, Row::Retry(None)),
            (503, none, Row::Retry(None)),
            (503, &[("retry-after", "12")], Row::Retry(Some(12))),
            (504, none, Row::Retry(None)),
            (599, none, Row::Retry(None)),
            (100, none, Row::Retry(None)),
            (600, none, Row::Retry(None)),
        ];
        for (status, hs, expected) in cases {
            let body = error_body("some.code", "some message", *status);
            let got = classify(*status, &headers(hs), &body, now());
            assert_eq!(
                &row(&got),
                expected,
                "status {status} headers {hs:?}: {got:?}"
            );
            // Every non-2xx outcome carries a reason naming the status.
            let reason = match &got {
                Classified::Final(Disposition::Delivered(_)) => continue,
                Classified::Final(
                    Disposition::Retry {
                        reason, status: s, ..
                    }
                    | Disposition::Pause {
                        reason, status: s, ..
                    },
                ) => {
                    assert_eq!(*s, Some(*status));
                    reason
                }
                Classified::Final(Disposition::DeadLetter {
                    reason, status: s, ..
                }) => {
                    assert_eq!(s, status);
                    reason
                }
                Classified::Reauthenticate { reason, .. } => reason,
            };
            assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
        }
    }

    #[test]
    fn delivered_receipt_keeps_execution_id_and_correlation_id() {
        let h = headers(&[("inin-correlation-id", "corr-42")]);
        let body = br#"{"id":"exec-1","name":"a1","selfUri":"/api/v2/flows/executions/exec-1"}"#;
        assert_eq!(
            classify(200, &h, body, now()),
            Classified::Final(Disposition::Delivered(Receipt {
                status: 200,
                execution_id: Some("exec-1".into()),
                correlation_id: Some("corr-42".into()),
            }))
        );
        let body = br#"{"invocationId":"inv-9"}"#;
        let Disposition::Delivered(receipt) =
            final_of(classify(200, &HeaderMap::new(), body, now()))
        else {
            panic!("not delivered");
        };
        assert_eq!(receipt.execution_id.as_deref(), Some("inv-9"));
        assert_eq!(receipt.correlation_id, None);
    }

    #[test]
    fn delivered_with_an_unparsable_body_still_counts_as_delivered() {
        for body in [&b""[..], b"not json", b"[1,2]", br#"{"id": 5}"#] {
            let Disposition::Delivered(receipt) =
                final_of(classify(200, &HeaderMap::new(), body, now()))
            else {
                panic!("not delivered for {body:?}");
            };
            assert_eq!(receipt.execution_id, None);
        }
    }

    #[test]
    fn dead_letter_reason_has_code_message_details_and_correlation_id() {
        let body = serde_json::json!({
            "message": "The request is over the size limit. Maximum bytes: 512000",
            "code": "request.entity.too.large",
            "status": 413,
            "details": [{"fieldName": "inputData.level", "errorCode": "invalid.type"}],
        })
        .to_string();
        let h = headers(&[("ININ-Correlation-Id", "c-413")]);
        let Disposition::DeadLetter {
            status,
            reason,
            api_message,
            code,
        } = final_of(classify(413, &h, body.as_bytes(), now()))
        else {
            panic!("not a dead letter");
        };
        assert_eq!(status, 413);
        assert_eq!(code.as_deref(), Some("request.entity.too.large"));
        assert_eq!(
            api_message.as_deref(),
            Some("The request is over the size limit. Maximum bytes: 512000")
        );
        for part in [
            "HTTP 413",
            "request.entity.too.large",
            "Maximum bytes: 512000",
            "inputData.level: invalid.type",
            "c-413",
        ] {
            assert!(reason.contains(part), "{part:?} missing in {reason:?}");
        }
    }

    #[test]
    fn context_id_stands_in_for_a_missing_correlation_header() {
        let body = error_body("bad.request", "nope", 400);
        let Disposition::DeadLetter { reason, .. } =
            final_of(classify(400, &HeaderMap::new(), &body, now()))
        else {
            panic!("not a dead letter");
        };
        assert!(reason.contains("[correlation_id ctx-1]"), "{reason}");
    }

    #[test]
    fn rate_limit_reason_names_the_limit() {
        let body = serde_json::json!({
            "code": "too.many.requests.retry.after",
            "message": "Rate limit exceeded",
            "limit": {"key": "token.rate.per.minute", "namespace": "platform.api", "value": 300},
        })
        .to_string();
        let got = classify(
            429,
            &headers(&[("retry-after", "4")]),
            body.as_bytes(),
            now(),
        );
        let Disposition::Retry { after, reason, .. } = final_of(got) else {
            panic!("not a retry");
        };
        assert_eq!(after, Some(Duration::from_secs(4)));
        assert!(
            reason.contains("platform.api/token.rate.per.minute=300"),
            "{reason}"
        );
    }

    #[test]
    fn non_json_bodies_are_quoted_briefly_on_one_line() {
        let html = format!(
            "<html>\r\n<body>\n  502   Bad Gateway\n{}</body></html>",
            "x".repeat(1000)
        );
        let Disposition::Retry { reason, .. } =
            final_of(classify(502, &HeaderMap::new(), html.as_bytes(), now()))
        else {
            panic!("not a retry");
        };
        assert!(reason.contains("<html> <body> 502 Bad Gateway"), "{reason}");
        assert!(!reason.contains('\n') && reason.len() < 500, "{reason}");
        // Empty and binary bodies do not break the reason either.
        for body in [&b""[..], &[0xff, 0xfe, 0x00][..]] {
            let Disposition::Retry { reason, .. } =
                final_of(classify(503, &HeaderMap::new(), body, now()))
            else {
                panic!("not a retry");
            };
            assert!(reason.starts_with("server error: HTTP 503"), "{reason}");
        }
    }

    #[test]
    fn error_body_with_unexpected_types_is_read_as_far_as_possible() {
        let body =
            br#"{"code": 7, "message": "still read", "details": "not a list", "status": "x"}"#;
        let info = ErrorInfo::parse(body);
        assert_eq!(info.code, None);
        assert_eq!(info.message.as_deref(), Some("still read"));
    }

    #[test]
    fn token_endpoint_error_fields_are_read() {
        let body = br#"{"error":"invalid_client","description":"authentication failed","error_description":"authentication failed"}"#;
        let info = ErrorInfo::parse(body);
        assert_eq!(info.code.as_deref(), Some("invalid_client"));
        assert_eq!(info.message.as_deref(), Some("authentication failed"));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("3", Some(3)),
            (" 120 ", Some(120)),
            ("86400", Some(86_400)),
            ("86401", Some(86_400)),
            ("99999999999999999999999", Some(86_400)),
            ("Wed, 21 Oct 2026 07:29:00 GMT", Some(60)),
            ("Wed, 21 Oct 2026 07:28:00 GMT", Some(0)),
            ("Wed, 21 Oct 2026 07:00:00 GMT", Some(0)),
            ("Sat, 21 Oct 2028 07:28:00 GMT", Some(86_400)),
            ("Wednesday, 21-Oct-26 07:28:10 GMT", Some(10)),
            ("", None),
            ("  ", None),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("Wed, 32 Oct 2026 07:28:00 GMT", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now()).map(|d| d.as_secs()),
                *expected,
                "{value:?}"
            );
        }
    }

    #[test]
    fn into_disposition_keeps_everything_but_reauthenticate() {
        let retry = Disposition::Retry {
            after: Some(Duration::from_secs(1)),
            reason: "r".into(),
            status: Some(503),
            timed_out: false,
        };
        assert_eq!(
            Classified::Final(retry.clone()).into_disposition(),
            Ok(retry)
        );
        let reauth = Classified::Reauthenticate {
            reason: "x".into(),
            correlation_id: None,
        };
        assert_eq!(reauth.clone().into_disposition(), Err(reauth));
    }

    #[test]
    fn clean_text_folds_whitespace_and_caps_length() {
        assert_eq!(clean_text("  a \n\t b  "), "a b");
        assert_eq!(clean_text(&"y".repeat(400)).chars().count(), MAX_TEXT + 1);
    }
}
