//! The simulator's mutable state: credentials, issued tokens, faults, logs and counters, behind one
//! `std::sync::Mutex` held only for short, non-async sections (never across an `.await`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::faults::{Faults, Limiter};
use crate::record::{Accepted, Endpoint, LoggedRequest, RequestLog, SimStats};
use crate::SimConfig;

/// State shared by the [`crate::Sim`] handle and the request handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Total accepted calls since start; handlers raise it after recording, waiters watch it.
    accepted_total: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(cfg: &SimConfig) -> Self {
        Shared {
            state: Mutex::new(State::new(cfg)),
            accepted_total: watch::Sender::new(0),
        }
    }

    /// Locks the state. A handler that panicked while holding the lock leaves plain data behind
    /// (no invariant spans two fields' updates in a way a panic could break), so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an accepted call and wakes [`crate::Sim::wait_for_accepted`] waiters.
    pub(crate) fn record_accepted(&self, accepted: Accepted, execution: Option<Execution>) {
        let total = {
            let mut state = self.lock();
            state.push_accepted(accepted, execution)
        };
        // Raise only: two handlers may get here out of order.
        self.accepted_total.send_if_modified(|seen| {
            let raised = total > *seen;
            if raised {
                *seen = total;
            }
            raised
        });
    }

    pub(crate) fn subscribe_accepted(&self) -> watch::Receiver<u64> {
        self.accepted_total.subscribe()
    }
}

/// A launched flow execution, kept for `GET /api/v2/flows/executions/{id}` while its [`Accepted`]
/// record is kept.
#[derive(Clone, Debug)]
pub(crate) struct Execution {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) flow_id: String,
    pub(crate) flow_version: String,
    pub(crate) launched: SystemTime,
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// Never issued, revoked, or expired long enough ago to be forgotten.
    Unknown,
    /// Issued and past its expiry.
    Expired,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    /// Lifetime of tokens issued from now on.
    pub(crate) token_ttl: Duration,
    /// Status for bad client credentials (401, or 400 like some Genesys answers).
    pub(crate) token_error_status: u16,
    pub(crate) max_body_bytes: usize,
    pub(crate) known_flow_ids: Option<Vec<String>>,
    /// Permissions the OAuth client's role lacks: a call needing one answers 403 naming it.
    pub(crate) denied_permissions: Vec<String>,
    pub(crate) webhook_token: String,
    pub(crate) faults: Faults,
    pub(crate) limiter: Limiter,
    /// Issued tokens and their expiry. Expired ones are dropped when the map reaches `prune_at`.
    tokens: HashMap<String, Instant>,
    prune_at: usize,
    pub(crate) log: RequestLog,
    accepted: VecDeque<Accepted>,
    /// Flow executions by id; an entry leaves together with its [`Accepted`] record.
    executions: HashMap<String, Execution>,
    pub(crate) stats: SimStats,
}

impl State {
    const MIN_PRUNE_AT: usize = 1024;

    fn new(cfg: &SimConfig) -> Self {
        State {
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            token_ttl: cfg.token_ttl,
            token_error_status: cfg.token_error_status,
            max_body_bytes: cfg.max_body_bytes,
            known_flow_ids: cfg.known_flow_ids.clone(),
            denied_permissions: Vec::new(),
            webhook_token: cfg.webhook_token.clone(),
            faults: cfg.faults.clone(),
            limiter: Limiter::default(),
            tokens: HashMap::new(),
            prune_at: Self::MIN_PRUNE_AT,
            log: RequestLog::new(crate::record::REQUEST_LOG_CAPACITY),
            accepted: VecDeque::new(),
            executions: HashMap::new(),
            stats: SimStats::default(),
        }
    }

    /// Issues a fresh token valid for `token_ttl` from `now`; returns it with its `expires_in`
    /// (whole seconds, rounded up, at least 1).
    pub(crate) fn issue_token(&mut self, now: Instant) -> (String, u64) {
        if self.tokens.len() >= self.prune_at {
            self.tokens.retain(|_, expiry| *expiry > now);
            self.prune_at = (self.tokens.len() * 2).max(Self::MIN_PRUNE_AT);
        }
        let token = crate::ids::access_token();
        self.tokens.insert(token.clone(), now + self.token_ttl);
        self.stats.tokens_issued += 1;
        (token, expires_in_secs(self.token_ttl))
    }

