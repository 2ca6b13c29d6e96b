//! Ingest's events: group commits, duplicates, payloads dead-lettered at ingest, acks, the
//! broker connection, subscriptions and the disk budget.

use super::*;

/// A group commit returned: `persisted` new alerts, `duplicates` recognised, `dead_lettered`
/// payloads stored straight into dead letters.
pub struct BatchPersisted {
    /// New pending alerts.
    pub persisted: u64,
    /// Redeliveries.
    pub duplicates: u64,
    /// Rejected payloads.
    pub dead_lettered: u64,
    /// Flush + fsync time.
    pub took: Duration,
}

impl BatchPersisted {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.persisted, self.persisted);
        Counters::add(&c.duplicates, self.duplicates);
        Counters::add(&c.dead_lettered, self.dead_lettered);
        Counters::add(&c.batches, 1);
        c.metrics.group_commit(self.took);
        tracing::debug!(
            persisted = self.persisted,
            duplicates = self.duplicates,
            dead_lettered = self.dead_lettered,
            took_us = self.took.as_micros() as u64,
            "batch durable"
        );
    }
}

/// A redelivered publish (MQTT DUP=1) whose alert was already persisted: acked, not stored again.
pub struct DuplicateDropped<'a> {
    /// Its alert id.
    pub alert_id: &'a str,
    /// The topic it came on (the identity is topic + alert id).
    pub topic: &'a str,
    /// A retained message the broker replayed because we subscribed (RETAIN = 1), rather
    /// than a redelivery (DUP = 1): the `reason` label on `/metrics`.
    pub retained: bool,
}

impl DuplicateDropped<'_> {
    /// Log it and count it by reason (the total is counted by [`BatchPersisted`]).
    pub fn emit(self, c: &Counters) {
        c.metrics.duplicate(self.retained);
        let reason = if self.retained {
            "retained message (RETAIN=1) replayed by the broker, already persisted within store.dedup_window_secs"
        } else {
            "redelivery (MQTT DUP=1) of an alert already persisted within store.dedup_window_secs"
        };
        tracing::info!(
            alert_id = self.alert_id,
            topic = self.topic,
            reason,
            "duplicate acked, not stored again"
        );
    }
}

/// A payload stored straight into dead letters at ingest (not an alert the mapping accepts:
/// malformed, oversize). Logged at warn with what an operator needs to find the sender.
pub struct PayloadDeadLettered<'a> {
    /// Its dead-letter id (`alertbridge dead-letters show <id>`).
    pub dead_letter_id: u64,
    /// The alert id, if the payload had one.
    pub alert_id: &'a str,
    /// The topic it came on.
    pub topic: &'a str,
    /// Its dead-letter kind.
    pub kind: alertbridge_wal::DeadKind,
    /// Why, readable.
    pub reason: &'a str,
}

impl PayloadDeadLettered<'_> {
    /// Log it and count it by kind (the total is counted by [`BatchPersisted`]).
    pub fn emit(self, c: &Counters) {
        c.metrics.dead_lettered(self.kind);
        tracing::warn!(
            dead_letter_id = self.dead_letter_id,
            alert_id = self.alert_id,
            topic = self.topic,
            kind = ?self.kind,
            reason = self.reason,
            "payload dead-lettered at ingest"
        );
    }
}

/// PUBACKs queued after a durable batch.
pub struct Acked<'a> {
    /// Acks queued.
    pub acked: u64,
    /// Withheld: publish from an older connection.
    pub stale: u64,
    /// When each acked publish was received (the ack latency histogram).
    pub received: &'a [Instant],
}

impl Acked<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.acked, self.acked);
        let now = Instant::now();
        for at in self.received {
            c.metrics.acked(now.saturating_duration_since(*at));
        }
        Counters::add(&c.stale_acks_skipped, self.stale);
        if self.stale > 0 {
            tracing::info!(
                stale = self.stale,
                "acks withheld for publishes of a previous connection; the broker redelivers them"
            );
        }
    }
}

/// The broker answered a SUBSCRIBE for one filter with a grant of QoS ≥ 1.
pub struct Subscribed<'a> {
    /// The topic filter.
    pub filter: &'a str,
    /// QoS granted (1; 2 only from a broker breaking MQTT 3.1.1 §3.9.3).
    pub qos: u8,
}

impl Subscribed<'_> {
    /// Record it (the line says `subscribed`: the e2e tests wait for it).
    pub fn emit(self) {
        tracing::info!(topic = self.filter, qos = self.qos, "subscribed");
    }
}

/// The broker refused a filter (SUBACK 0x80) or granted it only QoS 0. Logged at error level
/// the first time, at warn when a retry is refused again; every one counted.
pub struct SubscriptionRefused<'a> {
    /// The topic filter.
    pub filter: &'a str,
    /// `Some(0)` for a downgrade to QoS 0, `None` for a refusal.
    pub granted_qos: Option<u8>,
    /// A retry was refused again (already reported).
    pub again: bool,
    /// When it is asked for again.
    pub retry: &'a str,
    /// The refusal's SUBACK code as text (`SUBACK 0x87 NotAuthorized` in MQTT 5, `SUBACK 0x80`
    /// in 3.1.1); `None` for a downgrade.
    pub refusal: Option<&'a str>,
}

