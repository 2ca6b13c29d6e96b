//! Dispatch: start as many deliveries as the breaker, the bucket and the concurrency cap allow.
//! Each queued record is checked before it goes (expired, unmappable: settled here), offered to
//! the storm state, and sent as a [`Job`] through the drain's [`super::job::Deliver`] seam in a
//! task of its own.

use std::time::Duration;

use alertbridge_genesys::Disposition;
use alertbridge_payload::{Mapped, Mapper, Rejection};
use alertbridge_wal::{DeadKind, Key, Record};

use super::job::{Done, InFlight, Job};
use super::{Drain, DrainError, Held};
use crate::breaker::{Hold, Transition};
use crate::clock;
use crate::events::BreakerProbing;
use crate::schedule;

/// A record that passed its checks and what the mapper made of it.
type Prepared = (Record, Mapped);

/// How the drain maps a stored payload with its MQTT 5 user properties:
/// [`Mapper::map_with_props`], or a test's stand-in (a mapper that panics).
pub(super) type MapFn = fn(&Mapper, &str, &[u8], &[(String, String)]) -> Result<Mapped, Rejection>;

/// Why a payload did not map.
#[derive(Debug)]
pub(super) enum MapFailure {
    /// The mapping rejected it (the reason says why).
    Rejected(Rejection),
    /// The mapper panicked: a bug, caught (D3). The panic's message.
    Panicked(String),
}

/// Runs `map` under `catch_unwind` (D3). The mapper is pure, total and fuzzed, but a panic in it
/// on one stored record would otherwise kill the drain, and the restarted agent would meet the
/// same record first again: a crash loop with every alert behind it stuck. The mapper holds no
/// state a panic could leave half-changed (it maps `&self`), so unwinding past it is sound.
pub(super) fn map_guarded(
    map: MapFn,
    mapper: &Mapper,
    topic: &str,
    payload: &[u8],
    props: &[(String, String)],
) -> Result<Mapped, MapFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        map(mapper, topic, payload, props)
    })) {
        Ok(Ok(mapped)) => Ok(mapped),
        Ok(Err(rejection)) => Err(MapFailure::Rejected(rejection)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(MapFailure::Panicked(message))
        }
    }
}

