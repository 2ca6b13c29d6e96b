//! Fault injection: the [`Faults`] knobs, the order in which they are applied, and the sliding-window
//! request limiter behind [`Faults::max_requests_per_sec`].
//!
//! The decision is a pure function of the knobs, the clock and a random roll ([`decide_api`],
//! [`decide_token`]), so it is tested without HTTP.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Faults the simulator injects. Change them at run time with [`crate::Sim::set_faults`],
/// [`crate::Sim::update_faults`] or `PUT /sim/faults`; a new value applies to requests arriving after it.
///
/// For an API call (every path except `/oauth/token` and `/sim/*`) the checks run in this order, the
/// first that fires answers: `latency_ms` (delay only) → `outage_until` → `force_status` →
/// `max_requests_per_sec` → `rate_limit_429` → `error_rate_503` → then the normal checks (token,
/// size, media type, body); a call that passes them all is accepted, and its 2xx is held back
/// `answer_latency_ms`. For the token endpoint: `latency_ms` → `outage_until` → `token_failure`
/// → credentials and body.
///
/// Serialized as JSON for `PUT /sim/faults`; every field may be left out (it takes its default).
/// `outage_until` is serde's `SystemTime` form: `{"secs_since_epoch": N, "nanos_since_epoch": 0}`
/// (`POST /sim/outage` with a number of seconds is easier by hand).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Probability (0.0–1.0) that an API call answers 503 `service.unavailable`.
    pub error_rate_503: f64,
    /// Every API and token call answers 503 until this instant (see [`crate::Sim::outage_for`]).
    pub outage_until: Option<SystemTime>,
    /// Probability (0.0–1.0) that an API call answers 429 `too.many.requests`.
    pub rate_limit_429: f64,
    /// `Retry-After` value (seconds) sent on injected 429s and 503s. `None`: 429 and 503 carry no
    /// `Retry-After` (the limiter of `max_requests_per_sec` always sends `1`).
    pub retry_after_secs: Option<u64>,
    /// Delay added before answering an API or token call.
    pub latency_ms: u64,
    /// Delay between accepting an API call and writing its 2xx. The call is recorded in
    /// [`crate::Sim::accepted`] (the flow was launched) *before* the wait, so a client that gives
    /// up meanwhile (its timeout) still caused an execution: the slow API whose late answers
    /// make a retrying client launch the same alert again. Unlike `latency_ms`, which delays
    /// before anything happens (a client that gives up then caused nothing: the handler is
    /// dropped with the connection).
    pub answer_latency_ms: u64,
    /// Every API call answers this status with a matching ErrorBody (e.g. 403, 404, 500, 502).
    /// Values below 400 are ignored.
    pub force_status: Option<u16>,
    /// The token endpoint answers this status (e.g. 500, 503) with an OAuth error body.
    /// Values below 400 are ignored.
    pub token_failure: Option<u16>,
    /// A real limiter over API calls: more than this many admitted calls within any one second
    /// → 429 `too.many.requests` with `Retry-After: 1`. `Some(0)` refuses every API call.
    pub max_requests_per_sec: Option<u32>,
}

impl Faults {
    /// These faults with an outage from now until now + `d` (builder form of
    /// [`crate::Sim::outage_for`], handy in a [`crate::SimConfig`]).
    pub fn with_outage_for(mut self, d: Duration) -> Self {
        self.outage_until = Some(SystemTime::now() + d);
        self
    }

    /// Whether an outage is in force at `now`.
    pub(crate) fn in_outage(&self, now: SystemTime) -> bool {
        self.outage_until.is_some_and(|until| now < until)
    }
}

/// What an injected fault answers instead of the normal handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    /// 503 because `outage_until` is in the future.
    Outage { retry_after: Option<u64> },
    /// `force_status` / `token_failure`.
    Forced {
        status: u16,
        retry_after: Option<u64>,
    },
    /// 429 from the `max_requests_per_sec` limiter.
    Limited { limit: u32 },
    /// 429 from `rate_limit_429`.
    RandomRateLimit { retry_after: Option<u64> },
    /// 503 from `error_rate_503`.
    Random503 { retry_after: Option<u64> },
}

