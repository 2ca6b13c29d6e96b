//! OAuth client credentials: where the secret comes from, the token cache, token failures.
//!
//! # I6: secrets never reach logs, errors, metrics or the store
//! The client secret and every access token live only in [`SecretString`]s; they are exposed
//! only to build the `Authorization` header (reqwest marks it sensitive). No type here derives a
//! `Debug` that shows them, no [`TokenError`] carries them, and nothing is logged but counts,
//! statuses and `expires_in`. Guarded by `tests::no_output_contains_the_secret_or_token` here and
//! the HTTP test `secrets_are_absent_from_every_output` (every error, `Debug`, reason and log line
//! of a run through successes, re-authentication, rejections and faults).
//!
//! # Freshness
//! A token fetched at `t` (the moment the request was sent, so network time counts against it)
//! with `expires_in = L` is
//! - *fresh* until `t + L − m`, where `m = min(refresh_margin, L / 4)` ([`effective_refresh_margin`]);
//!   the cap keeps a 5-minute token from being "always expired" under the 300 s default margin;
//! - *refresh due* from then until `t + L − s`, `s = min(m, L / 10, 30 s)`: the first request to see
//!   it refreshes (others keep using the old token meanwhile); if the refresh fails, the old token
//!   is still used until `t + L − s`, and the next refresh try waits [`REFRESH_RETRY_INTERVAL`];
//! - *expired* after that: a request waits for a new token.
//!
//! # Single flight
//! One fetch at a time (`gate`, a tokio mutex held across the fetch). Callers that waited while
//! another fetch ran take its result: the new token, or its error without a second request, so a
//! burst of deliveries makes one token request whether it succeeds or not.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, RETRY_AFTER};
use secrecy::{zeroize::Zeroize, ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::classify::{
    header_text, parse_retry_after, ErrorInfo, DEFAULT_RATE_LIMIT_WAIT, MAX_RATE_LIMIT_WAIT,
};
use crate::disposition::Disposition;

/// After a failed proactive refresh (old token still usable), wait this long before trying again.
pub const REFRESH_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Where the client secret comes from. Read on every token fetch, so a rotated file or variable
/// is picked up without a restart.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A file holding the secret (e.g. a systemd credential); a trailing newline is ignored.
    File(PathBuf),
    /// The name of an environment variable holding the secret.
    Env(String),
    /// A fixed secret (tests, demos).
    Static(SecretString),
}

impl SecretSource {
    /// Reads the secret, without trailing whitespace (Genesys secrets contain none; files
    /// usually end in a newline).
    ///
    /// Errors: [`TokenError::SecretUnavailable`] (file unreadable, variable unset or not UTF-8),
    /// [`TokenError::SecretEmpty`].
    pub fn load(&self) -> Result<SecretString, TokenError> {
        let unavailable = |reason: String| TokenError::SecretUnavailable {
            from: self.describe(),
            reason,
        };
        let mut raw = match self {
            SecretSource::File(path) => {
                std::fs::read_to_string(path).map_err(|e| unavailable(e.to_string()))?
            }
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(value) => value,
                Err(std::env::VarError::NotPresent) => return Err(unavailable("not set".into())),
                // The error's Display would show the value: name the fact only.
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(unavailable("not valid UTF-8".into()))
                }
            },
            SecretSource::Static(secret) => secret.expose_secret().to_owned(),
        };
        let secret = SecretString::from(raw.trim_end());
        raw.zeroize();
        if secret.expose_secret().is_empty() {
            return Err(TokenError::SecretEmpty {
                from: self.describe(),
            });
        }
        Ok(secret)
    }

    /// Where the secret comes from, for messages: `file /etc/…`, `environment variable X`.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Env(var) => format!("environment variable {var}"),
            SecretSource::Static(_) => "static secret".to_owned(),
        }
    }
}

