//! The outcome of one delivery: what the caller does with the alert next.

use std::time::Duration;

/// What to do with an alert after one delivery attempt. Every variant except `Delivered` carries
/// a reason for the operator (status, API `code`/`message`, correlation id; never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Genesys accepted it (2xx): remove it from pending and keep the receipt.
    Delivered(Receipt),
    /// Transient (connect error, timeout, 5xx except 501, 408, 409, 423, 425, 429, token endpoint
    /// down): keep it pending and send again after `after` if given, else after the caller's
    /// backoff.
    /// Neither target is idempotent: after a timeout the first attempt may have run.
    Retry {
        /// Server-requested wait (`Retry-After`; 3 s on a 429 without one).
        after: Option<Duration>,
        /// Operator text.
        reason: String,
        /// HTTP status, `None` for transport failures.
        status: Option<u16>,
        /// The request went out and no answer came within its timeout (not a connect
        /// timeout): Genesys may have accepted it, so sending it again may launch it twice.
        /// The caller bounds how often that happens per alert.
        timed_out: bool,
    },
    /// This alert can never be delivered as it is (400, 413, 415, 422, other 4xx): move it to
    /// dead letters with the reason.
    DeadLetter {
        /// HTTP status.
        status: u16,
        /// Operator text with `code`, `message`, `details`, correlation id.
        reason: String,
        /// The API's `message`, if the error body had one.
        api_message: Option<String>,
        /// The API's error `code` (e.g. `bad.request`), if the error body had one. With the
        /// status it identifies "the same rejection" (the agent pauses after a run of them:
        /// a wrong configuration rejects every alert alike).
        code: Option<String>,
    },
    /// Configuration fault, not the alert's: keep it pending, stop sending to this target and
    /// alert the operator (403, 404, 410, 501, a second 401, rejected client credentials or a
    /// wrong region, an unreadable secret, 429 with `Retry-After` > 180 s).
    Pause {
        /// Operator text saying what to check.
        reason: String,
        /// HTTP status, `None` when no answer was involved (e.g. unreadable secret).
        status: Option<u16>,
        /// Resume after this long if the server said so (long `Retry-After`), else operator or
        /// the caller's probe interval decides.
        after: Option<Duration>,
    },
}

impl Disposition {
    /// Short stable name for metrics labels and log fields: `delivered`, `retry`,
    /// `dead_letter`, `pause`.
    pub fn kind(&self) -> &'static str {
        match self {
            Disposition::Delivered(_) => "delivered",
            Disposition::Retry { .. } => "retry",
            Disposition::DeadLetter { .. } => "dead_letter",
            Disposition::Pause { .. } => "pause",
        }
    }

    /// The HTTP status of the answer that decided it, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Disposition::Delivered(r) => Some(r.status),
            Disposition::Retry { status, .. } | Disposition::Pause { status, .. } => *status,
            Disposition::DeadLetter { status, .. } => Some(*status),
        }
    }

    /// The operator reason; `None` for `Delivered`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Disposition::Delivered(_) => None,
            Disposition::Retry { reason, .. }
            | Disposition::DeadLetter { reason, .. }
            | Disposition::Pause { reason, .. } => Some(reason),
        }
    }

    /// Whether this is a `Retry` after a request that went out and got no answer in time.
    pub fn timed_out(&self) -> bool {
        matches!(
            self,
            Disposition::Retry {
                timed_out: true,
                ..
            }
        )
    }

    /// The server-requested wait of a `Retry` or `Pause`.
    pub fn after(&self) -> Option<Duration> {
        match self {
            Disposition::Retry { after, .. } | Disposition::Pause { after, .. } => *after,
            _ => None,
        }
    }
}

/// Proof of acceptance, stored with the delivered alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// HTTP status (2xx).
    pub status: u16,
    /// Flow execution `id` (workflow) or `invocationId` (events); `None` if the body had neither.
    pub execution_id: Option<String>,
    /// `ININ-Correlation-Id` of the answer, for Genesys support.
    pub correlation_id: Option<String>,
}
