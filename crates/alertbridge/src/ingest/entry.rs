//! One publish → one log entry: the mapping decides the alert id and lane, or why the payload
//! goes straight to dead letters. Pure (no I/O, no clock), so every rule is a unit test.

use alertbridge_payload::{digest_id, Mapper, Priority, RejectionKind};
use alertbridge_wal::{
    DeadKind, DeadReason, Entry, MqttProps, Record, PRIORITY_CRITICAL, PRIORITY_NORMAL,
};

/// Log lane of a mapped priority.
pub(crate) fn lane(p: Priority) -> u8 {
    match p {
        Priority::Critical => PRIORITY_CRITICAL,
        Priority::Normal => PRIORITY_NORMAL,
    }
}

/// Pure: one publish → one log entry. A payload the mapping rejects is still persisted, straight
/// into dead letters with the mapping's reason (never dropped, never blocking the queue).
///
/// The mapper is pure and fuzzed, but a panic in it must not become a crash loop (the broker
/// would redeliver the same payload forever while other alerts pile up at the broker): it is
/// caught and the payload dead-lettered with the reason.
///
/// `props` (MQTT 5) go with the record, and the mapping sees their user properties, as the
/// drain's will.
pub(crate) fn entry_for(
    mapper: &Mapper,
    topic: &str,
    payload: &[u8],
    props: Option<&MqttProps>,
    now_ms: u64,
) -> Entry {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        entry_for_unguarded(mapper, topic, payload, props, now_ms)
    }));
    let mut entry = match attempt {
        Ok(entry) => entry,
        Err(_) => {
            tracing::error!(topic, "payload mapper panicked; payload dead-lettered");
            Entry::DeadLetter(
                Record::new(digest_id(topic, payload), topic, payload, PRIORITY_NORMAL, now_ms),
                DeadReason {
                    kind: DeadKind::Malformed,
                    message: "the payload mapper failed on this payload (a bug: please report it with this dead letter)".into(),
                    status: None,
                    api_message: None,
                },
            )
        }
    };
    // MQTT 5: kept in the log with the alert, so a restart maps and expires it the same way.
    let (Entry::Pending(r) | Entry::DeadLetter(r, _)) = &mut entry;
    r.mqtt = props.cloned().map(Box::new);
    entry
}

fn entry_for_unguarded(
    mapper: &Mapper,
    topic: &str,
    payload: &[u8],
    props: Option<&MqttProps>,
    now_ms: u64,
) -> Entry {
    // One pass for a valid payload: `map` yields the same id and lane as `identify` (a property
    // the payload crate tests); only a rejected payload needs `identify` for its identity.
    let user = props.map_or(&[][..], |p| &p.user[..]);
    match mapper.map_with_props(topic, payload, user) {
        Ok(m) => Entry::Pending(Record::new(
            m.alert_id,
            topic,
            payload,
            lane(m.priority),
            now_ms,
        )),
        Err(rej) => {
            let ident = mapper.identify(topic, payload);
            let (kind, kept, message) = match rej.kind {
                RejectionKind::TooLarge => {
                    let (kept, note) = oversize_prefix(payload);
                    (DeadKind::Oversize, kept, format!("{}; {note}", rej.reason))
                }
                _ => (DeadKind::Malformed, payload, rej.reason),
            };
            Entry::DeadLetter(
                Record::new(ident.alert_id, topic, kept, lane(ident.priority), now_ms),
                DeadReason {
                    kind,
                    message,
                    status: None,
                    api_message: None,
                },
            )
        }
    }
}

/// How much of an oversize payload its dead letter keeps.
pub(crate) const OVERSIZE_PREFIX: usize = 1024;

/// An oversize payload is dead-lettered as a bounded prefix plus its length and SHA-256, not in
/// full: a device sending 5 MB payloads must not fill the dead-letter budget with them (and the
/// digest still lets an operator match the original at the device).
fn oversize_prefix(payload: &[u8]) -> (&[u8], String) {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(payload));
    let kept = &payload[..payload.len().min(OVERSIZE_PREFIX)];
    (
        kept,
        format!(
            "payload of {} bytes (sha256 {digest}); only its first {} bytes are kept",
            payload.len(),
            kept.len()
        ),
    )
}

/// MQTT 5: the publisher's Message Expiry Interval as the alert's TTL, counted from its receipt
/// (like the lane TTLs, by the drain's age rule), when the publisher set one.
pub(crate) fn publisher_ttl(record: &Record) -> Option<std::time::Duration> {
    let secs = record.mqtt.as_ref()?.expiry_secs?;
    Some(std::time::Duration::from_secs(u64::from(secs)))
}

/// The dead-letter reason of an alert whose publisher's message expiry ran out: it names the
/// publisher's expiry, so an operator does not look for a TTL in the agent's config.
pub(crate) fn publisher_expiry_reason(
    record: &Record,
    ttl: std::time::Duration,
    age_ms: u64,
) -> String {
    let mut message = format!(
        "expired: the publisher's MQTT 5 message expiry of {} s (what was left of it when the broker handed the alert over) ran out before delivery (age {} s, {} attempt(s))",
        ttl.as_secs(),
        age_ms / 1000,
        record.attempts
    );
    if let Some(e) = &record.last_error {
        message.push_str("; last error: ");
        message.push_str(e);
    }
    message
}