/// Why no token could be had. [`TokenError::to_disposition`] says what a delivery does next.
/// Never contains the secret or a token (I6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The secret could not be read. Pause: fix the file/variable; the next fetch re-reads it.
    #[error("cannot read the client secret from {from}: {reason}")]
    SecretUnavailable {
        /// [`SecretSource::describe`].
        from: String,
        /// The I/O or environment fact.
        reason: String,
    },
    /// The secret is empty. Pause: fix the file/variable.
    #[error("the client secret from {from} is empty")]
    SecretEmpty {
        /// [`SecretSource::describe`].
        from: String,
    },
    /// 400/401 from the token endpoint (e.g. `invalid_client`): wrong client id or secret, or the
    /// OAuth client lives in another region. Pause and alert the operator.
    #[error(
        "token endpoint rejected the client credentials (HTTP {status}{}): check client_id/secret and the region (login_url {login_url})",
        code_and_message(.error, .description)
    )]
    Rejected {
        /// 400 or 401.
        status: u16,
        /// OAuth `error`, e.g. `invalid_client`.
        error: Option<String>,
        /// `error_description` / `description`.
        description: Option<String>,
        /// The login URL used, so the operator sees the region.
        login_url: String,
    },
    /// 429 from the token endpoint. Retry after `retry_after` (pause if it is over 180 s).
    #[error("token endpoint rate limited (HTTP 429): retry after {} s", .retry_after.as_secs())]
    RateLimited {
        /// `Retry-After`, 3 s when absent.
        retry_after: Duration,
    },
    /// 5xx from the token endpoint. Retry with backoff.
    #[error("token endpoint unavailable: {detail}")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, if sent.
        retry_after: Option<Duration>,
        /// Status, code, message or body excerpt.
        detail: String,
    },
    /// Any other status (403, 404, 3xx …): most likely `login_url` points somewhere else.
    /// Pause and alert the operator.
    #[error("token endpoint answered unexpectedly ({detail}): check login_url and the region (login_url {login_url})")]
    UnexpectedStatus {
        /// HTTP status.
        status: u16,
        /// Status, code, message or body excerpt.
        detail: String,
        /// The login URL used.
        login_url: String,
    },
    /// Connect error, timeout or broken answer. Retry with backoff.
    #[error("token request failed: {reason}")]
    Transport {
        /// What failed (never the URL's query or a header).
        reason: String,
        /// The request or connect timeout fired.
        timed_out: bool,
    },
    /// 2xx whose body has no usable `access_token`/`expires_in`. Retry with backoff (a proxy or
    /// a broken deployment; alert if it persists).
    #[error("token endpoint answered HTTP {status} without a usable token: {reason}")]
    BadResponse {
        /// HTTP status.
        status: u16,
        /// What was missing.
        reason: String,
    },
}