    /// Checks a bearer token at `now`.
    pub(crate) fn check_token(&self, token: &str, now: Instant) -> Result<(), TokenRefusal> {
        match self.tokens.get(token) {
            None => Err(TokenRefusal::Unknown),
            Some(expiry) if now >= *expiry => Err(TokenRefusal::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Forgets every issued token.
    pub(crate) fn revoke_tokens(&mut self) {
        self.tokens.clear();
        self.prune_at = Self::MIN_PRUNE_AT;
    }

    /// Logs an arriving request, counts it, and returns its sequence number.
    pub(crate) fn log_arrival(&mut self, entry: LoggedRequest) -> u64 {
        if entry.endpoint == Endpoint::Token {
            self.stats.token_requests += 1;
        } else {
            self.stats.api_requests += 1;
        }
        self.log.push(entry)
    }

    /// Completes the log entry `seq` with its answer.
    pub(crate) fn log_answer(&mut self, seq: u64, status: u16, retry_after: Option<u64>) {
        *self.stats.by_status.entry(status).or_default() += 1;
        if let Some(entry) = self.log.get_mut(seq) {
            entry.status = status;
            entry.retry_after = retry_after;
        }
    }

    /// Records an accepted call; returns the total accepted since start.
    fn push_accepted(&mut self, accepted: Accepted, execution: Option<Execution>) -> u64 {
        if self.accepted.len() >= crate::record::ACCEPTED_CAPACITY {
            if let Some(old) = self.accepted.pop_front() {
                self.executions.remove(&old.id);
            }
        }
        if let Some(execution) = execution {
            self.executions.insert(execution.id.clone(), execution);
        }
        self.accepted.push_back(accepted);
        self.stats.accepted += 1;
        self.stats.accepted
    }

    pub(crate) fn accepted(&self) -> Vec<Accepted> {
        self.accepted.iter().cloned().collect()
    }

    pub(crate) fn execution(&self, id: &str) -> Option<Execution> {
        self.executions.get(id).cloned()
    }
}

/// `expires_in` for a lifetime: whole seconds rounded up, at least 1.
pub(crate) fn expires_in_secs(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_rounds_up_and_is_at_least_one() {
        let table = [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1500), 2),
            (Duration::from_secs(86_400), 86_400),
        ];
        for (ttl, want) in table {
            assert_eq!(expires_in_secs(ttl), want, "{ttl:?}");
        }
    }

    #[test]
    fn token_is_valid_until_its_expiry_then_expired_then_unknown_after_revoke() {
        let mut state = State::new(&SimConfig {
            token_ttl: Duration::from_millis(500),
            ..SimConfig::default()
        });
        let t0 = Instant::now();
        let (token, expires_in) = state.issue_token(t0);
        assert_eq!(expires_in, 1);
        assert_eq!(state.check_token(&token, t0), Ok(()));
        assert_eq!(
            state.check_token(&token, t0 + Duration::from_millis(499)),
            Ok(())
        );
        assert_eq!(
            state.check_token(&token, t0 + Duration::from_millis(500)),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            state.check_token("not-a-token", t0),
            Err(TokenRefusal::Unknown)
        );
        state.revoke_tokens();
        assert_eq!(state.check_token(&token, t0), Err(TokenRefusal::Unknown));
    }

    #[test]
    fn expired_tokens_are_pruned_when_many_were_issued() {
        let mut state = State::new(&SimConfig {
            token_ttl: Duration::from_millis(1),
            ..SimConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..State::MIN_PRUNE_AT {
            state.issue_token(t0);
        }
        let (fresh, _) = state.issue_token(t0 + Duration::from_secs(1));
        assert_eq!(state.tokens.len(), 1);
        assert!(state.tokens.contains_key(&fresh));
    }
}
