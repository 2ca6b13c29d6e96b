//! The broker session, decided without I/O: which topic filters to subscribe after a CONNACK or
//! a refusal, what a SUBACK means for each filter, how long to wait before the next connection
//! attempt, and when an unreachable broker is worth another warning. The connection task in
//! [`crate::ingest`] tells [`Subscriptions`] and [`ConnectFailures`] what happened and does what
//! they say; time and jitter are passed in, so every rule is a unit test (rumqttc's `state.rs`
//! beside its `eventloop.rs`).
//!
//! Invariant **S1** (docs/design.md): ingest subscribes until a SUBACK granting QoS ≥ 1 for every
//! configured filter has been seen *in this process*, on the broker session it still has. A
//! CONNACK's `session_present` alone proves nothing: if the connection dropped between the
//! CONNACK and the SUBACK of a fresh session, the broker keeps a session without the
//! subscription and says "session present" on every later connection; an agent that trusted it
//! would sit connected and deaf forever (issue 9, item 2).
//!
//! Subscribing again to a filter the session already holds is harmless for QoS 1 (the broker
//! replaces the subscription, queued alerts stay queued), except that the broker re-sends the
//! *retained* messages matching it (MQTT 3.1.1 §3.8.4, with RETAIN = 1). That happens once per
//! process start and per refused-then-granted filter, never on a reconnect of a process that
//! already holds its subscriptions; docs/design.md says why that is the right trade.
//!
//! Invariant **S2** (docs/design.md): a CONNACK that says "no session" although a session of
//! ours held a subscription on that broker before is reported, never taken silently. While the
//! agent was away the broker queued alerts in that session; if it discarded the session (the
//! MQTT 5 session expiry ran out, a restart without persistence, mosquitto's
//! `persistent_client_expiration` for 3.1.1, an administrator or a clean login with our client
//! id), alerts published meanwhile were never queued for us and are gone at the broker. Ingest
//! subscribes again (S1) and the flow resumes, so without S2 nothing would show that alerts may
//! be missing. [`SessionHistory`] decides; "before" is a SUBACK of this process that granted a
//! filter, or the store's record that an earlier process had one for the same client id and
//! broker (`ingest/marker.rs`), so a restart after a long outage warns too. A first-ever start
//! knows of no session and does not warn; docs/decisions.md says why the evidence is a SUBACK.
//!
//! With `mqtt.share_group` set, the filters given to [`Subscriptions`] are the shared forms
//! `$share/<group>/<filter>` ([`crate::config::MqttConfig::subscribed_filters`]): the broker
//! grants, refuses and names those in its SUBACKs, so S1, readiness ("every subscription held")
//! and the status errors all speak of the filter actually on the wire (docs/scale.md).

use std::time::{Duration, Instant};

use rumqttc::QoS;

/// One SUBACK return code, whatever the MQTT version: MQTT 3.1.1 knows only "granted QoS n" and
/// 0x80 (failure); MQTT 5 names why a filter was refused (0x87 NotAuthorized, 0x8F
/// TopicFilterInvalid, 0x97 QuotaExceeded, …), which status and the log repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubCode {
    /// Subscribed at this QoS.
    Granted(QoS),
    /// Refused with this reason code; `name` is the MQTT 5 reason name (empty in 3.1.1).
    Refused {
        /// The code byte (0x80 or higher).
        code: u8,
        /// MQTT 5 name of the code, e.g. `NotAuthorized`; empty for MQTT 3.1.1's 0x80.
        name: &'static str,
    },
}

impl SubCode {
    /// MQTT 3.1.1's only refusal.
    pub(crate) const FAILURE: SubCode = SubCode::Refused {
        code: 0x80,
        name: "",
    };
}

/// `SUBACK 0x87 NotAuthorized` (MQTT 5) or `SUBACK 0x80` (3.1.1), as status and the log show it.
pub(crate) fn suback_text(code: u8, name: &str) -> String {
    if name.is_empty() {
        format!("SUBACK 0x{code:02X}")
    } else {
        format!("SUBACK 0x{code:02X} {name}")
    }
}

/// How long a SUBSCRIBE may wait for its SUBACK before it is sent again on the same connection
/// (a broker must answer; one that does not is reported in status instead of trusted).
pub(crate) const SUBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// At most one "broker unreachable" warning per this interval while connection attempts keep
/// failing (the first failure warns at once).
pub(crate) const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