fn code_and_message(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(" {c}: {m}"),
        (Some(c), None) => format!(" {c}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

impl TokenError {
    /// True for faults only the operator can fix (credentials, region, secret source).
    pub fn is_configuration_fault(&self) -> bool {
        matches!(
            self,
            TokenError::SecretUnavailable { .. }
                | TokenError::SecretEmpty { .. }
                | TokenError::Rejected { .. }
                | TokenError::UnexpectedStatus { .. }
        )
    }

    /// What a delivery that needed this token does next: configuration faults pause, the rest
    /// retry (a 429 asking for more than 180 s pauses until then).
    pub fn to_disposition(&self) -> Disposition {
        // Every message names the token endpoint or the client secret already.
        let reason = self.to_string();
        match self {
            TokenError::SecretUnavailable { .. } | TokenError::SecretEmpty { .. } => {
                Disposition::Pause {
                    reason,
                    status: None,
                    after: None,
                }
            }
            TokenError::Rejected { status, .. } | TokenError::UnexpectedStatus { status, .. } => {
                Disposition::Pause {
                    reason,
                    status: Some(*status),
                    after: None,
                }
            }
            TokenError::RateLimited { retry_after } if *retry_after > MAX_RATE_LIMIT_WAIT => {
                Disposition::Pause {
                    reason,
                    status: Some(429),
                    after: Some(*retry_after),
                }
            }
            TokenError::RateLimited { retry_after } => Disposition::Retry {
                after: Some(*retry_after),
                reason,
                status: Some(429),
                timed_out: false,
            },
            TokenError::Unavailable {
                status,
                retry_after,
                ..
            } => Disposition::Retry {
                after: *retry_after,
                reason,
                status: Some(*status),
                timed_out: false,
            },
            // A token request that timed out launched nothing.
            TokenError::Transport { .. } => Disposition::Retry {
                after: None,
                reason,
                status: None,
                timed_out: false,
            },
            TokenError::BadResponse { status, .. } => Disposition::Retry {
                after: None,
                reason,
                status: Some(*status),
                timed_out: false,
            },
        }
    }
}

/// Token counters, safe to export (no secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenStats {
    /// Token requests sent.
    pub fetches: u64,
    /// Token fetches that produced no token (including unreadable secrets).
    pub failures: u64,
    /// 401s from the API that made the client drop its token and fetch a new one.
    pub reauthentications: u64,
    /// `expires_in` of the last token received.
    pub last_expires_in: Option<Duration>,
}

/// The refresh margin actually used for a token living `expires_in`: the configured margin,
/// capped at a quarter of the lifetime (a 300 s token with the 300 s default margin is refreshed
/// after 225 s, not on every request).
pub fn effective_refresh_margin(expires_in: Duration, refresh_margin: Duration) -> Duration {
    refresh_margin.min(expires_in / 4)
}

/// The last part of a token's life in which a failed refresh still lets the old token be used
/// no longer: `min(margin, L / 10, 30 s)`.
fn expiry_skew(expires_in: Duration, margin: Duration) -> Duration {
    margin.min(expires_in / 10).min(Duration::from_secs(30))
}

/// Where a cached token is in its life (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Use it.
    Fresh,
    /// Still valid; the first request to see this refreshes.
    RefreshDue,
    /// Do not send it.
    Expired,
}

/// Pure freshness rule: `age` since the token request was sent.
pub(crate) fn freshness(
    age: Duration,
    expires_in: Duration,
    refresh_margin: Duration,
) -> Freshness {
    let margin = effective_refresh_margin(expires_in, refresh_margin);
    if age < expires_in - margin {
        Freshness::Fresh
    } else if age < expires_in - expiry_skew(expires_in, margin) {
        Freshness::RefreshDue
    } else {
        Freshness::Expired
    }
}