impl Drain {
    /// Check a queued key's record before sending: `None` when it was settled here
    /// (dead-lettered as corrupt, expired or malformed) or is no longer pending.
    pub(super) async fn prepare(
        &mut self,
        key: Key,
        now: u64,
    ) -> Result<Option<Prepared>, DrainError> {
        let Some(Held { record, seen, .. }) = self.held.get(&key).cloned() else {
            return Ok(None);
        };
        // MQTT 5: the publisher's message expiry is this alert's own TTL (kept with the record).
        if let Some(ttl) = crate::ingest::publisher_ttl(&record) {
            let age = seen.age_ms(now);
            if schedule::expired(age, Some(ttl)) {
                let message = crate::ingest::publisher_expiry_reason(&record, ttl, age);
                let status = record
                    .last_error
                    .as_deref()
                    .and_then(super::expiry::status_in);
                self.dead_letter(key, &record, DeadKind::Expired, message, status, None)
                    .await?;
                return Ok(None);
            }
        }
        if let Some(ttl) = self.ttl(key) {
            let age = seen.age_ms(now);
            if schedule::expired(age, Some(ttl)) {
                self.expire(key, &record, ttl, age).await?;
                return Ok(None);
            }
        }
        // MQTT 5 user properties kept with the record feed `$props.<name>` sources.
        let props = record.mqtt.as_ref().map_or(&[][..], |p| &p.user[..]);
        match map_guarded(
            self.map,
            &self.mapper,
            &record.topic,
            &record.payload,
            props,
        ) {
            Ok(m) => {
                if !m.notes.is_empty() {
                    // what the mapping changed on the way (stripped blob, truncated catch-all,
                    // coerced type...): the original payload stays in the log
                    tracing::info!(alert_id = %record.alert_id, seq = key.seq, notes = ?m.notes, "payload adjusted by the mapping");
                }
                Ok(Some((record, m)))
            }
            Err(MapFailure::Rejected(rej)) => {
                self.dead_letter(key, &record, DeadKind::Malformed, rej.reason, None, None)
                    .await?;
                Ok(None)
            }
            Err(MapFailure::Panicked(panic)) => {
                tracing::error!(
                    alert_id = %record.alert_id,
                    seq = key.seq,
                    panic = %panic,
                    "payload mapper panicked on a stored alert; it is dead-lettered, delivery goes on"
                );
                let reason = format!(
                    "the payload mapper failed on this payload (a bug: please report it with this dead letter): {panic}"
                );
                self.dead_letter(key, &record, DeadKind::Malformed, reason, None, None)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Start as many deliveries as the breaker, the bucket and the concurrency cap allow.
    /// Returns how long to sleep before trying again, if something is held back.
    pub(super) async fn dispatch(&mut self) -> Result<Option<Duration>, DrainError> {
        loop {
            let now_i = clock::now();
            let now = self.clock.sched_ms();
            self.queue.promote(now);
            let summary_ready = self.storm.as_ref().is_some_and(|s| s.has_ready(now));
            if self.tasks.len() >= self.cfg.max_in_flight
                || (self.queue.ready_len() == 0 && !summary_ready)
            {
                // woken by a finished task, a new key or the next retry time
                return Ok(None);
            }
            if let Some(d) = self.breaker.wait(now_i) {
                return Ok(Some(d));
            }
            if let Some(d) = self.limiter.wait(now_i) {
                return Ok(Some(d));
            }
            // A due storm summary goes first: it stands for many alerts that already waited a
            // whole window.
            let mut job = match self.storm.as_mut().and_then(|s| s.take_ready(now)) {
                Some(summary) => summary,
                None => {
                    let Some(key) = self.queue.pick() else {
                        return Ok(None);
                    };
                    let Some((record, mapped)) = self.prepare(key, now).await? else {
                        continue;
                    };
                    if let Some(storm) = self.storm.as_mut() {
                        if storm.offer(now, key, &record, &mapped) {
                            // held for its window's summary; still pending in the log
                            continue;
                        }
                    }
                    Job::single(key, &record, mapped.data)
                }
            };
            job.history.begin(self.clock.wall_ms());
            let timeout = schedule::request_timeout(
                self.client.request_timeout(),
                job.history.timeouts(),
                self.cfg.max_request_timeout,
            );
            // Only now, with a request that really goes, may the breaker hand out its probe:
            // a probe that is never sent would leave it half-open for good.
            let probe = match self.breaker.begin(now_i) {
                Some((n, Transition::HalfOpen { was })) => {
                    BreakerProbing {
                        paused: was == Hold::Paused,
                    }
                    .emit(&self.counters);
                    Some(n)
                }
                _ => None,
            };
            self.limiter.take(now_i);
            let gate = self.limiter.not_before();
            let request = self.client.deliver(&job, timeout);
            let keys = job.keys();
            let task = self.tasks.spawn(async move {
                gate.wait().await;
                let sent_at = clock::now();
                // The request runs in a task of its own so that a panic in it (a bug in a
                // dependency, say) still comes back as a `Done`: otherwise the job would vanish
                // from memory (stuck until restart) and, if it was the breaker's probe, the
                // breaker would stay half-open for good.
                let disposition = match tokio::spawn(request).await {
                    Ok(d) => d,
                    Err(e) => Disposition::Retry {
                        after: None,
                        reason: format!("delivery task failed: {e}"),
                        status: None,
                        timed_out: false,
                    },
                };
                Done {
                    job,
                    disposition,
                    probe,
                    sent_at,
                }
            });
            self.in_flight.insert(task.id(), InFlight { keys, probe });
        }
    }
}
