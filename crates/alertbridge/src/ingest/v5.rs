//! MQTT 5 under the connection task (`mqtt.protocol = "5"`): rumqttc's v5 client.
//!
//! What differs from MQTT 3.1.1 (`v4.rs`):
//! - **Acks go through rumqttc's request channel** (`try_ack`), never straight onto the socket:
//!   rumqttc 0.25's v5 event loop keeps its connection private. The I2 rule is the same as for
//!   v4's fallback path ([`queue_acks`]): a PUBACK still in the channel when the connection
//!   fails is dropped by rumqttc, one queued later carries an old epoch and is never queued.
//!   The event loop writes one request per turn while a network read brings up to ten
//!   publishes, so acks lag under a flood; Receive Maximum would bound that, but mosquitto 2.0.11
//!   sends a resumed session's queued backlog past it (measured: 153 000 fsynced alerts waiting
//!   for their ack during a 200 000 backlog, docs/benchmarks.md). Nothing is lost (I1 holds for
//!   each one); a crash then makes the broker resend them, and the duplicate window stores none
//!   twice while it covers them (docs/operations.md, "Known limitation").
//! - **Session Expiry Interval** `mqtt.session_expiry_secs` (default 7 days) with Clean Start = 0:
//!   the broker keeps the session and queues alerts that long while we are away. The value the
//!   broker grants is logged with each CONNACK.
//! - **Maximum Packet Size** is announced at the protocol maximum. A v5 broker must *discard* a
//!   publish larger than what the client announced, as if delivered; with rumqttc's 10 KiB
//!   default every larger alert would vanish instead of being dead-lettered `Oversize`.
//! - **SUBACK reason codes** (0x87 NotAuthorized, …) reach status and the log.
//! - A publish's **Message Expiry Interval**, **user properties**, **Response Topic** and
//!   **Correlation Data** are kept with the alert ([`MqttProps`]): the drain dead-letters it
//!   `Expired` once the expiry runs out, the mapping reads user properties as `$props.<name>`,
//!   and with `[receipts]` the alert's receipt goes to its response topic with its correlation
//!   data (`crate::receipts`).
//! - Retained alerts are asked for only on a new subscription (Retain Handling 1), so
//!   subscribing again to a filter the resumed session already holds (S1) re-sends nothing.
//! - Publishes rumqttc buffered from a dead connection come out *before* the next ConnAck in v5
//!   (after it in v4); [`MqttLink::take_buffered`] takes them on the error either way.

use std::collections::VecDeque;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_wal::{MqttProps, REPLY_MAX};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, Packet, Publish, PublishProperties, RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use rumqttc::{Outgoing, QoS};

use super::link::{credentials, queue_acks, transport, Inbound, LinkEvent, MqttLink};
use super::{AckToken, IngestError};
use crate::config::MqttConfig;
use crate::events::Counters;
use crate::session::SubCode;

/// Maximum Packet Size announced to the broker: the largest packet MQTT allows (a remaining
/// length of 268 435 455 bytes plus at most 5 header bytes). See the module doc for why.
pub(super) const MAX_PACKET_SIZE: u32 = 268_435_460;

/// rumqttc's v5 client and event loop of one agent.
pub(super) struct V5Link {
    client: AsyncClient,
    eventloop: EventLoop,
    /// The session expiry we asked for, logged when the broker does not name another.
    asked_session_expiry: u32,
    /// Which response topics are kept with the alert ([`inbound`]).
    reply: ReplyPolicy,
}

impl V5Link {
    /// Client and event loop from the validated config (no I/O: rumqttc connects at the first
    /// poll).
    pub(super) fn new(
        cfg: &MqttConfig,
        batch_max: usize,
        counters: Arc<Counters>,
    ) -> Result<V5Link, IngestError> {
        // The request channel carries our PUBACKs: room for every publish the broker may have
        // unacked (Receive Maximum) and then some, so `try_ack` does not find it full.
        let capacity = super::v4::request_channel_capacity(batch_max)
            .max(usize::from(cfg.receive_maximum).saturating_mul(2));
        let mut o = mqtt5_options(cfg, capacity)?;
        // Persistent session: Clean Start = 0, and the broker keeps it for session_expiry_secs.
        o.set_clean_start(false)
            .set_manual_acks(true)
            .set_session_expiry_interval(Some(cfg.session_expiry_secs))
            .set_receive_maximum(Some(cfg.receive_maximum));
        let (client, eventloop) = AsyncClient::new(o, capacity);
        Ok(V5Link {
            client,
            eventloop,
            asked_session_expiry: cfg.session_expiry_secs,
            reply: ReplyPolicy::new(cfg.keep_response_topic, counters),
        })
    }