/// An access token with its age. Debug shows no token.
#[derive(Clone)]
struct CachedToken {
    access: SecretString,
    /// Tells tokens apart without comparing secrets: a 401 drops the token only if it is still
    /// the one cached.
    id: u64,
    fetched_at: Instant,
    expires_in: Duration,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("id", &self.id)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A token handed to one request.
pub(crate) struct Bearer {
    /// The access token.
    pub(crate) token: SecretString,
    /// Its cache id, for [`TokenCache::drop_if_current`].
    pub(crate) id: u64,
}

/// Fetch state shared under the gate.
#[derive(Debug, Default)]
struct Gate {
    /// The last fetch's error and when it happened; `None` after a success.
    last_failure: Option<(TokenError, Instant)>,
}

/// How to ask for a token.
pub(crate) struct TokenEndpoint {
    /// `{login_url}/oauth/token`.
    pub(crate) token_url: reqwest::Url,
    /// As configured, for messages.
    pub(crate) login_url: String,
    /// OAuth client id (not a secret).
    pub(crate) client_id: String,
    /// Read on every fetch.
    pub(crate) secret: SecretSource,
    /// Configured refresh margin (capped per token by [`effective_refresh_margin`]).
    pub(crate) refresh_margin: Duration,
}

/// The client-credentials token cache: one token, single-flight refresh.
pub(crate) struct TokenCache {
    http: reqwest::Client,
    endpoint: TokenEndpoint,
    /// The current token. A std mutex: held only to read or replace, never across an await.
    current: Mutex<Option<CachedToken>>,
    /// Held across a fetch: only one token request at a time.
    gate: tokio::sync::Mutex<Gate>,
    /// Completed fetch rounds; a caller that sees it change while it waited for the gate takes
    /// that round's result instead of fetching again.
    rounds: AtomicU64,
    next_id: AtomicU64,
    fetches: AtomicU64,
    failures: AtomicU64,
    reauthentications: AtomicU64,
    /// Seconds; `u64::MAX` = no token yet.
    last_expires_in: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("token_url", &self.endpoint.token_url.as_str())
            .field("client_id", &self.endpoint.client_id)
            .field("secret", &self.endpoint.secret.describe())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(http: reqwest::Client, endpoint: TokenEndpoint) -> TokenCache {
        TokenCache {
            http,
            endpoint,
            current: Mutex::new(None),
            gate: tokio::sync::Mutex::new(Gate::default()),
            rounds: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reauthentications: AtomicU64::new(0),
            last_expires_in: AtomicU64::new(u64::MAX),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<CachedToken>> {
        // Only plain assignments happen under this lock, so a poisoned lock holds valid data.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token and its freshness now.
    fn lookup(&self) -> Option<(Bearer, Freshness)> {
        let guard = self.current();
        let token = guard.as_ref()?;
        let age = Instant::now().saturating_duration_since(token.fetched_at);
        let state = freshness(age, token.expires_in, self.endpoint.refresh_margin);
        Some((
            Bearer {
                token: token.access.clone(),
                id: token.id,
            },
            state,
        ))
    }

    /// A token good for one request: the cached one if fresh, else a new one (one fetch at a
    /// time; waiters share its result).
    pub(crate) async fn bearer(&self) -> Result<Bearer, TokenError> {
        let seen = self.rounds.load(Ordering::SeqCst);
        let mut gate = match self.lookup() {
            Some((bearer, Freshness::Fresh)) => return Ok(bearer),
            Some((bearer, Freshness::RefreshDue)) => match self.gate.try_lock() {
                Ok(gate) => {
                    let recently_failed = gate
                        .last_failure
                        .as_ref()
                        .is_some_and(|(_, at)| at.elapsed() < REFRESH_RETRY_INTERVAL);
                    if recently_failed {
                        return Ok(bearer);
                    }
                    gate
                }
                // Someone is refreshing: the old token is still valid meanwhile.
                Err(_) => return Ok(bearer),
            },
            Some((_, Freshness::Expired)) | None => self.gate.lock().await,
        };
        // Re-check: a fetch may have finished while we waited for the gate.
        if let Some((bearer, Freshness::Fresh)) = self.lookup() {
            return Ok(bearer);
        }
        if self.rounds.load(Ordering::SeqCst) != seen {
            if let Some((err, _)) = &gate.last_failure {
                let err = err.clone();
                return self.usable_or(err);
            }
        }
        let result = self.fetch().await;
        self.rounds.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(token) => {
                let bearer = Bearer {
                    token: token.access.clone(),
                    id: token.id,
                };
                self.last_expires_in
                    .store(token.expires_in.as_secs(), Ordering::Relaxed);
                tracing::debug!(
                    expires_in_secs = token.expires_in.as_secs(),
                    "new access token cached"
                );
                *self.current() = Some(token);
                gate.last_failure = None;
                Ok(bearer)
            }
            Err(err) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "token fetch failed");
                gate.last_failure = Some((err.clone(), Instant::now()));
                self.usable_or(err)
            }
        }
    }

    /// After a failed fetch: the old token if it is still valid, else the error.
    fn usable_or(&self, err: TokenError) -> Result<Bearer, TokenError> {
        match self.lookup() {
            Some((bearer, Freshness::Fresh | Freshness::RefreshDue)) => Ok(bearer),
            _ => Err(err),
        }
    }

    /// Forgets the token if it is still the one with `id` (a 401 for an older token must not
    /// drop a newer one another request already fetched). Counts a re-authentication.
    pub(crate) fn drop_if_current(&self, id: u64) {
        self.reauthentications.fetch_add(1, Ordering::Relaxed);
        let mut current = self.current();
        if current.as_ref().is_some_and(|t| t.id == id) {
            *current = None;
        }
    }