/// What this process knows about one configured filter on the broker's current session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// No SUBACK seen for it on this session yet: it must be subscribed.
    Wanted,
    /// A SUBACK in this process granted QoS ≥ 1, and the broker's session has lasted since.
    Held,
    /// The broker answered 0x80 (failure): its ACL or its filter rules refuse it. Asked again
    /// with backoff on the same connection, and on every new connection.
    Refused,
    /// The broker granted only QoS 0: the broker may lose alerts on it. Not asked again on the
    /// same connection (each new subscription makes the broker re-send retained messages, and a
    /// broker that caps QoS keeps doing so until reconfigured); asked again on every new
    /// connection.
    Downgraded,
}

impl Grant {
    fn of(code: SubCode) -> Grant {
        match code {
            SubCode::Granted(QoS::AtMostOnce) => Grant::Downgraded,
            // QoS 2 granted to a QoS 1 request breaks MQTT 3.1.1 §3.9.3, but loses nothing.
            SubCode::Granted(_) => Grant::Held,
            SubCode::Refused { .. } => Grant::Refused,
        }
    }
}

/// What one SUBACK return code did to one filter (for the log and the counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The filter, as configured.
    pub(crate) filter: String,
    /// The grant now.
    pub(crate) grant: Grant,
    /// The QoS granted, if any.
    pub(crate) qos: Option<QoS>,
    /// The filter was already refused or downgraded before this answer (a retry refused again).
    pub(crate) again: bool,
    /// The refusal as the SUBACK gave it (`SUBACK 0x87 NotAuthorized`), when refused.
    pub(crate) refusal: Option<String>,
}

/// A SUBSCRIBE in flight on this connection: which filters it asked for, and once rumqttc
/// wrote it, its packet id (the SUBACK names only the packet id; its return codes follow the
/// filters' order).
#[derive(Debug)]
struct Outstanding {
    pkid: Option<u16>,
    filters: Vec<usize>,
}

/// The subscriptions this process holds, wants and was refused; see the module doc (S1).
#[derive(Debug)]
pub(crate) struct Subscriptions {
    filters: Vec<String>,
    grants: Vec<Grant>,
    /// Per filter: the SUBACK text of its latest refusal (`SUBACK 0x87 NotAuthorized`).
    refusals: Vec<Option<String>>,
    connected: bool,
    /// At most one SUBSCRIBE is in flight, so a SUBACK is matched without guessing.
    outstanding: Option<Outstanding>,
    /// The last SUBSCRIBE got no SUBACK within [`SUBACK_TIMEOUT`] (shown in status).
    no_suback: bool,
    /// SUBACKs in a row on this connection that left a filter refused: the retry backoff's
    /// exponent.
    refused_rounds: u32,
    /// When to subscribe again on this connection, if something is missing.
    retry_at: Option<Instant>,
    retry_min: Duration,
    retry_max: Duration,
}

impl Subscriptions {
    /// Nothing held yet. Refused filters are asked again after a jittered backoff between
    /// `retry_min` and `retry_max` (the reconnect bounds, `mqtt.reconnect_*_ms`).
    pub(crate) fn new(filters: Vec<String>, retry_min: Duration, retry_max: Duration) -> Self {
        let grants = vec![Grant::Wanted; filters.len()];
        let refusals = vec![None; filters.len()];
        Subscriptions {
            filters,
            grants,
            refusals,
            connected: false,
            outstanding: None,
            no_suback: false,
            refused_rounds: 0,
            retry_at: None,
            retry_min,
            retry_max,
        }
    }

    /// A CONNACK. A fresh session holds nothing; a resumed one holds what a SUBACK of this
    /// process granted on it. Returns the filters to subscribe now: every one not held.
    pub(crate) fn on_connack(&mut self, session_present: bool) -> Vec<usize> {
        if !session_present {
            self.grants.iter_mut().for_each(|g| *g = Grant::Wanted);
        }
        self.connected = true;
        self.outstanding = None;
        self.refused_rounds = 0;
        self.retry_at = None;
        (0..self.filters.len())
            .filter(|&i| self.grants[i] != Grant::Held)
            .collect()
    }

    /// A SUBSCRIBE for `filters` was queued to rumqttc at `now`.
    pub(crate) fn subscribe_queued(&mut self, filters: Vec<usize>, now: Instant) {
        self.outstanding = Some(Outstanding {
            pkid: None,
            filters,
        });
        self.retry_at = Some(now + SUBACK_TIMEOUT);
    }