    /// The session expiry in force after this CONNACK: the broker's if it named one (it may
    /// grant less than asked), else ours.
    fn session_expiry(&self, ack: &ConnAck) -> u32 {
        ack.properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(self.asked_session_expiry)
    }

    /// What a CONNACK says worth a line: the session expiry in force and the broker's limits.
    fn connack_detail(&self, ack: &ConnAck) -> String {
        let props = ack.properties.as_ref();
        let granted = props.and_then(|p| p.session_expiry_interval);
        let mut detail = match granted {
            Some(s) if s != self.asked_session_expiry => format!(
                "session_expiry_secs={s} (the broker's; {} asked)",
                self.asked_session_expiry
            ),
            _ => format!("session_expiry_secs={}", self.asked_session_expiry),
        };
        if let Some(r) = props.and_then(|p| p.receive_max) {
            detail.push_str(&format!(" broker_receive_maximum={r}"));
        }
        detail
    }
}

/// MQTT 5 options every connection of the agent shares (ingest's and the receipts
/// publisher's): address, keep-alive, credentials, TLS, the [`MAX_PACKET_SIZE`] announcement
/// and a request channel of `capacity`; the session settings are the caller's.
pub(crate) fn mqtt5_options(cfg: &MqttConfig, capacity: usize) -> Result<MqttOptions, IngestError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(Some(MAX_PACKET_SIZE))
        .set_request_channel_capacity(capacity);
    if let Some((user, password)) = credentials(cfg)? {
        o.set_credentials(user, password);
    }
    if let Some(transport) = transport(cfg)? {
        o.set_transport(transport);
    }
    Ok(o)
}

/// Whether an MQTT 5 publisher's Response Topic and Correlation Data are kept with its alert:
/// only while receipts may go there (`mqtt.keep_response_topic`), only a response topic (with
/// its correlation data; correlation data alone names no place to answer), and only up to
/// [`REPLY_MAX`] bytes each. Kept or not, the alert is stored: a record without them is written
/// in the older frame version, so turning receipts off keeps a downgrade possible.
pub(super) struct ReplyPolicy {
    keep: bool,
    counters: Arc<Counters>,
    unwarned: u64,
    last_warn: Option<Instant>,
}

/// Oversize response topics are warned at most this often (counted every time).
const REPLY_WARN_EVERY: Duration = Duration::from_secs(60);

impl ReplyPolicy {
    pub(super) fn new(keep: bool, counters: Arc<Counters>) -> ReplyPolicy {
        ReplyPolicy {
            keep,
            counters,
            unwarned: 0,
            last_warn: None,
        }
    }

    /// `props` with the response topic and correlation data cleared unless they are kept.
    fn apply(&mut self, topic: &[u8], props: &mut PublishProperties) {
        let asked = props.response_topic.is_some();
        if !self.keep || !asked {
            props.response_topic = None;
            props.correlation_data = None;
            return;
        }
        let topic_len = props.response_topic.as_ref().map_or(0, String::len);
        let corr_len = props.correlation_data.as_ref().map_or(0, |c| c.len());
        if topic_len <= REPLY_MAX && corr_len <= REPLY_MAX {
            return;
        }
        props.response_topic = None;
        props.correlation_data = None;
        self.counters
            .receipts_reply_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.unwarned += 1;
        if self
            .last_warn
            .is_none_or(|at| at.elapsed() >= REPLY_WARN_EVERY)
        {
            tracing::warn!(
                refused = self.unwarned,
                topic = %String::from_utf8_lossy(topic),
                response_topic_bytes = topic_len,
                correlation_bytes = corr_len,
                max = REPLY_MAX,
                "an MQTT 5 response topic or correlation data over the limit is not kept with \
                 the alert; its receipt follows receipts.response_topic as if none was set"
            );
            self.unwarned = 0;
            self.last_warn = Some(Instant::now());
        }
    }
}

