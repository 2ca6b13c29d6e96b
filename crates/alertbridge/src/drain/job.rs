//! What one request is for: a [`Job`] is one alert (one member) or a storm summary (every alert
//! it covers), with the attempt history they share, and the [`Deliver`] trait the drain sends it
//! through (the Genesys client, or a test's scripted fake).
//!
//! One shape for both lets one `settle` (settle.rs) apply an answer to a single alert and to a
//! summary alike: the retry, breaker and dead-letter rules exist once.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use alertbridge_genesys::{Disposition, GenesysClient};
use alertbridge_wal::{Key, Record, Reply};
use serde_json::{Map, Value};

use crate::schedule;

/// Where the drain sends a request: [`GenesysClient`] in the agent, a scripted fake in the
/// drain's tests. The drain owns this seam so its dispatch and settle rules are testable
/// without HTTP.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// Sends `job`'s request, waiting at most `timeout` for the answer, and says what the
    /// answer means. The future owns what it needs (it runs in a task of its own).
    fn deliver(
        &self,
        job: &Job,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Disposition> + Send + 'static>>;

    /// The request timeout of a first attempt (later ones after a timeout wait longer, T1).
    fn request_timeout(&self) -> Duration;
}

impl Deliver for GenesysClient {
    fn deliver(
        &self,
        job: &Job,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Disposition> + Send + 'static>> {
        let (client, alert_id, data) = (self.clone(), job.alert_id.clone(), job.data.clone());
        Box::pin(async move { client.deliver_within(&alert_id, &data, timeout).await })
    }

    fn request_timeout(&self) -> Duration {
        GenesysClient::request_timeout(self)
    }
}

/// An alert a job settles: pending in the log until the job's answer removes or dead-letters it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its pending key.
    pub(crate) key: Key,
    /// Its alert id (the receipt's `alert_id`).
    pub(crate) alert_id: String,
    /// When ingest received it (the receipt's `received_at_ms`, a summary's first/last).
    pub(crate) received_at_ms: u64,
    /// The MQTT topic it arrived on (a published receipt's topic placeholders come from it).
    pub(crate) topic: String,
    /// Where its MQTT 5 publisher asked for the receipt (response topic, correlation data).
    pub(crate) reply: Option<Reply>,
}

impl Member {
    /// The member for the record under `key`.
    pub(crate) fn of(key: Key, record: &Record) -> Member {
        Member {
            key,
            alert_id: record.alert_id.clone(),
            received_at_ms: record.received_at_ms,
            topic: record.topic.clone(),
            reply: Reply::of(record),
        }
    }
}

/// The attempt history of a job: a single alert's is its record's (persisted with every retry);
/// a summary's lives in memory and is written into each member's record when the members are
/// dead-lettered, so the dead letter shows the attempts made for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// Requests made (a pause or a held rejection does not count).
    pub(crate) attempts: u32,
    /// Wall ms of the first request.
    pub(crate) first_attempt_ms: Option<u64>,
    /// Wall ms of the latest request.
    pub(crate) last_attempt_ms: Option<u64>,
    /// The latest failure, with the count of unanswered requests (T1) kept in it.
    pub(crate) last_error: Option<String>,
}

impl History {
    /// The history stored in `record`.
    pub(crate) fn of(record: &Record) -> History {
        History {
            attempts: record.attempts,
            first_attempt_ms: record.first_attempt_ms,
            last_attempt_ms: record.last_attempt_ms,
            last_error: record.last_error.clone(),
        }
    }

    /// Writes this history into `record`.
    pub(crate) fn apply(&self, record: &mut Record) {
        record.attempts = self.attempts;
        record.first_attempt_ms = self.first_attempt_ms;
        record.last_attempt_ms = self.last_attempt_ms;
        record.last_error = self.last_error.clone();
    }

    /// A request goes at wall time `wall_ms`.
    pub(crate) fn begin(&mut self, wall_ms: u64) {
        self.attempts += 1;
        self.first_attempt_ms.get_or_insert(wall_ms);
        self.last_attempt_ms = Some(wall_ms);
    }