    /// rumqttc's request channel was full: try again shortly.
    pub(crate) fn subscribe_not_queued(&mut self, now: Instant) {
        self.retry_at = Some(now + self.retry_min);
    }

    /// rumqttc wrote a SUBSCRIBE with this packet id (`Outgoing::Subscribe`); it is ours (only
    /// the connection task subscribes, one at a time).
    pub(crate) fn on_subscribe_sent(&mut self, pkid: u16) {
        if let Some(o) = &mut self.outstanding {
            o.pkid.get_or_insert(pkid);
        }
    }

    /// A SUBACK. `None` if it answers no SUBSCRIBE in flight (ignored); otherwise what each
    /// return code did, in filter order. A missing return code leaves its filter wanted.
    pub(crate) fn on_suback(
        &mut self,
        pkid: u16,
        codes: &[SubCode],
        now: Instant,
        jitter: f64,
    ) -> Option<Vec<Answer>> {
        match &self.outstanding {
            Some(o) if o.pkid == Some(pkid) => {}
            _ => return None,
        }
        let asked = self
            .outstanding
            .take()
            .map(|o| o.filters)
            .unwrap_or_default();
        self.no_suback = false;
        let mut answers = Vec::with_capacity(asked.len());
        for (n, &i) in asked.iter().enumerate() {
            let before = self.grants[i];
            let (grant, qos, refusal) = match codes.get(n) {
                Some(&code) => match code {
                    SubCode::Granted(q) => (Grant::of(code), Some(q), None),
                    SubCode::Refused { code: c, name } => {
                        (Grant::of(code), None, Some(suback_text(c, name)))
                    }
                },
                None => (Grant::Wanted, None, None),
            };
            self.grants[i] = grant;
            self.refusals[i] = refusal.clone();
            answers.push(Answer {
                filter: self.filters[i].clone(),
                grant,
                qos,
                again: grant == before && matches!(grant, Grant::Refused | Grant::Downgraded),
                refusal,
            });
        }
        if self.retryable().is_empty() {
            self.refused_rounds = 0;
            self.retry_at = None;
        } else {
            self.refused_rounds = self.refused_rounds.saturating_add(1);
            self.retry_at = Some(
                now + reconnect_delay(self.retry_min, self.retry_max, self.refused_rounds, jitter),
            );
        }
        Some(answers)
    }

    /// The connection is gone: a SUBSCRIBE in flight is lost with it (the caller also removes
    /// any unsent one from rumqttc's queue), so it is decided again at the next CONNACK.
    pub(crate) fn on_connection_lost(&mut self) {
        self.connected = false;
        self.outstanding = None;
        self.retry_at = None;
    }