/// Decides whether an API call is answered by a fault. `roll` yields uniform numbers in `[0, 1)`;
/// the limiter admits (and counts) the call only when no earlier fault fired.
pub(crate) fn decide_api(
    faults: &Faults,
    limiter: &mut Limiter,
    now: SystemTime,
    mono: Instant,
    roll: &mut impl FnMut() -> f64,
) -> Option<Injected> {
    if faults.in_outage(now) {
        return Some(Injected::Outage {
            retry_after: faults.retry_after_secs,
        });
    }
    if let Some(status) = faults.force_status.filter(|s| *s >= 400) {
        return Some(Injected::Forced {
            status,
            retry_after: retry_after_for(status, faults.retry_after_secs),
        });
    }
    if let Some(limit) = faults.max_requests_per_sec {
        if !limiter.admit(limit, mono) {
            return Some(Injected::Limited { limit });
        }
    }
    if faults.rate_limit_429 > 0.0 && roll() < faults.rate_limit_429 {
        return Some(Injected::RandomRateLimit {
            retry_after: faults.retry_after_secs,
        });
    }
    if faults.error_rate_503 > 0.0 && roll() < faults.error_rate_503 {
        return Some(Injected::Random503 {
            retry_after: faults.retry_after_secs,
        });
    }
    None
}

/// Decides whether a token call is answered by a fault (outage, then `token_failure`).
pub(crate) fn decide_token(faults: &Faults, now: SystemTime) -> Option<Injected> {
    if faults.in_outage(now) {
        return Some(Injected::Outage {
            retry_after: faults.retry_after_secs,
        });
    }
    faults
        .token_failure
        .filter(|s| *s >= 400)
        .map(|status| Injected::Forced {
            status,
            retry_after: retry_after_for(status, faults.retry_after_secs),
        })
}

/// `Retry-After` goes only with 429 and 503, as on the real platform.
fn retry_after_for(status: u16, configured: Option<u64>) -> Option<u64> {
    matches!(status, 429 | 503).then_some(configured).flatten()
}

/// Sliding one-second window over admitted calls: a call is admitted when fewer than `limit` calls
/// were admitted in the second before it. Refused calls are not counted, so a client that backs off
/// for the `Retry-After` gets through.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    /// Arrival times of admitted calls within the last second, oldest first. Never longer than the
    /// largest limit used.
    admitted: VecDeque<Instant>,
}

impl Limiter {
    const WINDOW: Duration = Duration::from_secs(1);

