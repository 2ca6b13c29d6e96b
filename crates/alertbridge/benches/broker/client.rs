//! One MQTT client of the benches in either protocol: rumqttc's MQTT 3.1.1 client or its MQTT 5
//! client (`rumqttc::v5`) behind one small interface, so the publisher and the raw subscriber
//! in `broker.rs` are written once and speak the protocol of the row they measure.
//!
//! A v5 publisher sets on every alert what a plant's v5 publisher would: a Message Expiry
//! Interval ([`PUBLISH_EXPIRY_SECS`]) and two user properties ([`USER_PROPERTIES`]), so the
//! agent's MQTT 5 properties path (and the log's record version 2) carries them.
//!
//! Every publish the benches send or receive is QoS 1, so a received one is acked by its packet
//! id alone.

use std::time::Duration;

use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::QoS;

/// Largest MQTT packet the bench clients send or accept: above every bench payload.
const MAX_PACKET: usize = 64 * 1024;

/// Requests a client queues before `publish` waits for its event loop.
const REQUEST_CHANNEL: usize = 10_000;

/// Message Expiry Interval of every alert a v5 publisher sends: far beyond any run, so nothing
/// expires (and the drain of the agent under test is in an outage anyway).
pub(crate) const PUBLISH_EXPIRY_SECS: u32 = 3600;

/// The user properties on every alert a v5 publisher sends.
pub(crate) const USER_PROPERTIES: [(&str, &str); 2] = [("site", "north"), ("line", "press-3")];

/// The MQTT version a bench client (and the agent under test) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// MQTT 3.1.1 (rumqttc's `v4` module).
    V311,
    /// MQTT 5 (`rumqttc::v5`).
    V5,
}

impl Protocol {
    /// Both, in the order the benches print them.
    pub(crate) const ALL: [Protocol; 2] = [Protocol::V311, Protocol::V5];

    /// As `mqtt.protocol` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }

    /// The protocol `mqtt.protocol` names, if any.
    pub(crate) fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A client's handle for requests (publish, subscribe, ack, disconnect); cheap to move into a
/// task while its [`EventLoop`] is polled elsewhere.
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A client's event loop: nothing is sent or received unless it is polled. Boxed: the two are
/// large and of different sizes, and there is one per client.
pub(crate) enum EventLoop {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// What the benches look at among a client's events.
pub(crate) enum Event {
    ConnAck,
    SubAck,
    /// A QoS 1 publish came in; ack it by this packet id.
    Publish(u16),
    PubAck,
    Other,
}

/// A publisher as client `id`, clean session: 1000 publishes in flight at most, fewer if a v5
/// broker's Receive Maximum says so (mosquitto announces its `max_inflight_messages`).
pub(crate) fn publisher(protocol: Protocol, port: u16, id: &str) -> (Client, EventLoop) {
    match protocol {
        Protocol::V311 => {
            let mut o = v4_options(port, id);
            o.set_inflight(1000);
            v4_client(o)
        }
        Protocol::V5 => {
            let mut o = v5_options(port, id);
            o.set_outgoing_inflight_upper_limit(1000);
            v5_client(o)
        }
    }
}

/// A subscriber as client `id` that acks by hand; `clean` picks a clean or a persistent session
/// (in MQTT 5 one that outlives any run). A v5 subscriber announces a Receive Maximum of
/// `receive_maximum`, as the agent does.
pub(crate) fn subscriber(
    protocol: Protocol,
    port: u16,
    id: &str,
    clean: bool,
    receive_maximum: u16,
) -> (Client, EventLoop) {
    match protocol {
        Protocol::V311 => {
            let mut o = v4_options(port, id);
            o.set_clean_session(clean).set_manual_acks(true);
            v4_client(o)
        }
        Protocol::V5 => {
            let mut o = v5_options(port, id);
            o.set_clean_start(clean)
                .set_manual_acks(true)
                .set_session_expiry_interval((!clean).then_some(24 * 3600))
                .set_receive_maximum(Some(receive_maximum));
            v5_client(o)
        }
    }
}

fn v4_options(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o
}

fn v5_options(port: u16, id: &str) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(MAX_PACKET as u32));
    o
}

