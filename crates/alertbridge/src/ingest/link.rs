//! The seam between the protocol-neutral connection task and one MQTT protocol version.
//!
//! The connection task (epochs, subscriptions, acks after fsync) exists once, in
//! `connection.rs`; what differs between MQTT 3.1.1 (`v4.rs`) and MQTT 5 (`v5.rs`) is how
//! rumqttc is set up and polled, what its packets look like and how a PUBACK is written. Each
//! protocol implements [`MqttLink`]; the connection task is generic over it (monomorphised, no
//! `dyn`), and what it sees of a packet is [`LinkEvent`].

use std::collections::VecDeque;

use std::sync::Arc;

use alertbridge_wal::MqttProps;
use bytes::Bytes;
use rumqttc::{QoS, Transport};
use secrecy::ExposeSecret;

use super::{AckToken, IngestError};
use crate::config::MqttConfig;
use crate::events::Counters;
use crate::session::SubCode;

/// A publish as the batcher sees it, whatever the protocol.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// Topic name (UTF-8; an MQTT 5 topic that is not arrives as a connection error).
    pub(crate) topic: String,
    /// The payload, as sent.
    pub(crate) payload: Bytes,
    /// The broker's packet id (0 for QoS 0).
    pub(crate) pkid: u16,
    /// Delivery QoS: a PUBACK is owed for QoS 1 only.
    pub(crate) qos: QoS,
    /// DUP: the broker may have sent this publish before.
    pub(crate) dup: bool,
    /// RETAIN: a stored retained message replayed because we subscribed.
    pub(crate) retain: bool,
    /// MQTT 5 properties kept with the alert (message expiry, user properties); `None` in
    /// MQTT 3.1.1 and when the publisher set none of them.
    pub(crate) props: Option<Box<MqttProps>>,
}

/// What one poll of the link yielded.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The broker accepted a connection.
    ConnAck {
        /// The broker resumed a session under our client id.
        session_present: bool,
        /// What else the CONNACK said worth logging (MQTT 5: the session expiry the broker
        /// granted), appended to the "connected" line.
        detail: Option<String>,
        /// MQTT 5: the session expiry in force from this CONNACK on (the broker's, else the
        /// one we asked for); `None` in MQTT 3.1.1. Named when the session is later lost (S2).
        session_expiry_secs: Option<u32>,
    },
    /// rumqttc wrote a SUBSCRIBE with this packet id.
    SubscribeSent(u16),
    /// A SUBACK.
    SubAck {
        /// Packet id of the SUBSCRIBE it answers.
        pkid: u16,
        /// One code per filter, in order.
        codes: Vec<SubCode>,
    },
    /// A publish from the broker.
    Publish(Inbound),
    /// Our DISCONNECT was written (shutdown).
    Disconnected,
    /// Anything else (pings, acks of ours, …).
    Other,
}

/// One MQTT protocol version under the connection task.
pub(crate) trait MqttLink {
    /// The next event; `Err` is a lost (or never established) connection, as text for the log
    /// and status. rumqttc reconnects on the next call.
    async fn poll(&mut self) -> Result<LinkEvent, String>;

    /// After an error: publishes rumqttc decoded from the dead connection but has not handed
    /// out yet. They are stored but never acked (I2).
    fn take_buffered(&mut self) -> Vec<Inbound>;

    /// After an error: drop SUBSCRIBEs still queued in rumqttc, so whether to subscribe is
    /// decided afresh at the next CONNACK (S1).
    fn forget_queued_subscribes(&mut self);

    /// Queue one SUBSCRIBE at QoS 1 for `filters`; `Err` when rumqttc's request channel is full
    /// (asked again shortly).
    fn try_subscribe(&self, filters: Vec<String>) -> Result<(), String>;

    /// Write the PUBACKs of `backlog` that belong to connection `epoch` (I2: older ones are
    /// dropped, the broker redelivers those); what cannot be written now stays in `backlog`.
    async fn write_acks(
        &mut self,
        epoch: u64,
        backlog: &mut VecDeque<AckToken>,
        counters: &Counters,
    );

    /// Queue a DISCONNECT (shutdown).
    fn try_disconnect(&self);
}

/// Acks of `epoch` through rumqttc's request channel (`try_ack` = queue one PUBACK; false when
/// the channel is full), stale ones dropped: the part of [`MqttLink::write_acks`] both protocols
/// share. A PUBACK queued here and still in the channel when the connection fails is dropped by
/// rumqttc (`clean()`); one queued after the failure carries an old epoch and is never queued.
pub(crate) fn queue_acks(
    epoch: u64,
    backlog: &mut VecDeque<AckToken>,
    counters: &Counters,
    mut try_ack: impl FnMut(&AckToken) -> bool,
) {
    let (mut acked, mut stale) = (0, 0);
    let mut received = Vec::new();
    while let Some(token) = backlog.front() {
        if token.epoch != epoch {
            stale += 1;
            backlog.pop_front();
            continue;
        }
        if !try_ack(token) {
            // channel full: try again after the next poll
            break;
        }
        acked += 1;
        received.push(token.received);
        backlog.pop_front();
    }
    if acked > 0 || stale > 0 {
        crate::events::Acked {
            acked,
            stale,
            received: &received,
        }
        .emit(counters);
    }
}

/// User name and password for the broker, when configured (the password is read now, at
/// connect, and never kept in the config).
pub(crate) fn credentials(cfg: &MqttConfig) -> Result<Option<(String, String)>, IngestError> {
    match (&cfg.username, &cfg.password) {
        (Some(user), Some(src)) => {
            let pw = src.load().map_err(IngestError::Password)?;
            Ok(Some((user.clone(), pw.expose_secret().to_string())))
        }
        _ => Ok(None),
    }
}

/// The TLS transport for `mqtts://` (the configured CA, else the system's), `None` for plain
/// TCP. rumqttc's v4 and v5 options take the same `Transport`.
pub(crate) fn transport(cfg: &MqttConfig) -> Result<Option<Transport>, IngestError> {
    if !cfg.tls {
        return Ok(None);
    }
    let transport = match &cfg.ca_file {
        Some(path) => {
            let ca = std::fs::read(path).map_err(|source| IngestError::CaFile {
                path: path.clone(),
                source,
            })?;
            Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            })
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(IngestError::NoSystemRoots);
            }
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls)))
        }
    };
    Ok(Some(transport))
}