/// A v5 publish as the batcher sees it; its response topic as `reply` allows.
fn inbound(p: Publish, reply: &mut ReplyPolicy) -> Inbound {
    Inbound {
        // A v5 broker must send a valid UTF-8 topic name (MQTT 5 §1.5.4, §4.7.3) and never a
        // topic alias we did not allow; a lossy conversion keeps a broken one visible in the
        // dead letter rather than failing the connection.
        topic: String::from_utf8_lossy(&p.topic).into_owned(),
        payload: p.payload,
        pkid: p.pkid,
        qos: match p.qos {
            V5QoS::AtMostOnce => QoS::AtMostOnce,
            V5QoS::AtLeastOnce => QoS::AtLeastOnce,
            V5QoS::ExactlyOnce => QoS::ExactlyOnce,
        },
        dup: p.dup,
        retain: p.retain,
        props: p.properties.and_then(|mut props| {
            reply.apply(&p.topic, &mut props);
            let kept = MqttProps {
                expiry_secs: props.message_expiry_interval,
                user: props.user_properties,
                response_topic: props.response_topic,
                correlation: props.correlation_data.map(|c| c.to_vec()),
            };
            (kept != MqttProps::default()).then(|| Box::new(kept))
        }),
    }
}

/// A v5 SUBACK code in protocol-neutral terms, with the MQTT 5 reason name of a refusal.
fn sub_code(code: SubscribeReasonCode) -> SubCode {
    let refused = |code, name| SubCode::Refused { code, name };
    match code {
        SubscribeReasonCode::Success(V5QoS::AtMostOnce) => SubCode::Granted(QoS::AtMostOnce),
        SubscribeReasonCode::Success(V5QoS::AtLeastOnce) => SubCode::Granted(QoS::AtLeastOnce),
        SubscribeReasonCode::Success(V5QoS::ExactlyOnce) => SubCode::Granted(QoS::ExactlyOnce),
        SubscribeReasonCode::Failure | SubscribeReasonCode::Unspecified => {
            refused(0x80, "UnspecifiedError")
        }
        SubscribeReasonCode::ImplementationSpecific => refused(0x83, "ImplementationSpecificError"),
        SubscribeReasonCode::NotAuthorized => refused(0x87, "NotAuthorized"),
        SubscribeReasonCode::TopicFilterInvalid => refused(0x8F, "TopicFilterInvalid"),
        SubscribeReasonCode::PkidInUse => refused(0x91, "PacketIdentifierInUse"),
        SubscribeReasonCode::QuotaExceeded => refused(0x97, "QuotaExceeded"),
        SubscribeReasonCode::SharedSubscriptionsNotSupported => {
            refused(0x9E, "SharedSubscriptionsNotSupported")
        }
        SubscribeReasonCode::SubscriptionIdNotSupported => {
            refused(0xA1, "SubscriptionIdentifiersNotSupported")
        }
        SubscribeReasonCode::WildcardSubscriptionsNotSupported => {
            refused(0xA2, "WildcardSubscriptionsNotSupported")
        }
    }
}

/// A PUBACK request rumqttc's `try_ack` builds from a publish (it reads qos and pkid only).
fn as_publish(token: &AckToken) -> Publish {
    let qos = match token.qos {
        QoS::AtMostOnce => V5QoS::AtMostOnce,
        QoS::AtLeastOnce => V5QoS::AtLeastOnce,
        QoS::ExactlyOnce => V5QoS::ExactlyOnce,
    };
    let mut p = Publish::new("", qos, Vec::<u8>::new(), None);
    p.pkid = token.pkid;
    p
}

