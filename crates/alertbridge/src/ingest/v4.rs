//! MQTT 3.1.1 under the connection task: rumqttc's v4 client, and PUBACKs written straight
//! onto the current connection.

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use std::collections::VecDeque;

use super::link::{credentials, queue_acks, transport, Inbound, LinkEvent, MqttLink};
use super::{AckToken, IngestError};
use crate::config::MqttConfig;
use crate::events::{Acked, Counters};
use crate::session::SubCode;

/// Largest MQTT packet accepted from the broker: the largest MQTT allows (a remaining length of
/// 268 435 455 bytes, MQTT 3.1.1 §2.2.3).
///
/// Why the protocol maximum: a payload over the mapping's `max_payload_bytes` must *arrive* so
/// it can be dead-lettered (as a 1 KiB prefix + length + SHA-256) and acked. When rumqttc refuses
/// a packet it drops the connection, and the persistent session resends the same publish on
/// every reconnect: one publish over the client's limit used to stop all ingest for good (with
/// the earlier 16 MiB limit; mosquitto's default `message_size_limit` is unlimited). The cost is
/// memory for one such packet while it is read; `docs/operations.md` tells operators to set the
/// broker's `message_size_limit` (e.g. 1 MiB), which keeps such publishes off the gateway.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

/// rumqttc's v4 client and event loop of one agent.
pub(super) struct V4Link {
    client: AsyncClient,
    eventloop: EventLoop,
}

impl V4Link {
    /// Client and event loop from the validated config (no I/O: rumqttc connects at the first
    /// poll).
    pub(super) fn new(cfg: &MqttConfig, batch_max: usize) -> Result<V4Link, IngestError> {
        let options = mqtt_options(cfg, batch_max)?;
        let (client, eventloop) = AsyncClient::new(options, request_channel_capacity(batch_max));
        Ok(V4Link { client, eventloop })
    }
}

impl From<Publish> for Inbound {
    fn from(p: Publish) -> Inbound {
        Inbound {
            topic: p.topic,
            payload: p.payload,
            pkid: p.pkid,
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
            props: None,
        }
    }
}

/// A publish rumqttc's `try_ack` turns into the right PUBACK (it reads qos and pkid only).
fn as_publish(token: &AckToken) -> Publish {
    let mut p = Publish::new("", token.qos, Vec::<u8>::new());
    p.pkid = token.pkid;
    p
}

impl MqttLink for V4Link {
    async fn poll(&mut self) -> Result<LinkEvent, String> {
        Ok(
            match self.eventloop.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(ack)) => LinkEvent::ConnAck {
                    session_present: ack.session_present,
                    detail: None,
                    session_expiry_secs: None,
                },
                Event::Outgoing(Outgoing::Subscribe(pkid)) => LinkEvent::SubscribeSent(pkid),
                Event::Incoming(Packet::SubAck(s)) => LinkEvent::SubAck {
                    pkid: s.pkid,
                    codes: s
                        .return_codes
                        .into_iter()
                        .map(|c| match c {
                            SubscribeReasonCode::Success(q) => SubCode::Granted(q),
                            SubscribeReasonCode::Failure => SubCode::FAILURE,
                        })
                        .collect(),
                },
                Event::Incoming(Packet::Publish(p)) => LinkEvent::Publish(p.into()),
                Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Disconnected,
                _ => LinkEvent::Other,
            },
        )
    }

    fn take_buffered(&mut self) -> Vec<Inbound> {
        // rumqttc keeps packets it already decoded from the dead connection in `state.events`
        // and hands them out *after* the next ConnAck, where they would be stamped with the new
        // epoch and acked with packet ids that may name other messages (I2).
        std::mem::take(&mut self.eventloop.state.events)
            .into_iter()
            .filter_map(|ev| match ev {
                Event::Incoming(Packet::Publish(p)) => Some(p.into()),
                _ => None,
            })
            .collect()
    }

    fn forget_queued_subscribes(&mut self) {
        self.eventloop
            .pending
            .retain(|r| !matches!(r, rumqttc::Request::Subscribe(_)));
    }

    fn try_subscribe(&self, filters: Vec<String>) -> Result<(), String> {
        let filters = filters
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
        self.client
            .try_subscribe_many(filters)
            .map_err(|e| e.to_string())
    }

    async fn write_acks(
        &mut self,
        epoch: u64,
        backlog: &mut VecDeque<AckToken>,
        counters: &Counters,
    ) {
        write_acks(&mut self.eventloop, &self.client, epoch, backlog, counters).await
    }

    fn try_disconnect(&self) {
        let _ = self.client.try_disconnect();
    }
}