    /// Admits the call arriving at `now` if the window has room, and counts it.
    pub(crate) fn admit(&mut self, limit: u32, now: Instant) -> bool {
        while let Some(oldest) = self.admitted.front() {
            if now.saturating_duration_since(*oldest) >= Self::WINDOW {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
        // A lowered limit may leave more entries than the new limit: refuse until they age out.
        if self.admitted.len() >= limit as usize {
            return false;
        }
        self.admitted.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> impl FnMut() -> f64 {
        || 0.999_999
    }

    fn always() -> impl FnMut() -> f64 {
        || 0.0
    }

    #[test]
    fn limiter_admits_limit_per_second_then_refuses_until_the_window_slides() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        assert!(limiter.admit(2, t0));
        assert!(limiter.admit(2, t0 + Duration::from_millis(100)));
        assert!(!limiter.admit(2, t0 + Duration::from_millis(200)));
        assert!(!limiter.admit(2, t0 + Duration::from_millis(999)));
        assert!(limiter.admit(2, t0 + Duration::from_millis(1000)));
        assert!(!limiter.admit(2, t0 + Duration::from_millis(1050)));
        assert!(limiter.admit(2, t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn limiter_with_zero_limit_refuses_everything() {
        let mut limiter = Limiter::default();
        assert!(!limiter.admit(0, Instant::now()));
    }

    #[test]
    fn no_faults_inject_nothing() {
        let mut limiter = Limiter::default();
        let got = decide_api(
            &Faults::default(),
            &mut limiter,
            SystemTime::now(),
            Instant::now(),
            &mut always(),
        );
        assert_eq!(got, None);
        assert_eq!(decide_token(&Faults::default(), SystemTime::now()), None);
    }

    #[test]
    fn faults_apply_in_documented_order() {
        let now = SystemTime::now();
        let mono = Instant::now();
        let all = Faults {
            error_rate_503: 1.0,
            outage_until: Some(now + Duration::from_secs(5)),
            rate_limit_429: 1.0,
            retry_after_secs: Some(7),
            latency_ms: 0,
            answer_latency_ms: 0,
            force_status: Some(403),
            token_failure: Some(500),
            max_requests_per_sec: Some(0),
        };
        let table: Vec<(Faults, Option<Injected>)> = vec![
            (
                all.clone(),
                Some(Injected::Outage {
                    retry_after: Some(7),
                }),
            ),
            (
                Faults {
                    outage_until: None,
                    ..all.clone()
                },
                Some(Injected::Forced {
                    status: 403,
                    retry_after: None,
                }),
            ),
            (
                Faults {
                    outage_until: None,
                    force_status: None,
                    ..all.clone()
                },
                Some(Injected::Limited { limit: 0 }),
            ),
            (
                Faults {
                    outage_until: None,
                    force_status: None,
                    max_requests_per_sec: None,
                    ..all.clone()
                },
                Some(Injected::RandomRateLimit {
                    retry_after: Some(7),
                }),
            ),
            (
                Faults {
                    outage_until: None,
                    force_status: None,
                    max_requests_per_sec: None,
                    rate_limit_429: 0.0,
                    ..all.clone()
                },
                Some(Injected::Random503 {
                    retry_after: Some(7),
                }),
            ),
            (
                Faults {
                    outage_until: Some(now - Duration::from_secs(1)),
                    force_status: Some(200),
                    max_requests_per_sec: None,
                    rate_limit_429: 0.0,
                    error_rate_503: 0.0,
                    ..all.clone()
                },
                None,
            ),
        ];
        for (faults, want) in table {
            let mut limiter = Limiter::default();
            let got = decide_api(&faults, &mut limiter, now, mono, &mut always());
            assert_eq!(got, want, "faults {faults:?}");
        }
    }

    #[test]
    fn probabilities_use_the_roll() {
        let faults = Faults {
            error_rate_503: 0.5,
            rate_limit_429: 0.5,
            ..Faults::default()
        };
        let mut limiter = Limiter::default();
        let got = decide_api(
            &faults,
            &mut limiter,
            SystemTime::now(),
            Instant::now(),
            &mut never(),
        );
        assert_eq!(got, None);
    }

    #[test]
    fn forced_503_carries_retry_after_and_forced_500_does_not() {
        let faults = Faults {
            retry_after_secs: Some(3),
            token_failure: Some(503),
            ..Faults::default()
        };
        assert_eq!(
            decide_token(&faults, SystemTime::now()),
            Some(Injected::Forced {
                status: 503,
                retry_after: Some(3)
            })
        );
        let faults = Faults {
            token_failure: Some(500),
            ..faults
        };
        assert_eq!(
            decide_token(&faults, SystemTime::now()),
            Some(Injected::Forced {
                status: 500,
                retry_after: None
            })
        );
    }

    #[test]
    fn faults_json_may_leave_fields_out() {
        let faults: Faults =
            serde_json::from_str(r#"{"error_rate_503": 0.25}"#).expect("valid faults json");
        assert_eq!(faults.error_rate_503, 0.25);
        assert_eq!(faults.max_requests_per_sec, None);
    }
}