impl SubscriptionRefused<'_> {
    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.subscription_errors, 1);
        let cause = match self.granted_qos {
            None => format!(
                "{}: the broker's ACL does not let this client/user subscribe to the filter, or the broker rejects the filter",
                self.refusal.unwrap_or("SUBACK 0x80")
            ),
            Some(_) => "granted QoS 0 instead of 1: the broker caps QoS (a max_qos-style setting); it may lose alerts on this filter".to_string(),
        };
        if self.again {
            tracing::warn!(
                topic = self.filter,
                cause = %cause,
                retry = self.retry,
                "subscription still refused by the broker; alerts on this filter do not reach alertbridge"
            );
        } else {
            tracing::error!(
                topic = self.filter,
                cause = %cause,
                retry = self.retry,
                "SUBSCRIPTION REFUSED by the broker: alerts on this filter do not reach alertbridge"
            );
        }
    }
}

/// The subscriptions held / wanted and what is wrong, after any change (status shows them).
pub fn subscriptions_changed(c: &Counters, held: usize, wanted: usize, error: Option<String>) {
    c.subscriptions_wanted
        .store(wanted as u64, Ordering::Relaxed);
    let before = c.subscriptions_held.swap(held as u64, Ordering::Relaxed);
    if let Ok(mut g) = c.subscription_error.lock() {
        *g = error;
    }
    if held == wanted && before != held as u64 {
        tracing::info!(held, "every subscription held");
    }
}

/// The broker had no session for us at a CONNACK although a session of ours held a
/// subscription there before (S2, `session.rs`): alerts published while alertbridge was away
/// may never have been queued for it and are gone at the broker. Logged at warn with the likely
/// causes and what to do, counted (`sessions_lost`) with its time for status.
pub struct SessionLost<'a> {
    /// `host:port`.
    pub broker: &'a str,
    /// `mqtt.client_id`: the broker keeps the session under it.
    pub client_id: &'a str,
    /// How the earlier session is known: a SUBACK of this process, or the store's record.
    pub known_from: &'a str,
    /// How long this process was disconnected; `None` at the first connection after a start.
    pub disconnected_for: Option<Duration>,
    /// MQTT 5: the session expiry that applied to the lost session; `None` in MQTT 3.1.1.
    pub session_expiry_secs: Option<u32>,
}

impl SessionLost<'_> {
    /// What most likely discarded the session, for the protocol in use.
    fn likely_cause(&self) -> String {
        let id = self.client_id;
        match self.session_expiry_secs {
            Some(secs) => format!(
                "alertbridge was away longer than the session expiry ({secs} s: mqtt.session_expiry_secs, or less if the broker caps it); or the broker restarted without persistence; or an administrator, or another client logging in as {id} with Clean Start, removed the session"
            ),
            None => format!(
                "the broker expired the session (mosquitto: persistent_client_expiration); or the broker restarted without persistence (mosquitto: persistence true and a persistence_location its user can write); or an administrator, or another client logging in as {id} with a clean session, removed it"
            ),
        }
    }

    /// Record it.
    pub fn emit(self, c: &Counters) {
        Counters::add(&c.sessions_lost, 1);
        c.session_lost_at_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        let gap = match self.disconnected_for {
            Some(d) => format!(
                "while alertbridge was disconnected ({:.1} s)",
                d.as_secs_f64()
            ),
            None => "while alertbridge was away (since it was last connected, before this start)"
                .to_string(),
        };
        let action = format!(
            "alerts published {gap}, and any the broker still held queued for alertbridge, may be missing: check the devices or the plant's alarm history for that time and raise what is missing by hand; then remove the cause (docs/operations.md, \"A lost session\")"
        );
        tracing::warn!(
            broker = self.broker,
            client_id = self.client_id,
            known_from = self.known_from,
            disconnected_ms = self.disconnected_for.map(|d| d.as_millis() as u64),
            session_expiry_secs = self.session_expiry_secs,
            likely_cause = %self.likely_cause(),
            action = %action,
            "MQTT SESSION LOST: the broker had no session for alertbridge although one held its subscriptions; alerts published while alertbridge was away may never have been queued for it and are gone at the broker"
        );
    }
}

/// Connection attempts to the broker keep failing: the first at once, then at a bounded rate.
pub struct BrokerUnreachable<'a> {
    /// `host:port`.
    pub broker: &'a str,
    /// Failed attempts so far.
    pub attempts: u64,
    /// Since the first failed attempt.
    pub failing_for: Duration,
    /// The last attempt's error.
    pub error: &'a str,
    /// Wait before the next attempt.
    pub retry_in: Duration,
}

impl BrokerUnreachable<'_> {
    /// Record it.
    pub fn emit(self) {
        tracing::warn!(
            broker = self.broker,
            attempts = self.attempts,
            failing_for_secs = self.failing_for.as_secs(),
            error = self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "cannot connect to the MQTT broker; retrying with backoff (alerts wait at the broker or the devices)"
        );
    }
}

/// Broker connection closed on purpose (shutdown).
pub fn disconnected_for_shutdown(c: &Counters) {
    if c.connected.swap(false, Ordering::Relaxed) {
        tracing::info!("disconnected from broker (shutdown)");
    }
}

/// Broker connection state.
pub fn connection_changed(c: &Counters, up: bool, detail: &str) {
    if c.connected.swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!(detail, "connected to broker");
        } else {
            tracing::warn!(detail, "broker connection lost; reconnecting with backoff");
        }
    }
}

/// Disk budget reached (with the reason) / freed.
pub fn backpressure_changed(c: &Counters, reason: Option<&str>, size: u64) {
    let on = reason.is_some();
    if c.backpressure.swap(on, Ordering::Relaxed) != on {
        match reason {
            Some(r) => tracing::error!(
                size_bytes = size,
                reason = r,
                "disk budget reached: no more acks, the broker keeps new alerts until space frees"
            ),
            None => tracing::warn!(size_bytes = size, "disk budget ok again: ingest resumed"),
        }
    }
}