/// (the connection task may queue two batches between polls): an ack that does not fit is
/// counted as withheld and the broker redelivers only on reconnect, holding its in-flight slot.
pub(super) fn request_channel_capacity(batch_max: usize) -> usize {
    batch_max.saturating_mul(4).max(1024)
}

/// Build rumqttc options from the validated config.
pub(crate) fn mqtt_options(cfg: &MqttConfig, batch_max: usize) -> Result<MqttOptions, IngestError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    // Persistent session: the broker keeps QoS1 alerts for us while we are down.
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024)
        .set_request_channel_capacity(request_channel_capacity(batch_max));
    if let Some((user, password)) = credentials(cfg)? {
        o.set_credentials(user, password);
    }
    if let Some(transport) = transport(cfg)? {
        o.set_transport(transport);
    }
    Ok(o)
}

/// Queue PUBACKs for publishes of the current epoch only (I2), as many as rumqttc's request
/// channel takes now; the rest wait in `backlog` for the next turn (after the event loop has
/// written some). An ack that was not sent would hold one of the broker's in-flight slots until
/// the next reconnect, so none is given up while its connection lives; acks of an older epoch
/// are dropped (the broker redelivers those publishes).
///
/// Acks go straight onto the connection, all of them, between two polls: through rumqttc's
/// request channel only one request is written per poll that selects it, while each network
/// read takes up to ten publishes, so under a flood (a broker emptying a long outage's queue)
/// acks fell ever further behind, held memory and, at a stop, left hundreds of thousands of
/// durable alerts unacked for the broker to send again. Written through `EventLoop::state`
/// (so rumqttc's state sees them as sent) and `EventLoop::network` of the current connection;
/// without a connection they fall back to the request channel.
async fn write_acks(
    eventloop: &mut EventLoop,
    client: &AsyncClient,
    epoch: u64,
    backlog: &mut VecDeque<AckToken>,
    counters: &Counters,
) {
    let Some(network) = eventloop.network.as_mut() else {
        queue_acks(epoch, backlog, counters, |t| {
            client.try_ack(&as_publish(t)).is_ok()
        });
        return;
    };
    let (mut acked, mut stale) = (0, 0);
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(token) = backlog.front().copied() {
        if token.epoch != epoch {
            stale += 1;
            backlog.pop_front();
            continue;
        }
        let request = rumqttc::Request::PubAck(rumqttc::PubAck::new(token.pkid));
        match eventloop.state.handle_outgoing_packet(request) {
            Ok(Some(packet)) => {
                if network.write(packet).await.is_err() {
                    failed = true;
                    break;
                }
            }
            Ok(None) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
        acked += 1;
        received.push(token.received);
        backlog.pop_front();
    }
    if !failed && acked > 0 && network.flush().await.is_err() {
        failed = true;
    }
    if failed {
        // The connection is going: the next poll reports it and bumps the epoch, and the acks
        // left are stale then (the broker resends those publishes).
        tracing::debug!("writing PUBACKs failed; the connection is being lost");
    }
    if acked > 0 || stale > 0 {
        Acked {
            acked,
            stale,
            received: &received,
        }
        .emit(counters);
    }
}
