//! The circuit breaker, which also carries configuration-fault pauses, and the run of
//! identical permanent rejections that pauses delivery.
//!
//! Pure state machines: every method takes `now` and answers how long to wait; the drain owns
//! the clock, the sleeping and the events. The breaker's [`BreakerState`] is the one record of
//! whether delivery is held; status and the admin endpoint show what the drain publishes of it.
//!
//! What must stay true:
//! - B1 While the breaker is open nothing is sent; after the cool-down exactly one request (the
//!   probe) goes, and only the probe's answer closes or re-opens it ([`Breaker::begin`]).
//! - R1 A wrong configuration does not dead-letter the backlog: after `pause_after_rejections`
//!   permanent rejections in a row with the same status and API error code, delivery pauses,
//!   and until an accepted request (or a different rejection) ends the run, no alert answered
//!   with that same rejection is dead-lettered: it stays pending ([`Rejections`]).

use std::time::{Duration, Instant};

/// What holds the breaker open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Retryable failures (5xx, timeouts, connect errors, token endpoint down).
    Failures,
    /// A configuration fault (403, 404, rejected credentials …): delivery is paused.
    Paused,
}

/// Circuit breaker state, visible in status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sending normally.
    Closed,
    /// Sending stopped until the cool-down ends.
    Open {
        /// When one probe may go.
        until: Instant,
        /// Why.
        hold: Hold,
    },
    /// One probe is in flight; its answer closes or re-opens the breaker.
    HalfOpen {
        /// Why it was open.
        hold: Hold,
        /// The probe's number ([`Breaker::begin`]); only its answer counts.
        probe: u64,
    },
}

/// The run of identical permanent rejections (R1).
///
/// Why: a 400 means "this alert can never succeed as it is" — unless every alert gets it, which
/// means the request shape no longer fits (a flow's input schema changed in Architect, an
/// events integration was reconfigured). Dead-lettering the whole backlog at full rate would
/// turn one configuration change into an operator replaying thousands of alerts; pausing keeps
/// them pending, says so loudly, and probes at the breaker's cool-down until the fix lands.
/// "Same" is the status and the API's error `code` (the message may carry per-alert detail).
/// Retryable answers and pauses neither extend nor end a run.
#[derive(Debug, Clone)]
pub struct Rejections {
    /// Rejections in a row that pause; 0 = never pause (every rejection is a dead letter).
    threshold: u32,
    /// The current run: its status, code and length.
    run: Option<(u16, Option<String>, u32)>,
}

/// What to do with a permanently rejected alert ([`Rejections::on_rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A dead letter; delivery goes on (the run is shorter than the threshold).
    DeadLetter,
    /// A dead letter, and delivery pauses: it is the `count`-th identical rejection in a row.
    DeadLetterAndPause {
        /// Length of the run (the threshold).
        count: u32,
    },
    /// Not a dead letter: kept pending (not an attempt), delivery stays paused. The run that
    /// paused goes on (`count` long now): a late answer of a request sent before the pause, or
    /// a probe that met the same rejection.
    Hold {
        /// Length of the run.
        count: u32,
    },
}

impl Rejections {
    /// No run yet. `threshold` 0 never pauses.
    pub fn new(threshold: u32) -> Rejections {
        Rejections {
            threshold,
            run: None,
        }
    }

    /// A permanent rejection with `status` and the API's error `code`.
    pub fn on_rejection(&mut self, status: u16, code: Option<&str>) -> Verdict {
        let count = match &mut self.run {
            Some((s, c, n)) if *s == status && c.as_deref() == code => {
                *n = n.saturating_add(1);
                *n
            }
            _ => {
                self.run = Some((status, code.map(str::to_owned), 1));
                1
            }
        };
        match self.threshold {
            0 => Verdict::DeadLetter,
            t if count < t => Verdict::DeadLetter,
            t if count == t => Verdict::DeadLetterAndPause { count },
            _ => Verdict::Hold { count },
        }
    }

    /// A request was accepted: the run (if any) is over.
    pub fn on_accepted(&mut self) {
        self.run = None;
    }
}

/// Opens after `threshold` consecutive retryable failures, or for a given time on a
/// configuration fault ([`Breaker::pause`]); after the cool-down lets exactly one probe through
/// (half-open); closes on the probe's success, re-opens on its failure (B1).
///
/// Why: during an outage, sending at full rate only burns attempts and the API's patience;
/// alerts keep being ingested and acked into the log while the breaker is open.
/// Answers of requests sent before the breaker opened arrive late and decide nothing: the
/// probe does.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    state: BreakerState,
    probes: u64,
}