    /// Forgets the cached token; the next request fetches a new one.
    pub(crate) fn drop_token(&self) {
        *self.current() = None;
    }

    pub(crate) fn stats(&self) -> TokenStats {
        let last = self.last_expires_in.load(Ordering::Relaxed);
        TokenStats {
            fetches: self.fetches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            reauthentications: self.reauthentications.load(Ordering::Relaxed),
            last_expires_in: (last != u64::MAX).then(|| Duration::from_secs(last)),
        }
    }

    /// Reads the secret and asks for a token. On a rejection, re-reads the secret once and, if
    /// it changed meanwhile (rotation), asks once more; the same secret again would only be
    /// rejected again.
    async fn fetch(&self) -> Result<CachedToken, TokenError> {
        let secret = self.endpoint.secret.load()?;
        match self.request(&secret).await {
            Err(rejected @ TokenError::Rejected { .. }) => {
                let reread = self.endpoint.secret.load()?;
                if reread.expose_secret() == secret.expose_secret() {
                    return Err(rejected);
                }
                tracing::info!(
                    "client credentials rejected, but the secret changed since it was read; asking once more"
                );
                self.request(&reread).await
            }
            other => other,
        }
    }

    /// One `POST {login_url}/oauth/token`.
    async fn request(&self, secret: &SecretString) -> Result<CachedToken, TokenError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let response = self
            .http
            .post(self.endpoint.token_url.clone())
            .basic_auth(&self.endpoint.client_id, Some(secret.expose_secret()))
            .header(ACCEPT, "application/json")
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| TokenError::Transport {
                timed_out: e.is_timeout(),
                reason: crate::client::transport_reason(e),
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = crate::client::read_body(response)
            .await
            .map_err(|e| TokenError::Transport {
                timed_out: e.is_timeout(),
                reason: crate::client::transport_reason(e),
            })?;
        if (200..300).contains(&status) {
            let (access, expires_in) =
                parse_token(&body).map_err(|reason| TokenError::BadResponse { status, reason })?;
            return Ok(CachedToken {
                access,
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                fetched_at: started,
                expires_in,
            });
        }
        Err(self.token_failure(status, &headers, &body))
    }