impl MqttLink for V5Link {
    async fn poll(&mut self) -> Result<LinkEvent, String> {
        Ok(
            match self.eventloop.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(ack)) => LinkEvent::ConnAck {
                    session_present: ack.session_present,
                    detail: Some(self.connack_detail(&ack)),
                    session_expiry_secs: Some(self.session_expiry(&ack)),
                },
                Event::Outgoing(Outgoing::Subscribe(pkid)) => LinkEvent::SubscribeSent(pkid),
                Event::Incoming(Packet::SubAck(s)) => {
                    let reason = s.properties.and_then(|p| p.reason_string);
                    let codes: Vec<SubCode> = s.return_codes.into_iter().map(sub_code).collect();
                    if let Some(reason) = reason {
                        if codes.iter().any(|c| matches!(c, SubCode::Refused { .. })) {
                            tracing::warn!(
                                pkid = s.pkid,
                                reason,
                                "the broker's SUBACK reason string"
                            );
                        }
                    }
                    LinkEvent::SubAck {
                        pkid: s.pkid,
                        codes,
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    LinkEvent::Publish(inbound(p, &mut self.reply))
                }
                Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Disconnected,
                _ => LinkEvent::Other,
            },
        )
    }

    fn take_buffered(&mut self) -> Vec<Inbound> {
        std::mem::take(&mut self.eventloop.state.events)
            .into_iter()
            .filter_map(|ev| match ev {
                Event::Incoming(Packet::Publish(p)) => Some(inbound(p, &mut self.reply)),
                _ => None,
            })
            .collect()
    }

    fn forget_queued_subscribes(&mut self) {
        // PubAcks too: rumqttc already drops those on `clean()`, and one kept here would be
        // written on the next connection of a resumed session (I2).
        self.eventloop
            .pending
            .retain(|r| !matches!(r, Request::Subscribe(_) | Request::PubAck(_)));
    }

    fn try_subscribe(&self, filters: Vec<String>) -> Result<(), String> {
        let filters = filters.into_iter().map(|t| {
            let mut f = Filter::new(t, V5QoS::AtLeastOnce);
            f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
            f
        });
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
        let client = &self.client;
        queue_acks(epoch, backlog, counters, |t| {
            client.try_ack(&as_publish(t)).is_ok()
        });
    }

    fn try_disconnect(&self) {
        let _ = self.client.try_disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn publish_with(response_topic: Option<&str>, correlation: Vec<u8>) -> Publish {
        let props = PublishProperties {
            message_expiry_interval: Some(60),
            response_topic: response_topic.map(str::to_owned),
            correlation_data: Some(correlation.into()),
            ..PublishProperties::default()
        };
        Publish::new("plant/n/alerts/p1", V5QoS::AtLeastOnce, "{}", Some(props))
    }

    fn policy(keep: bool) -> ReplyPolicy {
        ReplyPolicy::new(keep, Arc::new(Counters::default()))
    }

    #[test]
    fn a_response_topic_and_correlation_are_kept_while_receipts_may_go_there() {
        let got = inbound(
            publish_with(Some("hmi/answers/1"), vec![7; 16]),
            &mut policy(true),
        );
        let props = got.props.expect("kept");
        assert_eq!(props.response_topic.as_deref(), Some("hmi/answers/1"));
        assert_eq!(props.correlation, Some(vec![7; 16]));
        assert_eq!(props.expiry_secs, Some(60));
    }

    #[test]
    fn without_receipts_or_without_a_response_topic_neither_is_kept() {
        for (keep, topic) in [(false, Some("hmi/answers/1")), (true, None)] {
            let got = inbound(publish_with(topic, vec![7; 16]), &mut policy(keep));
            let props = got.props.expect("the expiry is kept");
            assert_eq!(
                (props.response_topic, props.correlation),
                (None, None),
                "{keep} {topic:?}"
            );
            assert_eq!(props.expiry_secs, Some(60));
        }
    }

    #[test]
    fn an_oversize_response_topic_or_correlation_is_not_kept_and_counted() {
        let mut reply = policy(true);
        for (topic, corr) in [
            ("t/".repeat(REPLY_MAX), vec![1]),
            ("hmi/a".to_owned(), vec![1; REPLY_MAX + 1]),
        ] {
            let got = inbound(publish_with(Some(&topic), corr), &mut reply);
            let props = got.props.expect("the other properties are kept");
            assert_eq!((props.response_topic, props.correlation), (None, None));
            assert_eq!(props.expiry_secs, Some(60));
        }
        assert_eq!(
            reply
                .counters
                .receipts_reply_refused
                .load(Ordering::Relaxed),
            2
        );
    }
}
