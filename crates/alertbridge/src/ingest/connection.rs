//! The connection task, once for both MQTT versions: epochs (I2), subscriptions (S1), acks
//! handed to the link, reconnect backoff, the graceful goodbye. What is protocol-specific is
//! behind [`MqttLink`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{LinkEvent, MqttLink};
use super::marker::SessionMarker;
use super::{AckToken, IngestError, Stamped};
use crate::clock::{now, now_ms};
use crate::config::MqttConfig;
use crate::events::{
    self, BrokerUnreachable, Counters, SessionLost, Subscribed, SubscriptionRefused,
};
use crate::session::{
    reconnect_delay, ConnectFailures, Grant, Known, SessionHistory, SubCode, Subscriptions,
};

/// The connection task. Never blocks the event loop on our I/O; acks are queued here only.
///
/// It also keeps the subscriptions (**S1**, [`crate::session`]): it subscribes after every
/// CONNACK until a SUBACK of this process granted QoS 1 for every filter on the broker's current
/// session, and asks again for refused filters on the open connection. Reconnects wait a
/// jittered exponential backoff between `mqtt.reconnect_min_ms` and `reconnect_max_ms`.
///
/// And it reports a lost session (**S2**): a CONNACK without a session although one of ours
/// held a subscription before (a SUBACK of this process, or `marker`'s record of an earlier
/// one) is a warning, counted and shown in status. `marker` is written on the blocking pool
/// after the first granting SUBACK when the store did not record this client id and broker.
pub(super) async fn connection<L: MqttLink>(
    cfg: MqttConfig,
    mut link: L,
    marker: SessionMarker,
    pub_tx: mpsc::Sender<Stamped>,
    mut ack_rx: mpsc::UnboundedReceiver<Vec<AckToken>>,
    counters: Arc<Counters>,
    batcher_done: CancellationToken,
) -> Result<(), IngestError> {
    let mut epoch: u64 = 0;
    let broker = crate::config::display_url(&format!("{}:{}", cfg.host, cfg.port)).into_owned();
    let mut subs = Subscriptions::new(
        cfg.subscribed_filters(),
        cfg.reconnect_min,
        cfg.reconnect_max,
    );
    let mut history = SessionHistory::new(marker.recorded());
    // The marker being written on the blocking pool (S2), joined in the loop below: never
    // detached, and an fsync on a slow card does not hold up the MQTT loop.
    let mut recording: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    let mut failures = ConnectFailures::default();
    // A CONNACK was seen since the last connection error.
    let mut up = false;
    report_subscriptions(&counters, &subs);
    let mut pub_tx = Some(pub_tx);
    // Acks released by the batcher that rumqttc's request channel could not take yet.
    let mut ack_backlog: VecDeque<AckToken> = VecDeque::new();
    let mut acks_open = true;
    loop {
        // Liveness: `/health` checks this loop turned recently (rumqttc's poll returns at least
        // at every keep-alive ping, or after each reconnect attempt).
        counters.mqtt_tick_ms.store(now_ms(), Ordering::Relaxed);
        if !ack_backlog.is_empty() {
            link.write_acks(epoch, &mut ack_backlog, &counters).await;
        }
        if !acks_open && ack_backlog.is_empty() {
            // batcher gone and every ack queued: say goodbye and stop
            break;
        }
        let subscribe_retry = subs.next_retry().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            acks = ack_rx.recv(), if acks_open => {
                match acks {
                    Some(acks) => {
                        ack_backlog.extend(acks);
                        link.write_acks(epoch, &mut ack_backlog, &counters).await;
                    }
                    None => acks_open = false,
                }
            }
            _ = batcher_done.cancelled(), if pub_tx.is_some() => {
                // The batcher stopped taking publishes; stop feeding it. Its last acks are
                // still in ack_rx and get queued before the disconnect.
                pub_tx = None;
            }
            _ = sleep_until(subscribe_retry) => {
                if let Some((filters, timed_out)) = subs.due(now()) {
                    if timed_out {
                        tracing::warn!(
                            timeout_secs = crate::session::SUBACK_TIMEOUT.as_secs(),
                            "the broker did not answer our SUBSCRIBE; sending it again"
                        );
                    }
                    subscribe(&link, &mut subs, filters);
                    report_subscriptions(&counters, &subs);
                }
            }
            joined = join_recording(&mut recording) => {
                recording = None;
                marker_written(&marker, joined);
            }
            ev = link.poll() => match ev {
                Ok(LinkEvent::ConnAck { session_present, detail, session_expiry_secs }) => {
                    epoch += 1;
                    up = true;
                    let failed = failures.on_connack();
                    let mut detail = match detail {
                        Some(d) => format!("session_present={session_present} {d}"),
                        None => format!("session_present={session_present}"),
                    };
                    if failed > 0 {
                        detail.push_str(&format!(" after {failed} failed attempts"));
                    }
                    events::connection_changed(&counters, true, &detail);
                    // S2: no session, although one of ours held a subscription: say so.
                    if let Some(lost) =
                        history.on_connack(session_present, session_expiry_secs, now())
                    {
                        SessionLost {
                            broker: &broker,
                            client_id: &cfg.client_id,
                            known_from: match lost.known {
                                Known::ThisProcess => "a SUBACK this process saw on the session",
                                Known::Store => "the store's record of an earlier run (mqtt-session.json)",
                            },
                            disconnected_for: lost.disconnected_for,
                            session_expiry_secs: lost.session_expiry_secs,
                        }
                        .emit(&counters);
                    }
                    // S1: "session present" does not prove the session holds our
                    // subscriptions (the SUBACK of its first SUBSCRIBE may never have come):
                    // subscribe every filter no SUBACK of this process granted on this session.
                    let missing = subs.on_connack(session_present);
                    if !missing.is_empty() {
                        subscribe(&link, &mut subs, missing);
                    }
                    report_subscriptions(&counters, &subs);
                }
                Ok(LinkEvent::SubscribeSent(pkid)) => subs.on_subscribe_sent(pkid),
                Ok(LinkEvent::SubAck { pkid, codes }) => {
                    let granted = on_suback(&mut subs, pkid, &codes, &counters);
                    // S2: the session holds a subscription now; the store remembers it once.
                    if granted && history.on_granted() {
                        let marker = marker.clone();
                        recording = Some(tokio::task::spawn_blocking(move || marker.record()));
                    }
                }
                Ok(LinkEvent::Publish(p)) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    // A full channel parks us here: back-pressure to the broker. Without a
                    // sender (shutting down) the publish is not acked: the broker keeps it.
                    if let Some(tx) = &pub_tx {
                        if tx.send((epoch, p, Instant::now())).await.is_err() {
                            pub_tx = None;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc keeps packets it already decoded from the dead connection in
                    // `state.events` and hands them out after a reconnect (v4 after the next
                    // ConnAck, v5 just before it). Take them now:
                    // their publishes are stored (the broker may not resend them if it lost
                    // the session) but stamped with the dead epoch, so they are never acked on
                    // the new connection, where their packet ids may name other messages (I2).
                    // A SUBACK among them is dropped: its filters are subscribed again (S1).
                    for p in link.take_buffered() {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &pub_tx {
                            if tx.send((epoch, p, Instant::now())).await.is_err() {
                                pub_tx = None;
                            }
                        }
                    }
                    // S1: a SUBSCRIBE still in rumqttc's queue would be sent on the next
                    // connection if the broker resumes the session; whether to subscribe is
                    // decided afresh at that CONNACK instead, so two never cross.
                    link.forget_queued_subscribes();
                    subs.on_connection_lost();
                    history.on_connection_lost(now());
                    // I2: anything acked from now on must come from the next connection.
                    epoch += 1;
                    let error = e;
                    let (errors, unreachable) = if std::mem::take(&mut up) {
                        events::connection_changed(&counters, false, &error);
                        (failures.on_lost(), None)
                    } else {
                        failures.on_attempt_failed(now())
                    };
                    let delay = reconnect_delay(cfg.reconnect_min, cfg.reconnect_max, errors, fastrand::f64());
                    if let Some(u) = unreachable {
                        BrokerUnreachable {
                            broker: &broker,
                            attempts: u.attempts,
                            failing_for: u.for_,
                            error: &error,
                            retry_in: delay,
                        }
                        .emit();
                    }
                    tracing::debug!(error = %error, retry_in_ms = delay.as_millis() as u64, "mqtt connection error");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = batcher_done.cancelled() => {}
                    }
                    if batcher_done.is_cancelled() && pub_tx.is_none() {
                        // no broker and shutting down: nothing can be acked anyway
                        let mut dropped = ack_backlog.len() as u64;
                        while let Ok(acks) = ack_rx.try_recv() {
                            dropped += acks.len() as u64;
                        }
                        counters.stale_acks_skipped.fetch_add(dropped, Ordering::Relaxed);
                        if let Some(h) = recording.take() {
                            marker_written(&marker, h.await);
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
    // Graceful goodbye: queue DISCONNECT and poll until the queued acks and it are written.
    link.try_disconnect();
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            ev = link.poll() => match ev {
                Ok(LinkEvent::Disconnected) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    events::disconnected_for_shutdown(&counters);
    if let Some(h) = recording.take() {
        marker_written(&marker, h.await);
    }
    Ok(())
}

/// The marker write in flight, or forever without one (a disabled `select!` branch).
async fn join_recording(
    h: &mut Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<std::io::Result<()>, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Log how writing the marker ended. A failure costs only the report of a session lost while
/// the agent is stopped (S2); it is tried again at the next start.
fn marker_written(
    marker: &SessionMarker,
    joined: Result<std::io::Result<()>, tokio::task::JoinError>,
) {
    let path = marker.path();
    match joined {
        Ok(Ok(())) => {
            tracing::debug!(path = %path.display(), "broker session recorded in the store")
        }
        Ok(Err(e)) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot record the broker session in the store: if the broker discards it while alertbridge is stopped, the next start cannot report it"
        ),
        Err(e) => tracing::warn!(error = %e, "recording the broker session in the store failed"),
    }
}

/// Sleep until `at`, or forever without one (a disabled `select!` branch that needs no flag).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queue one SUBSCRIBE at QoS 1 for the filters at `at` (S1). A full request channel (acks
/// waiting to be written) is not an error: the filters stay wanted and are asked again shortly.
fn subscribe<L: MqttLink>(link: &L, subs: &mut Subscriptions, at: Vec<usize>) {
    match link.try_subscribe(subs.filters(&at)) {
        Ok(()) => subs.subscribe_queued(at, now()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot queue SUBSCRIBE now; trying again shortly");
            subs.subscribe_not_queued(now());
        }
    }
}

/// A SUBACK: per filter, held (info `subscribed`) or refused / downgraded (error, counted,
/// shown in status); then the totals for status. True when it granted at least one filter.
fn on_suback(subs: &mut Subscriptions, pkid: u16, codes: &[SubCode], counters: &Counters) -> bool {
    let Some(answers) = subs.on_suback(pkid, codes, now(), fastrand::f64()) else {
        tracing::debug!(pkid, "SUBACK answering no SUBSCRIBE in flight; ignored");
        return false;
    };
    let retry = match subs.next_retry() {
        Some(at) => format!(
            "asked again in {} ms, and at every reconnect",
            at.saturating_duration_since(now()).as_millis()
        ),
        None => "asked again at the next connection".to_string(),
    };
    for a in &answers {
        match a.grant {
            Grant::Held => Subscribed {
                filter: &a.filter,
                qos: a.qos.map_or(1, |q| q as u8),
            }
            .emit(),
            Grant::Refused | Grant::Downgraded => SubscriptionRefused {
                filter: &a.filter,
                granted_qos: a.qos.map(|q| q as u8),
                again: a.again,
                retry: if a.grant == Grant::Refused {
                    &retry
                } else {
                    "asked again at the next connection"
                },
                refusal: a.refusal.as_deref(),
            }
            .emit(counters),
            Grant::Wanted => tracing::warn!(
                topic = %a.filter,
                "the broker's SUBACK has no return code for this filter; asking again"
            ),
        }
    }
    report_subscriptions(counters, subs);
    answers.iter().any(|a| a.grant == Grant::Held)
}

/// Held / wanted / what is wrong, into the counters `status` reads.
fn report_subscriptions(counters: &Counters, subs: &Subscriptions) {
    events::subscriptions_changed(counters, subs.held(), subs.wanted(), subs.error());
}