    fn token_failure(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> TokenError {
        let info = ErrorInfo::parse(body);
        let retry_after = header_text(headers, RETRY_AFTER.as_str())
            .and_then(|v| parse_retry_after(&v, std::time::SystemTime::now()));
        let detail = || info.describe(status, None);
        match status {
            400 | 401 => TokenError::Rejected {
                status,
                error: info.code.clone(),
                description: info.message.clone(),
                login_url: self.endpoint.login_url.clone(),
            },
            429 => TokenError::RateLimited {
                retry_after: retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT),
            },
            500..=599 => TokenError::Unavailable {
                status,
                retry_after,
                detail: detail(),
            },
            _ => TokenError::UnexpectedStatus {
                status,
                detail: detail(),
                login_url: self.endpoint.login_url.clone(),
            },
        }
    }
}

/// `access_token` (non-empty string) and `expires_in` (≥ 1 s) of a token answer.
/// The error text names what is missing, never the token.
fn parse_token(body: &[u8]) -> Result<(SecretString, Duration), String> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_owned())?;
    let expires_in = match value.get("expires_in") {
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| "expires_in is not a number of seconds".to_owned())?,
        None => return Err("expires_in is missing".to_owned()),
    };
    if expires_in == 0 {
        return Err("expires_in is 0".to_owned());
    }
    let access = match value.get_mut("access_token") {
        Some(Value::String(token)) if !token.is_empty() => {
            let secret = SecretString::from(token.as_str());
            token.zeroize();
            secret
        }
        Some(_) => return Err("access_token is not a non-empty string".to_owned()),
        None => return Err("access_token is missing".to_owned()),
    };
    Ok((access, Duration::from_secs(expires_in)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn effective_margin_is_capped_at_a_quarter_of_the_lifetime() {
        let cases = [
            // (expires_in, configured margin, effective margin)
            (86_400, 300, 300),
            (3_600, 300, 300),
            (1_200, 300, 300),
            (600, 300, 150),
            (300, 300, 75),
            (300, 60, 60),
            (300, 0, 0),
            (2, 300, 0), // 2 s / 4 = 500 ms
        ];
        for (life, margin, expected) in cases {
            assert_eq!(
                effective_refresh_margin(S(life), S(margin)).as_secs(),
                expected,
                "life {life} margin {margin}"
            );
        }
        assert_eq!(
            effective_refresh_margin(S(2), S(300)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn freshness_over_a_tokens_life() {
        use Freshness::*;
        let ms = Duration::from_millis;
        let cases: &[(Duration, Duration, Duration, Freshness)] = &[
            // 24 h token, 300 s margin: fresh for 86 100 s, usable until 86 370 s.
            (S(86_400), S(300), S(0), Fresh),
            (S(86_400), S(300), S(86_099), Fresh),
            (S(86_400), S(300), S(86_100), RefreshDue),
            (S(86_400), S(300), S(86_369), RefreshDue),
            (S(86_400), S(300), S(86_370), Expired),
            (S(86_400), S(300), S(90_000), Expired),
            // 5-minute token (the shortest Genesys allows): not "always expired".
            (S(300), S(300), S(0), Fresh),
            (S(300), S(300), S(224), Fresh),
            (S(300), S(300), S(225), RefreshDue),
            (S(300), S(300), S(269), RefreshDue),
            (S(300), S(300), S(270), Expired),
            // Margin 0: used until the end.
            (S(300), S(0), S(299), Fresh),
            (S(300), S(0), S(300), Expired),
            // 2 s test token: refresh after 1.5 s, usable until 1.8 s.
            (S(2), S(300), ms(1_499), Fresh),
            (S(2), S(300), ms(1_500), RefreshDue),
            (S(2), S(300), ms(1_799), RefreshDue),
            (S(2), S(300), ms(1_800), Expired),
            // 1 s token.
            (S(1), S(300), ms(749), Fresh),
            (S(1), S(300), ms(900), Expired),
        ];
        for (life, margin, age, expected) in cases {
            assert_eq!(
                freshness(*age, *life, *margin),
                *expected,
                "life {life:?} margin {margin:?} age {age:?}"
            );
        }
    }

    #[test]
    fn secret_source_trims_the_trailing_newline_and_rejects_empty() {
        let dir = std::env::temp_dir().join(format!("genesys-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("secret");
        std::fs::write(&path, "s3cr3t-value\n").expect("write");
        let source = SecretSource::File(path.clone());
        assert_eq!(
            source.load().expect("loads").expose_secret(),
            "s3cr3t-value"
        );

        std::fs::write(&path, "\r\n").expect("write");
        assert_eq!(
            source.load().map(|_| ()),
            Err(TokenError::SecretEmpty {
                from: format!("file {}", path.display())
            })
        );

        let missing = SecretSource::File(dir.join("missing"));
        assert!(matches!(
            missing.load(),
            Err(TokenError::SecretUnavailable { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");

        assert!(matches!(
            SecretSource::Env("ALERTBRIDGE_GENESYS_TEST_SURELY_UNSET".into()).load(),
            Err(TokenError::SecretUnavailable { .. })
        ));
        assert_eq!(
            SecretSource::Static("abc\n".into())
                .load()
                .expect("loads")
                .expose_secret(),
            "abc"
        );
    }

    #[test]
    fn token_answers_are_parsed_defensively() {
        let ok =
            parse_token(br#"{"access_token":"tok-1","token_type":"bearer","expires_in":86399}"#)
                .expect("parses");
        assert_eq!(ok.0.expose_secret(), "tok-1");
        assert_eq!(ok.1, S(86_399));
        assert_eq!(
            parse_token(br#"{"access_token":"t","expires_in":"300"}"#)
                .expect("string seconds")
                .1,
            S(300)
        );
        for bad in [
            &b"<html>"[..],
            br#"{"expires_in": 300}"#,
            br#"{"access_token": "", "expires_in": 300}"#,
            br#"{"access_token": 5, "expires_in": 300}"#,
            br#"{"access_token": "t"}"#,
            br#"{"access_token": "t", "expires_in": 0}"#,
            br#"{"access_token": "t", "expires_in": "soon"}"#,
        ] {
            assert!(
                parse_token(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let err = parse_token(br#"{"access_token":"very-secret-token"}"#).unwrap_err();
        assert!(!err.contains("very-secret-token"));
    }

    #[test]
    fn token_errors_map_to_the_right_disposition() {
        let pause = |e: TokenError| matches!(e.to_disposition(), Disposition::Pause { .. });
        let retry = |e: TokenError| matches!(e.to_disposition(), Disposition::Retry { .. });
        assert!(pause(TokenError::SecretEmpty { from: "x".into() }));
        assert!(pause(TokenError::SecretUnavailable {
            from: "x".into(),
            reason: "y".into()
        }));
        assert!(pause(TokenError::Rejected {
            status: 401,
            error: Some("invalid_client".into()),
            description: None,
            login_url: "https://login.mypurecloud.ie".into()
        }));
        assert!(pause(TokenError::UnexpectedStatus {
            status: 404,
            detail: "d".into(),
            login_url: "l".into()
        }));
        assert!(pause(TokenError::RateLimited {
            retry_after: S(600)
        }));
        assert!(retry(TokenError::RateLimited { retry_after: S(3) }));
        assert!(retry(TokenError::Unavailable {
            status: 503,
            retry_after: None,
            detail: "d".into()
        }));
        assert!(retry(TokenError::Transport {
            reason: "r".into(),
            timed_out: true
        }));
        assert!(retry(TokenError::BadResponse {
            status: 200,
            reason: "r".into()
        }));
    }

    #[test]
    fn no_output_contains_the_secret_or_token() {
        let secret = "S3CR3T-unit-0451";
        let source = SecretSource::Static(secret.into());
        let token = CachedToken {
            access: "T0K3N-unit-9911".into(),
            id: 1,
            fetched_at: Instant::now(),
            expires_in: S(300),
        };
        let (parsed, _) =
            parse_token(br#"{"access_token":"T0K3N-unit-9911","expires_in":300}"#).expect("parses");
        let errors = [
            SecretSource::Env("UNSET_FOR_TEST_0451".into())
                .load()
                .expect_err("unset"),
            SecretSource::Static(" \n".into())
                .load()
                .expect_err("empty"),
            TokenError::Rejected {
                status: 401,
                error: Some("invalid_client".into()),
                description: Some("authentication failed".into()),
                login_url: "https://login.mypurecloud.ie".into(),
            },
            TokenError::RateLimited { retry_after: S(3) },
            TokenError::Unavailable {
                status: 503,
                retry_after: None,
                detail: "d".into(),
            },
            TokenError::Transport {
                reason: "r".into(),
                timed_out: false,
            },
            TokenError::BadResponse {
                status: 200,
                reason: parse_token(br#"{"access_token":"T0K3N-unit-9911"}"#).unwrap_err(),
            },
        ];
        let mut out = vec![
            format!("{source:?}"),
            format!("{:?}", source.load().expect("loads")),
            format!("{token:?}"),
            format!("{parsed:?}"),
        ];
        for e in &errors {
            out.push(format!("{e} {e:?} {:?}", e.to_disposition()));
        }
        let out = out.join("\n");
        assert!(!out.contains(secret) && !out.contains("T0K3N"), "{out}");
    }

    #[test]
    fn rejected_credentials_message_says_check_the_region() {
        let e = TokenError::Rejected {
            status: 401,
            error: Some("invalid_client".into()),
            description: Some("authentication failed".into()),
            login_url: "https://login.mypurecloud.ie".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("check client_id/secret and the region"),
            "{text}"
        );
        assert!(
            text.contains("invalid_client: authentication failed"),
            "{text}"
        );
        assert!(text.contains("https://login.mypurecloud.ie"), "{text}");
    }
}
