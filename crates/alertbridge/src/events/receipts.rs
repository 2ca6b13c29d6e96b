//! Events of the receipts publisher (`crate::receipts`): published, dropped by the outbox
//! bound, its connection. Receipts are a courtesy to the plant: none of these affects alerts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Counters;

/// The broker acknowledged one receipt (it is marked done in the log).
pub fn receipt_published(c: &Counters) {
    Counters::add(&c.receipts_published, 1);
}

/// `n` receipts were dropped unpublished (`why`: over the count bound, or too old); counted by
/// the caller on every drop, this line at most once a minute with the total since the last one.
pub fn receipts_dropped(n: u64, why: &str, oldest_alert_id: &str) {
    tracing::warn!(
        dropped = n,
        why,
        oldest_alert_id,
        "delivery receipts dropped unpublished (alerts are not affected)"
    );
}

/// An alert's MQTT 5 response topic was refused (`problem`); `n` refusals since the last line
/// (counted by the caller every time, this line at most once a minute).
pub fn receipt_reply_refused(
    n: u64,
    alert_id: &str,
    problem: &str,
    mode: crate::config::ResponseTopic,
) {
    let instead = match mode {
        crate::config::ResponseTopic::Only => "its receipt is not published",
        _ => "its receipt goes to receipts.topic instead",
    };
    tracing::warn!(
        refused = n,
        alert_id,
        problem,
        instead,
        "an MQTT 5 publisher's response topic was refused for a delivery receipt"
    );
}

/// The publisher's connection came up (`client_id` set) or went down.
pub fn receipts_connection(c: &Counters, up: bool, client_id: Option<&str>) {
    let was = c.receipts_connected.swap(up, Ordering::Relaxed);
    if up && !was {
        tracing::info!(
            client_id = client_id.unwrap_or(""),
            "receipts publisher connected"
        );
    }
}

/// The publisher's connection failed; it connects again after `backoff`.
pub fn receipts_connection_failed(
    _c: &Counters,
    error: &crate::receipts::ReceiptsError,
    backoff: Duration,
) {
    tracing::warn!(
        error = %chain(error),
        retry_in_ms = backoff.as_millis() as u64,
        "receipts publisher connection failed; receipts wait in the log"
    );
}

/// The error and its causes, `: `-separated (each message names only its own step).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
