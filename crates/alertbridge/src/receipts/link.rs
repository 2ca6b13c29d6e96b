//! The publisher's own MQTT connection, in the protocol ingest speaks (`mqtt.protocol`): a
//! 3.1.1 client, or an MQTT 5 client that can echo a publisher's Correlation Data and that
//! hears the broker refuse a receipt (a PUBACK reason code such as 0x87 NotAuthorized; 3.1.1
//! has no way to say so).

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{Event, Outgoing, Packet, QoS};

use super::message::ReceiptPublish;
use super::ReceiptsError;
use crate::config::{MqttConfig, MqttProtocol};

/// What the publisher needs to know of one event of its connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LinkEvent {
    /// The broker accepted the connection.
    ConnAck,
    /// The client wrote the next handed receipt as a PUBLISH with this packet id.
    Sent(u16),
    /// The broker acknowledged the PUBLISH with this packet id.
    Acked(u16),
    /// The broker answered the PUBLISH with this packet id with an MQTT 5 refusal.
    Refused {
        /// Packet id.
        pkid: u16,
        /// The reason code and its MQTT 5 name.
        reason: &'static str,
        /// Whether publishing it again would be refused again ([`refusal`]).
        permanent: bool,
    },
    /// Anything else.
    Other,
}

/// A clean-session client and its event loop.
pub(super) struct Link {
    /// Hands receipts to the client (`Send + Sync`: held across the log's awaits).
    pub(super) sender: Sender,
    /// The event loop, polled by the publisher's loop.
    pub(super) events: Events,
}

/// The client half of a [`Link`].
pub(super) enum Sender {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event-loop half of a [`Link`].
pub(super) enum Events {
    // Boxed, both: one per connection, and the variants differ by hundreds of bytes.
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl Link {
    /// Client `own.client_id` with room for `window` receipts in flight; no I/O (the first
    /// poll connects). Clean session: nothing is re-sent behind our back, the log is the only
    /// queue.
    pub(super) fn new(own: &MqttConfig, window: usize) -> Result<Link, ReceiptsError> {
        let inflight = u16::try_from(window).unwrap_or(u16::MAX);
        Ok(match own.protocol {
            MqttProtocol::V311 => {
                let mut o =
                    crate::ingest::mqtt_options(own, window).map_err(ReceiptsError::Options)?;
                o.set_clean_session(true)
                    .set_manual_acks(false)
                    .set_inflight(inflight);
                let (client, eventloop) = rumqttc::AsyncClient::new(o, window * 2);
                Link {
                    sender: Sender::V4(client),
                    events: Events::V4(Box::new(eventloop)),
                }
            }
            MqttProtocol::V5 => {
                let mut o = crate::ingest::mqtt5_options(own, window * 2)
                    .map_err(ReceiptsError::Options)?;
                o.set_clean_start(true)
                    .set_manual_acks(false)
                    .set_outgoing_inflight_upper_limit(inflight);
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, window * 2);
                Link {
                    sender: Sender::V5(client),
                    events: Events::V5(Box::new(eventloop)),
                }
            }
        })
    }
}

impl Events {
    pub(super) async fn poll(&mut self) -> Result<LinkEvent, ReceiptsError> {
        Ok(match self {
            Events::V4(eventloop) => match eventloop
                .poll()
                .await
                .map_err(|e| ReceiptsError::Connection(e.into()))?
            {
                Event::Incoming(Packet::ConnAck(_)) => LinkEvent::ConnAck,
                Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
                Event::Incoming(Packet::PubAck(ack)) => LinkEvent::Acked(ack.pkid),
                _ => LinkEvent::Other,
            },
            Events::V5(eventloop) => match eventloop
                .poll()
                .await
                .map_err(|e| ReceiptsError::Connection(e.into()))?
            {
                rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_)) => LinkEvent::ConnAck,
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
                rumqttc::v5::Event::Incoming(V5Packet::PubAck(ack)) => match refusal(&ack.reason) {
                    None => LinkEvent::Acked(ack.pkid),
                    Some((reason, permanent)) => LinkEvent::Refused {
                        pkid: ack.pkid,
                        reason,
                        permanent,
                    },
                },
                _ => LinkEvent::Other,
            },
        })
    }
}

impl Sender {
    /// Hands one receipt to the client (QoS 1); with MQTT 5 it carries the content type and
    /// the publisher's correlation data.
    pub(super) fn publish(&self, out: ReceiptPublish) -> Result<(), ReceiptsError> {
        match self {
            Sender::V4(client) => client
                .try_publish(out.topic, QoS::AtLeastOnce, out.retain, out.payload)
                .map_err(|e| ReceiptsError::Client(e.into())),
            Sender::V5(client) => {
                let props = PublishProperties {
                    payload_format_indicator: Some(1),
                    content_type: Some("application/json".to_owned()),
                    correlation_data: out.correlation.map(Into::into),
                    ..PublishProperties::default()
                };
                client
                    .try_publish_with_properties(
                        out.topic,
                        V5QoS::AtLeastOnce,
                        out.retain,
                        out.payload,
                        props,
                    )
                    .map_err(|e| ReceiptsError::Client(e.into()))
            }
        }
    }

    pub(super) fn disconnect(&self) {
        match self {
            Sender::V4(client) => {
                let _ = client.try_disconnect();
            }
            Sender::V5(client) => {
                let _ = client.try_disconnect();
            }
        }
    }
}

/// The reason code and name of a PUBACK that refused the receipt, and whether the refusal is
/// permanent; `None` when it was accepted (Success, or NoMatchingSubscribers: published, nobody
/// listens). Permanent: the ACL (0x87), the topic (0x90) or the payload (0x99) would be refused
/// again. The others (quota, packet id in use, unspecified, implementation specific) may pass
/// later: the receipt stays in the log and is published again on the next connection.
pub(super) fn refusal(reason: &PubAckReason) -> Option<(&'static str, bool)> {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
        PubAckReason::NotAuthorized => Some(("0x87 NotAuthorized", true)),
        PubAckReason::TopicNameInvalid => Some(("0x90 TopicNameInvalid", true)),
        PubAckReason::PayloadFormatInvalid => Some(("0x99 PayloadFormatInvalid", true)),
        PubAckReason::UnspecifiedError => Some(("0x80 UnspecifiedError", false)),
        PubAckReason::ImplementationSpecificError => {
            Some(("0x83 ImplementationSpecificError", false))
        }
        PubAckReason::PacketIdentifierInUse => Some(("0x91 PacketIdentifierInUse", false)),
        PubAckReason::QuotaExceeded => Some(("0x97 QuotaExceeded", false)),
    }
}