    /// When [`Subscriptions::due`] has something to do, if ever on this connection.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.connected)
    }

    /// At the retry time: the filters to subscribe again (refused or still wanted; with the
    /// ones of a SUBSCRIBE that got no SUBACK in time, which is then given up: a late SUBACK for
    /// it is ignored). The bool says the SUBACK timed out.
    pub(crate) fn due(&mut self, now: Instant) -> Option<(Vec<usize>, bool)> {
        match self.retry_at {
            Some(at) if self.connected && at <= now => {}
            _ => return None,
        }
        self.retry_at = None;
        let mut filters = self.retryable();
        let timed_out = match self.outstanding.take() {
            Some(o) => {
                self.no_suback = true;
                filters.extend(
                    o.filters
                        .into_iter()
                        .filter(|&i| self.grants[i] != Grant::Held),
                );
                filters.sort_unstable();
                filters.dedup();
                true
            }
            None => false,
        };
        (!filters.is_empty()).then_some((filters, timed_out))
    }

    /// Filters asked again on an open connection: wanted or refused (not downgraded, see
    /// [`Grant::Downgraded`]).
    fn retryable(&self) -> Vec<usize> {
        (0..self.filters.len())
            .filter(|&i| matches!(self.grants[i], Grant::Wanted | Grant::Refused))
            .collect()
    }

    /// The configured filters at these positions.
    pub(crate) fn filters(&self, at: &[usize]) -> Vec<String> {
        at.iter().map(|&i| self.filters[i].clone()).collect()
    }

    /// Filters held (QoS ≥ 1 granted on the current session).
    pub(crate) fn held(&self) -> usize {
        self.grants.iter().filter(|g| **g == Grant::Held).count()
    }

    /// Filters configured.
    pub(crate) fn wanted(&self) -> usize {
        self.filters.len()
    }

    /// What is wrong, for status: every refused or downgraded filter with its likely cause, and
    /// a SUBACK that never came. `None` when nothing is wrong (held may still be short while a
    /// SUBACK is awaited).
    pub(crate) fn error(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .filters
            .iter()
            .zip(&self.grants)
            .zip(&self.refusals)
            .filter_map(|((f, g), why)| match g {
                Grant::Refused => Some(format!(
                    "broker refused `{f}` ({}): its ACL does not let this client/user subscribe to it, or it rejects the filter",
                    why.as_deref().unwrap_or("SUBACK 0x80")
                )),
                Grant::Downgraded => Some(format!(
                    "broker granted `{f}` only QoS 0 (its maximum QoS is 0?): it may lose alerts on it"
                )),
                Grant::Wanted | Grant::Held => None,
            })
            .collect();
        if self.no_suback {
            parts.push(format!(
                "no SUBACK from the broker within {} s; SUBSCRIBE sent again",
                SUBACK_TIMEOUT.as_secs()
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// How this agent knows that a session of its own held a subscription on the broker (S2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// A SUBACK seen in this process granted a filter on the broker's session.
    ThisProcess,
    /// The store records that an earlier process saw such a SUBACK for this client id and broker.
    Store,
}

/// A session of ours that the broker no longer had at a CONNACK (S2): what the warning says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionLost {
    /// Where the knowledge of the earlier session comes from.
    pub(crate) known: Known,
    /// How long this process was disconnected before the CONNACK; `None` at its first
    /// connection (it does not know when the earlier process was last connected).
    pub(crate) disconnected_for: Option<Duration>,
    /// MQTT 5: the session expiry in force for the lost session (granted at its last CONNACK,
    /// else the configured one); `None` in MQTT 3.1.1.
    pub(crate) session_expiry_secs: Option<u32>,
}

/// What the agent knows of its session on the broker, to tell a lost session from a first one
/// (invariant S2, module doc). Pure: the connection task reports CONNACKs, granted SUBACKs and
/// lost connections, and records the store's marker when told to.
#[derive(Debug)]
pub(crate) struct SessionHistory {
    /// A session of ours held a subscription, and how we know; `None` before the first grant
    /// on this broker (first start, another client id or broker) and after a loss, until the
    /// new session's first grant: a session that held no subscription queued nothing to lose.
    known: Option<Known>,
    /// The store's marker already names this client id and broker: nothing to record.
    recorded: bool,
    /// When this process lost its connection (cleared by the next CONNACK).
    lost_at: Option<Instant>,
    /// The session expiry in force on the last connection (MQTT 5).
    expiry_secs: Option<u32>,
}

impl SessionHistory {
    /// At start: `recorded` says whether the store's marker names this client id and broker
    /// (an earlier process held a subscription there).
    pub(crate) fn new(recorded: bool) -> Self {
        SessionHistory {
            known: recorded.then_some(Known::Store),
            recorded,
            lost_at: None,
            expiry_secs: None,
        }
    }

    /// A CONNACK at `now`; `session_expiry_secs` is the expiry in force from now on (MQTT 5).
    /// Returns the loss to report when the broker has no session although one of ours held a
    /// subscription.
    pub(crate) fn on_connack(
        &mut self,
        session_present: bool,
        session_expiry_secs: Option<u32>,
        now: Instant,
    ) -> Option<SessionLost> {
        let disconnected_for = self
            .lost_at
            .take()
            .map(|t| now.saturating_duration_since(t));
        let before = std::mem::replace(&mut self.expiry_secs, session_expiry_secs);
        if session_present {
            return None;
        }
        let known = self.known.take()?;
        Some(SessionLost {
            known,
            disconnected_for,
            session_expiry_secs: before.or(session_expiry_secs),
        })
    }

    /// A SUBACK granted at least one filter: the session now holds a subscription. Returns
    /// true once per process when the store's marker must be written (it did not name this
    /// client id and broker at start); a failed write is retried at the next start.
    pub(crate) fn on_granted(&mut self) -> bool {
        self.known = Some(Known::ThisProcess);
        !std::mem::replace(&mut self.recorded, true)
    }

    /// The connection was lost at `now` (the first loss counts when attempts keep failing).
    pub(crate) fn on_connection_lost(&mut self, now: Instant) {
        self.lost_at.get_or_insert(now);
    }
}

/// How long to wait before the next attempt after `failures` consecutive failures: a uniform
/// sample between `min` and a ceiling that doubles with every failure, `min · 2^failures`,
/// capped at `max` ("full jitter" above a floor). `jitter` is a sample in `[0, 1)`.
///
/// Why jitter: after a site power cut every gateway boots and fails together; without it they
/// all retry in the same millisecond, again and again, and the broker (or the site uplink)
/// gets a stampede each time. The floor keeps a gateway from hammering a broker that refuses at
/// once (bad credentials answer in microseconds).
pub(crate) fn reconnect_delay(
    min: Duration,
    max: Duration,
    failures: u32,
    jitter: f64,
) -> Duration {
    let min_ms = min.as_millis() as f64;
    let max_ms = (max.as_millis() as f64).max(min_ms);
    let ceiling = (min_ms * 2f64.powi(failures.min(64) as i32)).min(max_ms);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    Duration::from_millis((min_ms + (ceiling - min_ms) * jitter) as u64)
}

/// A warning due because connection attempts keep failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreachable {
    /// Failed attempts since the last CONNACK (or since start).
    pub(crate) attempts: u64,
    /// Since the first of them.
    pub(crate) for_: Duration,
}

/// Failed connection attempts since the last CONNACK: the reconnect backoff's exponent and the
/// bounded-rate "broker unreachable" warning.
#[derive(Debug, Default)]
pub(crate) struct ConnectFailures {
    /// Errors in a row since the last CONNACK, a lost connection included.
    errors: u32,
    /// Connection attempts that failed since the last CONNACK.
    attempts: u64,
    first: Option<Instant>,
    last_warned: Option<Instant>,
}

impl ConnectFailures {
    /// An established connection was lost. Returns the errors in a row (the backoff exponent).
    pub(crate) fn on_lost(&mut self) -> u32 {
        self.errors = self.errors.saturating_add(1);
        self.errors
    }

    /// A connection attempt failed at `now`. Returns the errors in a row, and the warning due
    /// now: the first failure at once, then at most one per [`UNREACHABLE_WARN_EVERY`].
    pub(crate) fn on_attempt_failed(&mut self, now: Instant) -> (u32, Option<Unreachable>) {
        self.errors = self.errors.saturating_add(1);
        self.attempts += 1;
        let first = *self.first.get_or_insert(now);
        let due = match self.last_warned {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= UNREACHABLE_WARN_EVERY,
        };
        let warn = due.then(|| {
            self.last_warned = Some(now);
            Unreachable {
                attempts: self.attempts,
                for_: now.saturating_duration_since(first),
            }
        });
        (self.errors, warn)
    }

    /// A CONNACK: returns how many attempts failed before it, and starts over.
    pub(crate) fn on_connack(&mut self) -> u64 {
        let n = self.attempts;
        *self = ConnectFailures::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK1: SubCode = SubCode::Granted(QoS::AtLeastOnce);
    const OK0: SubCode = SubCode::Granted(QoS::AtMostOnce);
    const NO: SubCode = SubCode::FAILURE;

    fn subs(n: usize) -> Subscriptions {
        let filters = (0..n).map(|i| format!("plant/{i}/#")).collect();
        Subscriptions::new(filters, Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Send what `on_connack`/`due` asked for and answer it with `codes`.
    fn answer(
        s: &mut Subscriptions,
        ask: Vec<usize>,
        pkid: u16,
        codes: &[SubCode],
        now: Instant,
    ) -> Vec<Answer> {
        s.subscribe_queued(ask, now);
        s.on_subscribe_sent(pkid);
        s.on_suback(pkid, codes, now, 0.5).expect("our SUBACK")
    }

    #[test]
    fn reconnect_delay_is_jittered_between_min_and_a_doubling_ceiling() {
        let ms = Duration::from_millis;
        let (min, max) = (ms(500), ms(30_000));
        // (failures, jitter, expected)
        let table = [
            (0, 0.5, ms(500)),     // ceiling = min: nothing to jitter
            (1, 0.0, ms(500)),     // never below min
            (1, 0.5, ms(750)),     // [500, 1000]
            (1, 0.999, ms(999)),   // below the ceiling
            (2, 0.5, ms(1_250)),   // [500, 2000]
            (3, 1.0, ms(4_000)),   // the ceiling itself
            (6, 1.0, ms(30_000)),  // 32 000 capped at max
            (6, 0.5, ms(15_250)),  // [500, 30000]
            (40, 0.5, ms(15_250)), // far past the cap
            (u32::MAX, 1.0, ms(30_000)),
            (3, f64::NAN, ms(500)), // a broken sample falls back to the floor
            (3, -1.0, ms(500)),
            (3, 7.0, ms(4_000)),
        ];
        for (failures, jitter, want) in table {
            assert_eq!(
                reconnect_delay(min, max, failures, jitter),
                want,
                "failures {failures}, jitter {jitter}"
            );
        }
        // max below min (refused by config, but never a panic or a zero wait)
        assert_eq!(reconnect_delay(ms(500), ms(100), 3, 0.5), ms(500));
    }

    #[test]
    fn a_fresh_session_subscribes_everything_and_a_complete_suback_holds_it() {
        let now = Instant::now();
        let mut s = subs(2);
        let ask = s.on_connack(false);
        assert_eq!(ask, vec![0, 1]);
        assert_eq!(s.held(), 0);
        let a = answer(&mut s, ask, 1, &[OK1, OK1], now);
        assert!(a.iter().all(|a| a.grant == Grant::Held && !a.again));
        assert_eq!((s.held(), s.wanted(), s.error()), (2, 2, None));
        assert_eq!(s.next_retry(), None, "nothing left to ask");
        // a resumed session keeps them: no SUBSCRIBE on reconnect (no retained re-send)
        s.on_connection_lost();
        assert!(s.on_connack(true).is_empty());
        assert_eq!(s.held(), 2);
        // a fresh session (broker lost its state) holds nothing
        s.on_connection_lost();
        assert_eq!(s.on_connack(false), vec![0, 1]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn session_present_without_a_suback_seen_in_this_process_subscribes_again() {
        // issue 9 item 2: CONNACK (fresh), SUBSCRIBE sent, connection lost before the SUBACK;
        // the broker keeps a session without the subscription and says "present" from now on
        let mut s = subs(2);
        let ask = s.on_connack(false);
        s.subscribe_queued(ask, Instant::now());
        s.on_subscribe_sent(1);
        s.on_connection_lost();
        assert_eq!(s.on_connack(true), vec![0, 1], "must subscribe again");
        // the same at process start: a present session proves nothing about subscriptions
        assert_eq!(subs(1).on_connack(true), vec![0]);
    }

    #[test]
    fn a_suback_for_another_packet_id_or_an_old_connection_is_ignored() {
        let now = Instant::now();
        let mut s = subs(1);
        let ask = s.on_connack(false);
        s.subscribe_queued(ask, now);
        assert_eq!(s.on_suback(1, &[OK1], now, 0.0), None, "not written yet");
        s.on_subscribe_sent(3);
        assert_eq!(s.on_suback(2, &[OK1], now, 0.0), None);
        s.on_connection_lost();
        s.on_connack(true);
        assert_eq!(
            s.on_suback(3, &[OK1], now, 0.0),
            None,
            "from the dead connection"
        );
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_refused_filter_is_an_error_and_asked_again_with_backoff_until_granted() {
        let t0 = Instant::now();
        let mut s = subs(2);
        let ask = s.on_connack(false);
        let a = answer(&mut s, ask, 1, &[OK1, NO], t0);
        assert_eq!(a[1].grant, Grant::Refused);
        assert!(!a[1].again);
        assert_eq!((s.held(), s.wanted()), (1, 2));
        let err = s.error().expect("an error");
        assert!(err.contains("plant/1/#") && err.contains("ACL"), "{err}");
        assert!(!err.contains("plant/0/#"), "{err}");
        // first retry: jitter 0.5 of [100 ms, 200 ms]
        let at = s.next_retry().expect("retry planned");
        assert_eq!(at - t0, Duration::from_millis(150));
        assert_eq!(s.due(at - Duration::from_millis(1)), None, "not yet");
        let (again, timed_out) = s.due(at).expect("due");
        assert_eq!(
            (again.clone(), timed_out),
            (vec![1], false),
            "only the refused one"
        );
        let a = answer(&mut s, again, 2, &[NO], at);
        assert!(a[0].again, "refused again");
        assert_eq!(
            s.next_retry().map(|t| t - at),
            Some(Duration::from_millis(250)),
            "second retry: jitter 0.5 of [100 ms, 400 ms]"
        );
        let (again, _) = s.due(at + Duration::from_secs(1)).expect("due");
        answer(&mut s, again, 3, &[OK1], at);
        assert_eq!((s.held(), s.error(), s.next_retry()), (2, None, None));
    }

    #[test]
    fn an_mqtt5_refusal_names_its_reason_code_in_status() {
        let t0 = Instant::now();
        let mut s = subs(2);
        let ask = s.on_connack(false);
        let denied = SubCode::Refused {
            code: 0x87,
            name: "NotAuthorized",
        };
        let answers = answer(&mut s, ask, 1, &[OK1, denied], t0);
        assert_eq!(answers[0].refusal, None);
        assert_eq!(
            answers[1].refusal.as_deref(),
            Some("SUBACK 0x87 NotAuthorized")
        );
        let error = s.error().expect("a refusal is an error");
        assert!(
            error.contains("`plant/1/#` (SUBACK 0x87 NotAuthorized)"),
            "{error}"
        );
        assert_eq!(suback_text(0x80, ""), "SUBACK 0x80", "3.1.1 has no names");
    }

    #[test]
    fn a_downgraded_grant_is_an_error_not_retried_on_the_same_connection() {
        let now = Instant::now();
        let mut s = subs(2);
        let ask = s.on_connack(false);
        let a = answer(&mut s, ask, 1, &[OK0, OK1], now);
        assert_eq!(a[0].grant, Grant::Downgraded);
        assert_eq!(a[0].qos, Some(QoS::AtMostOnce));
        assert_eq!(s.held(), 1, "QoS 0 is not held");
        assert!(s.error().expect("error").contains("QoS 0"));
        assert_eq!(
            s.next_retry(),
            None,
            "each retry would re-send retained messages"
        );
        // a new connection asks again
        s.on_connection_lost();
        assert_eq!(s.on_connack(true), vec![0]);
    }

    #[test]
    fn missing_return_codes_leave_their_filters_wanted_and_retried() {
        let now = Instant::now();
        let mut s = subs(3);
        let ask = s.on_connack(false);
        answer(&mut s, ask, 1, &[OK1], now);
        assert_eq!(s.held(), 1);
        let at = s.next_retry().expect("retry");
        assert_eq!(s.due(at).map(|d| d.0), Some(vec![1, 2]));
    }

    #[test]
    fn a_suback_that_never_comes_is_reported_and_the_subscribe_sent_again() {
        let now = Instant::now();
        let mut s = subs(2);
        let ask = s.on_connack(false);
        s.subscribe_queued(ask, now);
        s.on_subscribe_sent(1);
        assert_eq!(s.next_retry(), Some(now + SUBACK_TIMEOUT));
        let (again, timed_out) = s.due(now + SUBACK_TIMEOUT).expect("due");
        assert_eq!((again, timed_out), (vec![0, 1], true));
        assert!(s.error().expect("error").contains("no SUBACK"));
        assert_eq!(
            s.on_suback(1, &[OK1, OK1], now, 0.0),
            None,
            "late answer ignored"
        );
        let a = answer(&mut s, vec![0, 1], 2, &[OK1, OK1], now);
        assert_eq!(a.len(), 2);
        assert_eq!(s.error(), None);
    }

    #[test]
    fn a_full_request_channel_retries_shortly_and_nothing_is_due_while_disconnected() {
        let now = Instant::now();
        let mut s = subs(1);
        s.on_connack(false);
        s.subscribe_not_queued(now);
        let at = s.next_retry().expect("retry");
        assert_eq!(at - now, Duration::from_millis(100));
        s.on_connection_lost();
        assert_eq!(s.next_retry(), None);
        assert_eq!(s.due(at), None);
    }

    #[test]
    fn shared_filters_are_held_refused_and_reported_by_their_shared_form() {
        let now = Instant::now();
        let filters = vec![
            crate::config::shared_filter("alertbridge", "plant/+/alerts/#"),
            crate::config::shared_filter("alertbridge", "line/4/alarm"),
        ];
        let mut s = Subscriptions::new(filters, Duration::from_millis(100), Duration::from_secs(1));
        let ask = s.on_connack(false);
        assert_eq!(
            s.filters(&ask),
            [
                "$share/alertbridge/plant/+/alerts/#",
                "$share/alertbridge/line/4/alarm"
            ],
            "the SUBSCRIBE carries the shared forms"
        );
        let a = answer(&mut s, ask, 1, &[OK1, NO], now);
        assert_eq!(a[0].filter, "$share/alertbridge/plant/+/alerts/#");
        assert_eq!((s.held(), s.wanted()), (1, 2), "not ready: one refused");
        let err = s.error().expect("an error");
        assert!(err.contains("`$share/alertbridge/line/4/alarm`"), "{err}");
        let (again, _) = s.due(now + Duration::from_secs(1)).expect("retried");
        assert_eq!(s.filters(&again), ["$share/alertbridge/line/4/alarm"]);
        answer(&mut s, again, 2, &[OK1], now);
        assert_eq!((s.held(), s.error()), (2, None), "ready");
    }

    #[test]
    fn a_first_start_never_reports_a_lost_session() {
        let t0 = Instant::now();
        let mut h = SessionHistory::new(false);
        assert_eq!(h.on_connack(false, None, t0), None, "first-ever start");
        // the connection drops before any SUBACK: the fresh session held nothing to lose
        h.on_connection_lost(t0);
        assert_eq!(h.on_connack(false, None, t0), None);
        // a present session proves a session, but not one that queued for us: no grant yet
        assert_eq!(h.on_connack(true, None, t0), None);
        h.on_connection_lost(t0);
        assert_eq!(h.on_connack(false, None, t0), None);
    }

    #[test]
    fn a_session_lost_after_a_grant_in_this_process_is_reported_once_with_the_gap() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = SessionHistory::new(false);
        assert_eq!(h.on_connack(false, Some(60), t0), None);
        assert!(h.on_granted(), "the first grant is recorded in the store");
        assert!(!h.on_granted(), "once per process");
        // resumed within the expiry: nothing to report
        h.on_connection_lost(t0 + s(1));
        assert_eq!(h.on_connack(true, Some(60), t0 + s(5)), None);
        // gone after a long outage; failed attempts in between do not move the start of the gap
        h.on_connection_lost(t0 + s(10));
        h.on_connection_lost(t0 + s(40));
        assert_eq!(
            h.on_connack(false, Some(30), t0 + s(100)),
            Some(SessionLost {
                known: Known::ThisProcess,
                disconnected_for: Some(s(90)),
                session_expiry_secs: Some(60),
            }),
            "the expiry of the lost session, not the one granted now"
        );
        // the new session holds nothing until its SUBACK: a second loss before it is not one
        h.on_connection_lost(t0 + s(101));
        assert_eq!(h.on_connack(false, Some(30), t0 + s(102)), None);
        h.on_granted();
        h.on_connection_lost(t0 + s(103));
        assert_eq!(
            h.on_connack(false, Some(30), t0 + s(200))
                .map(|l| l.session_expiry_secs),
            Some(Some(30))
        );
    }

    #[test]
    fn a_session_recorded_in_the_store_is_reported_when_the_first_connack_has_none() {
        let t0 = Instant::now();
        let mut h = SessionHistory::new(true);
        assert!(!h.on_granted(), "the marker already names this broker");
        let mut h = SessionHistory::new(true);
        assert_eq!(
            h.on_connack(false, Some(604_800), t0),
            Some(SessionLost {
                known: Known::Store,
                disconnected_for: None,
                session_expiry_secs: Some(604_800),
            })
        );
        // resumed across the restart: nothing
        let mut h = SessionHistory::new(true);
        assert_eq!(h.on_connack(true, None, t0), None);
        h.on_connection_lost(t0);
        assert_eq!(
            h.on_connack(false, None, t0 + Duration::from_secs(3)),
            Some(SessionLost {
                known: Known::Store,
                disconnected_for: Some(Duration::from_secs(3)),
                session_expiry_secs: None,
            }),
            "the resumed session held our subscriptions, even before this process's SUBACK"
        );
    }

    #[test]
    fn unreachable_broker_warns_at_once_then_at_a_bounded_rate_with_the_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = ConnectFailures::default();
        let (errors, warn) = f.on_attempt_failed(t0);
        assert_eq!(errors, 1);
        assert_eq!(
            warn,
            Some(Unreachable {
                attempts: 1,
                for_: Duration::ZERO
            })
        );
        for k in 1..10 {
            assert_eq!(f.on_attempt_failed(t0 + s(k * 3)).1, None, "at {} s", k * 3);
        }
        assert_eq!(
            f.on_attempt_failed(t0 + s(30)).1,
            Some(Unreachable {
                attempts: 11,
                for_: s(30)
            })
        );
        assert_eq!(f.on_attempt_failed(t0 + s(59)).1, None);
        assert_eq!(f.on_connack(), 12);
        // a lost connection grows the backoff but is not "unreachable"; the next failure warns
        assert_eq!(f.on_lost(), 1);
        let (errors, warn) = f.on_attempt_failed(t0 + s(61));
        assert_eq!(errors, 2);
        assert_eq!(warn.map(|w| w.attempts), Some(1));
    }
}