/// A change worth a log line and a status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open: `failures` consecutive retryable failures.
    Opened {
        /// The count that reached the threshold.
        failures: u32,
    },
    /// The probe failed with a retryable failure: open for another cool-down. `was` says what
    /// held it before (a pause whose probe got a retryable answer is no longer a configuration
    /// fault, but an outage).
    Reopened {
        /// Hold before the probe.
        was: Hold,
    },
    /// Open → half-open: the cool-down is over and this request is the probe.
    HalfOpen {
        /// Hold before the probe.
        was: Hold,
    },
    /// The probe succeeded: closed.
    Closed {
        /// Hold before the probe.
        was: Hold,
    },
}

impl Breaker {
    /// Closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            consecutive_failures: 0,
            state: BreakerState::Closed,
            probes: 0,
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The cool-down between probes.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// How long nothing may be sent; `None` = a request may go now (it is the probe if the
    /// breaker is open and due, see [`Breaker::begin`]). Half-open waits for the probe's answer.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        match self.state {
            BreakerState::Closed => None,
            BreakerState::Open { until, .. } if now >= until => None,
            BreakerState::Open { until, .. } => Some(until - now),
            // the probe is out; the drain wakes on its answer
            BreakerState::HalfOpen { .. } => Some(self.cooldown.max(Duration::from_millis(1))),
        }
    }

    /// A request goes now (after [`Breaker::wait`] said `None`). When the breaker was open it
    /// becomes half-open and this request is the probe: its number and the transition are
    /// returned. Call only for a request that really is sent, so a probe is never lost.
    pub fn begin(&mut self, now: Instant) -> Option<(u64, Transition)> {
        match self.state {
            BreakerState::Open { until, hold } if now >= until => {
                self.probes += 1;
                self.state = BreakerState::HalfOpen {
                    hold,
                    probe: self.probes,
                };
                Some((self.probes, Transition::HalfOpen { was: hold }))
            }
            _ => None,
        }
    }

    fn is_current_probe(&self, probe: Option<u64>) -> Option<Hold> {
        match (self.state, probe) {
            (BreakerState::HalfOpen { hold, probe: p }, Some(q)) if p == q => Some(hold),
            _ => None,
        }
    }

    /// The API answered and the answer was not a retryable failure (2xx, permanent rejection,
    /// 429): the API is up. Closes the breaker if this was the probe.
    pub fn on_success(&mut self, probe: Option<u64>) -> Option<Transition> {
        if self.state == BreakerState::Closed {
            self.consecutive_failures = 0;
            return None;
        }
        let was = self.is_current_probe(probe)?;
        self.consecutive_failures = 0;
        self.state = BreakerState::Closed;
        Some(Transition::Closed { was })
    }

    /// A retryable failure (5xx, timeout, connect error, token endpoint down).
    pub fn on_failure(&mut self, now: Instant, probe: Option<u64>) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.threshold {
                    self.state = BreakerState::Open {
                        until: now + self.cooldown,
                        hold: Hold::Failures,
                    };
                    return Some(Transition::Opened {
                        failures: self.consecutive_failures,
                    });
                }
                None
            }
            _ => {
                let was = self.is_current_probe(probe)?;
                self.state = BreakerState::Open {
                    until: now + self.cooldown,
                    hold: Hold::Failures,
                };
                Some(Transition::Reopened { was })
            }
        }
    }

    /// A configuration fault: hold everything for `d` (the server's `Retry-After` or the
    /// cool-down), then probe. Any answer may pause, late or not: sending more cannot help.
    pub fn pause(&mut self, now: Instant, d: Duration) {
        let until = now + d;
        let until = match self.state {
            BreakerState::Open {
                until: u,
                hold: Hold::Paused,
            } if u > until => u,
            _ => until,
        };
        self.state = BreakerState::Open {
            until,
            hold: Hold::Paused,
        };
    }

    /// Probe at once instead of at the end of the cool-down (e.g. after SIGHUP: the operator
    /// says the configuration was fixed). No effect unless open.
    pub fn probe_now(&mut self, now: Instant) {
        if let BreakerState::Open { hold, .. } = self.state {
            self.state = BreakerState::Open { until: now, hold };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn breaker_opens_after_threshold_probes_once_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(b.on_failure(t0, None), None);
        assert_eq!(b.on_failure(t0, None), None);
        assert_eq!(
            b.on_failure(t0, None),
            Some(Transition::Opened { failures: 3 })
        );
        assert_eq!(
            b.wait(t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        let due = t0 + Duration::from_secs(10);
        assert_eq!(b.wait(due), None);
        let (probe, t) = b
            .begin(due)
            .expect("the first request after the cool-down probes");
        assert_eq!(
            t,
            Transition::HalfOpen {
                was: Hold::Failures
            }
        );
        assert!(b.wait(due).is_some(), "only one probe");
        assert_eq!(b.begin(due), None);
        assert_eq!(
            b.on_success(Some(probe)),
            Some(Transition::Closed {
                was: Hold::Failures
            })
        );
        assert_eq!(b.wait(t0 + Duration::from_secs(11)), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.on_failure(t0, None);
        let (probe, _) = b.begin(t0 + Duration::from_secs(5)).expect("probe");
        assert_eq!(
            b.on_failure(t0 + Duration::from_secs(6), Some(probe)),
            Some(Transition::Reopened {
                was: Hold::Failures
            })
        );
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t0 + Duration::from_secs(11),
                hold: Hold::Failures
            }
        );
    }

    #[test]
    fn late_answers_of_requests_sent_before_opening_decide_nothing() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(5));
        b.on_failure(t0, None);
        b.on_failure(t0, None);
        // in flight when it opened: a late success does not close it, a late failure does not
        // extend it
        assert_eq!(b.on_success(None), None);
        assert_eq!(b.on_failure(t0 + Duration::from_secs(1), None), None);
        let due = t0 + Duration::from_secs(5);
        let (probe, _) = b.begin(due).expect("probe");
        // late answers while the probe is out decide nothing either
        assert_eq!(b.on_failure(due, None), None);
        assert_eq!(b.on_success(Some(probe - 1)), None);
        assert!(matches!(b.state(), BreakerState::HalfOpen { .. }));
        assert_eq!(
            b.on_success(Some(probe)),
            Some(Transition::Closed {
                was: Hold::Failures
            })
        );
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1));
        b.on_failure(t0, None);
        b.on_failure(t0, None);
        b.on_success(None);
        b.on_failure(t0, None);
        b.on_failure(t0, None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn pause_holds_then_probes_and_a_success_resumes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, Duration::from_secs(30));
        b.pause(t0, Duration::from_secs(2));
        assert_eq!(
            b.wait(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        let due = t0 + Duration::from_secs(2);
        let (probe, t) = b.begin(due).expect("probe");
        assert_eq!(t, Transition::HalfOpen { was: Hold::Paused });
        // still a configuration fault: paused again
        b.pause(due, Duration::from_secs(2));
        assert!(matches!(
            b.state(),
            BreakerState::Open {
                hold: Hold::Paused,
                ..
            }
        ));
        assert_eq!(
            b.on_success(Some(probe)),
            None,
            "an old probe number decides nothing"
        );
        let due = due + Duration::from_secs(2);
        let (probe, _) = b.begin(due).expect("second probe");
        assert_eq!(
            b.on_success(Some(probe)),
            Some(Transition::Closed { was: Hold::Paused })
        );
    }

    #[test]
    fn a_pause_probe_that_meets_an_outage_turns_into_an_open_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, Duration::from_secs(3));
        b.pause(t0, Duration::from_secs(1));
        let (probe, _) = b.begin(t0 + Duration::from_secs(1)).expect("probe");
        assert_eq!(
            b.on_failure(t0 + Duration::from_secs(1), Some(probe)),
            Some(Transition::Reopened { was: Hold::Paused })
        );
        assert!(matches!(
            b.state(),
            BreakerState::Open {
                hold: Hold::Failures,
                ..
            }
        ));
    }

    /// Issue 9, item 4: a 400 to every request dead-lettered the whole backlog at full rate.
    /// Five identical rejections in a row pause; every further one is held, not dead-lettered,
    /// until a request is accepted or a different rejection breaks the run.
    #[test]
    fn five_identical_rejections_in_a_row_pause_and_the_next_ones_are_held() {
        use Verdict::*;
        let mut r = Rejections::new(5);
        let bad = |r: &mut Rejections| r.on_rejection(400, Some("bad.request"));
        for _ in 0..4 {
            assert_eq!(bad(&mut r), DeadLetter);
        }
        assert_eq!(bad(&mut r), DeadLetterAndPause { count: 5 });
        assert_eq!(bad(&mut r), Hold { count: 6 });
        assert_eq!(bad(&mut r), Hold { count: 7 });
        // the fix: a request passes, the run is over
        r.on_accepted();
        assert_eq!(bad(&mut r), DeadLetter);
        // a different code or status starts a new run
        for _ in 0..3 {
            bad(&mut r);
        }
        assert_eq!(r.on_rejection(400, Some("flow.input.invalid")), DeadLetter);
        assert_eq!(r.on_rejection(422, Some("flow.input.invalid")), DeadLetter);
        assert_eq!(r.on_rejection(422, None), DeadLetter);
        for _ in 0..3 {
            assert_eq!(r.on_rejection(422, None), DeadLetter);
        }
        assert_eq!(r.on_rejection(422, None), DeadLetterAndPause { count: 5 });
    }

    #[test]
    fn a_threshold_of_zero_never_pauses() {
        let mut r = Rejections::new(0);
        for _ in 0..100 {
            assert_eq!(
                r.on_rejection(400, Some("bad.request")),
                Verdict::DeadLetter
            );
        }
    }

    #[test]
    fn probe_now_ends_the_cool_down() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(30));
        b.pause(t0, Duration::from_secs(30));
        b.probe_now(t0 + ms(10));
        assert_eq!(b.wait(t0 + ms(10)), None);
        assert!(b.begin(t0 + ms(10)).is_some());
    }
}