fn v4_client(o: rumqttc::MqttOptions) -> (Client, EventLoop) {
    let (client, el) = rumqttc::AsyncClient::new(o, REQUEST_CHANNEL);
    (Client::V311(client), EventLoop::V311(Box::new(el)))
}

fn v5_client(o: v5::MqttOptions) -> (Client, EventLoop) {
    let (client, el) = v5::AsyncClient::new(o, REQUEST_CHANNEL);
    (Client::V5(client), EventLoop::V5(Box::new(el)))
}

impl Client {
    /// Queues a QoS 1 publish (v5: with the expiry and user properties of the module doc);
    /// waits while the request channel is full.
    pub(crate) async fn publish(&self, topic: String, payload: String) {
        let queued = match self {
            Client::V311(c) => c
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let properties = PublishProperties {
                    message_expiry_interval: Some(PUBLISH_EXPIRY_SECS),
                    user_properties: USER_PROPERTIES
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..PublishProperties::default()
                };
                let qos = v5::mqttbytes::QoS::AtLeastOnce;
                c.publish_with_properties(topic, qos, false, payload, properties)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        queued.expect("queue publish");
    }

    /// Queues a QoS 1 subscription to `filter` without waiting.
    pub(crate) fn try_subscribe(&self, filter: &str) {
        let queued = match self {
            Client::V311(c) => c
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        };
        queued.expect("queue subscribe");
    }

    /// Queues the PUBACK of publish `pkid` without waiting; false when the request channel is
    /// full (a full channel must not block: nobody would poll the event loop that empties it).
    pub(crate) fn try_ack(&self, pkid: u16) -> bool {
        match self {
            Client::V311(c) => {
                let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
            Client::V5(c) => {
                let mut p =
                    v5::mqttbytes::v5::Publish::new("", v5::mqttbytes::QoS::AtLeastOnce, "", None);
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
        }
    }

    /// Queues a DISCONNECT, waiting for room in the request channel.
    pub(crate) async fn disconnect(&self) {
        // An error means the event loop is gone: nothing left to disconnect.
        match self {
            Client::V311(c) => drop(c.disconnect().await),
            Client::V5(c) => drop(c.disconnect().await),
        }
    }

    /// Queues a DISCONNECT if the request channel has room.
    pub(crate) fn try_disconnect(&self) {
        match self {
            Client::V311(c) => drop(c.try_disconnect()),
            Client::V5(c) => drop(c.try_disconnect()),
        }
    }
}

impl EventLoop {
    /// The next event; an error is the connection's (rumqttc reconnects at the next poll).
    pub(crate) async fn poll(&mut self) -> Result<Event, String> {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        use rumqttc::Packet as P4;
        Ok(match self {
            EventLoop::V311(el) => match el.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(P4::ConnAck(_)) => Event::ConnAck,
                rumqttc::Event::Incoming(P4::SubAck(_)) => Event::SubAck,
                rumqttc::Event::Incoming(P4::Publish(p)) => Event::Publish(p.pkid),
                rumqttc::Event::Incoming(P4::PubAck(_)) => Event::PubAck,
                rumqttc::Event::Incoming(_) | rumqttc::Event::Outgoing(_) => Event::Other,
            },
            EventLoop::V5(el) => match el.poll().await.map_err(|e| e.to_string())? {
                v5::Event::Incoming(P5::ConnAck(_)) => Event::ConnAck,
                v5::Event::Incoming(P5::SubAck(_)) => Event::SubAck,
                v5::Event::Incoming(P5::Publish(p)) => Event::Publish(p.pkid),
                v5::Event::Incoming(P5::PubAck(_)) => Event::PubAck,
                v5::Event::Incoming(_) | v5::Event::Outgoing(_) => Event::Other,
            },
        })
    }
}