    /// Requests so far that went unanswered within their timeout (T1).
    pub(crate) fn timeouts(&self) -> u32 {
        schedule::timeouts_in(self.last_error.as_deref())
    }

    /// The request failed with `reason` (and went unanswered if `timed_out`); returns the
    /// unanswered requests so far.
    pub(crate) fn failed(&mut self, reason: &str, timed_out: bool) -> u32 {
        let timeouts = self.timeouts() + u32::from(timed_out);
        self.last_error = Some(schedule::with_timeouts(reason, timeouts));
        timeouts
    }

    /// The request met a configuration fault (`reason`), not a fault of the job: it does not
    /// count as an attempt.
    pub(crate) fn not_an_attempt(&mut self, reason: &str) {
        self.attempts = self.attempts.saturating_sub(1);
        let timeouts = self.timeouts();
        self.last_error = Some(schedule::with_timeouts(reason, timeouts));
    }
}

/// What makes a job a storm summary: which site's window it stands for, and when it goes.
#[derive(Clone, Debug)]
pub(crate) struct Coalesced {
    /// The site it summarises.
    pub(crate) site: String,
    /// A member was critical (only with `include_critical`): goes ahead of other summaries.
    pub(crate) critical: bool,
    /// Not before this time (the drain's monotonic ms; 0 = now).
    pub(crate) next_attempt_ms: u64,
}

/// One request and the alerts its answer settles.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    /// The alert id sent: the alert's own, or the summary's (a digest of site, window and
    /// members).
    pub(crate) alert_id: String,
    /// The request data (`inputData` / `data`).
    pub(crate) data: Map<String, Value>,
    /// The alerts it settles, in arrival order: one for a single alert.
    pub(crate) members: Vec<Member>,
    /// Requests made for it so far, with this one counted once it is sent.
    pub(crate) history: History,
    /// `Some` for a storm summary.
    pub(crate) coalesced: Option<Coalesced>,
}

impl Job {
    /// A single alert: the record under `key`, mapped to `data`.
    pub(crate) fn single(key: Key, record: &Record, data: Map<String, Value>) -> Job {
        Job {
            alert_id: record.alert_id.clone(),
            data,
            members: vec![Member::of(key, record)],
            history: History::of(record),
            coalesced: None,
        }
    }

    /// The keys of the alerts it settles.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.members.iter().map(|m| m.key).collect()
    }

    /// A member's dead-letter reason: `alone` for a single alert; a summary's members say which
    /// summary it was, and that it `which` (e.g. "Genesys rejected: …").
    pub(crate) fn member_reason(&self, alone: String, which: &str) -> String {
        match &self.coalesced {
            None => alone,
            Some(c) => format!(
                "coalesced into storm summary {} (site {}, {} alerts), which {which}",
                self.alert_id,
                c.site,
                self.members.len()
            ),
        }
    }
}

/// What a finished delivery task hands back.
pub(crate) struct Done {
    /// The job it sent.
    pub(crate) job: Job,
    /// What the answer means.
    pub(crate) disposition: Disposition,
    /// The breaker's probe number if this request was the probe.
    pub(crate) probe: Option<u64>,
    /// When the request left (after the client-wide gate), for the AIMD episode rule.
    pub(crate) sent_at: Instant,
}

/// What a delivery task carries, kept by task id so a task that fails to join gives its alerts
/// back (D4).
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    /// The keys of the alerts its job settles.
    pub(crate) keys: Vec<Key>,
    /// The breaker's probe number if the request was the probe.
    pub(crate) probe: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_counts_attempts_and_unanswered_requests_and_a_pause_is_no_attempt() {
        let mut h = History::default();
        h.begin(10);
        h.begin(20);
        assert_eq!(
            (h.attempts, h.first_attempt_ms, h.last_attempt_ms),
            (2, Some(10), Some(20))
        );
        assert_eq!(h.failed("timed out", true), 1);
        assert_eq!(h.failed("timed out", true), 2);
        assert_eq!(h.failed("HTTP 503", false), 2);
        h.not_an_attempt("HTTP 403");
        assert_eq!(h.attempts, 1);
        assert_eq!(h.timeouts(), 2);
    }
}
