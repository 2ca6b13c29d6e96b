//! Ingest: MQTT QoS 1 publishes → group commit into the log → PUBACK.
//!
//! Two tasks:
//! - the **connection task** (`connection.rs`) owns rumqttc's event loop and polls it without
//!   ever blocking on I/O of ours; it stamps each publish with the connection *epoch* and is the
//!   only place that writes PUBACKs, so the epoch check and the write happen with no reconnect
//!   in between;
//! - the **batcher** (`batcher.rs`) collects publishes, turns them into log entries
//!   (`entry.rs`) and appends them in one group commit on a blocking thread (flush + fsync),
//!   then hands the acks back.
//!
//! Both are written once for both MQTT versions: what differs (rumqttc's options, its packet
//! types, how a PUBACK reaches the wire) sits behind [`link::MqttLink`], implemented for
//! MQTT 3.1.1 in `v4.rs` and for MQTT 5 (`mqtt.protocol = "5"`) in `v5.rs`.
//!
//! Invariants kept here (docs/design.md table):
//! - **I1** a PUBACK is queued only for a publish whose batch returned [`Durable`] from
//!   `Wal::append_publishes`, i.e. after the batch was written *and* fdatasync'ed. Encoded in
//!   [`UnackedBatch::release`], which needs that proof; dropping an `UnackedBatch` acks nothing,
//!   so any early return leaves the alerts with the broker, which redelivers them.
//! - **I2** a PUBACK is queued only for a publish received on the current connection epoch.
//!   rumqttc drops PubAcks still in its request channel when a connection fails, but one queued
//!   *after* that is sent on the next connection, where the same packet id can name another
//!   message if the broker started a fresh session. The epoch bumps on every ConnAck and every
//!   connection error; stale acks are skipped and the broker redelivers (the duplicate window
//!   recognises the alert). The filter is [`link::queue_acks`] and the v4 `write_acks`.
//! - **S1** the connection task subscribes until a SUBACK seen in this process granted QoS 1 for
//!   every configured filter on the broker's current session; "session present" alone is not
//!   trusted. The rules are pure, in `session.rs`; refusals show in `status`.
//! - **S2** a CONNACK without a session, although a session of ours held a subscription on that
//!   broker (a SUBACK of this process, or the store's record of an earlier one, `marker.rs`),
//!   is a warning (`MQTT SESSION LOST`), counted and shown in `status`; a first start is not.

use std::sync::Arc;
use std::time::Instant;

use alertbridge_payload::Mapper;
use alertbridge_wal::{Appended, Durable, Key, Wal};
use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, MqttProtocol, StoreConfig};
use crate::events::Counters;

mod batcher;
mod connection;
mod entry;
mod link;
mod marker;
mod v4;
mod v5;

use entry::entry_for;
pub(crate) use entry::{publisher_expiry_reason, publisher_ttl};
/// The 3.1.1 client options from the validated config; the receipts publisher starts from them
/// (same broker, user and TLS) and speaks 3.1.1 whatever `mqtt.protocol` says.
pub(crate) use v4::mqtt_options;
pub use v4::MAX_INCOMING_PACKET;
pub(crate) use v5::mqtt5_options;

use link::Inbound;

/// Capacity of the publish channel between the connection task and the batcher. Full means the
/// connection task waits, i.e. stops reading the socket: back-pressure to the broker.
const PUBLISH_CHANNEL: usize = 4096;

/// Errors that stop ingest. Each variant says whether restarting can help: the binary exits 1
/// (runtime, systemd restarts it) or 2 (configuration, restarting cannot fix it), see
/// [`IngestError::is_config`].
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The log failed to append or to make a batch durable; it is poisoned (I5). Runtime: the
    /// agent exits 1 and the restart reads the log as it is.
    #[error("write-ahead log failed")]
    Wal(#[from] alertbridge_wal::WalError),
    /// An ingest task (the batcher, or a blocking append) panicked or was cancelled: what it did
    /// is unknown, so ingest stops. Runtime: exit 1, the broker keeps every unacked alert.
    #[error("the ingest {task} task failed")]
    Task {
        /// Which task: `batcher` or `log append`.
        task: &'static str,
        /// The join error (panic or cancellation).
        #[source]
        source: tokio::task::JoinError,
    },
    /// The MQTT password could not be read (`mqtt.password_file` or its variable).
    /// Configuration: fix the file or variable; exit 2.
    #[error("mqtt password")]
    Password(#[source] alertbridge_genesys::TokenError),
    /// `mqtt.ca_file` could not be read. Configuration: fix the path or permissions; exit 2.
    #[error("reading mqtt.ca_file {path}")]
    CaFile {
        /// The configured path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `mqtts://` without `mqtt.ca_file`, and the system has no CA certificates.
    /// Configuration: install ca-certificates or set `mqtt.ca_file`; exit 2.
    #[error(
        "mqtts:// but no system CA certificates found: install ca-certificates or set mqtt.ca_file"
    )]
    NoSystemRoots,
}

impl IngestError {
    /// True when the cause is in the configuration or the files it names, so restarting
    /// cannot fix it (the binary exits 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            IngestError::Password(_) | IngestError::CaFile { .. } | IngestError::NoSystemRoots
        )
    }
}

/// A publish, the connection epoch it arrived on and when it arrived (the ack latency).
pub(crate) type Stamped = (u64, Inbound, Instant);

/// What a PUBACK needs of a durable publish: its connection epoch, packet id and QoS. The
/// payload and topic are dropped as soon as the batch is durable: under a flood rumqttc writes
/// far fewer acks per poll than it reads publishes, and holding whole publishes until their ack
/// went out made memory grow with the backlog (about 0.4 KB per alert in the backlog bench).
/// The receive time (16 bytes) stays for the ack latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckToken {
    epoch: u64,
    pkid: u16,
    qos: QoS,
    received: Instant,
}

impl AckToken {
    fn of((epoch, p, received): &Stamped) -> AckToken {
        AckToken {
            epoch: *epoch,
            pkid: p.pkid,
            qos: p.qos,
            received: *received,
        }
    }
}

/// Publishes of one batch whose PUBACKs wait for the batch's durability proof (I1).
///
/// Dropping it acks nothing: the broker keeps ownership and redelivers.
#[must_use = "dropping an UnackedBatch leaves its alerts with the broker"]
pub(crate) struct UnackedBatch {
    publishes: Vec<Stamped>,
}

impl UnackedBatch {
    /// The publishes may be acked now: `proof` says the batch that holds them is flushed and
    /// fsynced. (The proof's constructor is private to the WAL crate.)
    pub(crate) fn release(self, proof: &Durable<Vec<Appended>>) -> Vec<AckToken> {
        debug_assert_eq!(proof.get().len(), self.publishes.len());
        self.publishes.iter().map(AckToken::of).collect()
    }
}

/// The link of the configured protocol. Built once per run and moved into the connection task,
/// so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Link {
    V4(v4::V4Link),
    V5(v5::V5Link),
}

/// Where durable pending keys go (the drain). Unbounded: each item is a few bytes and the number
/// in flight is bounded by the broker's in-flight window times the batch size.
pub(crate) type DrainFeed = mpsc::UnboundedSender<Key>;

/// Run ingest until `cancel`: connection task + batcher. Returns when both stopped; the acks of
/// the last durable batch are queued and flushed to the broker before the disconnect.
pub(crate) async fn run(
    mqtt: MqttConfig,
    store: StoreConfig,
    wal: Wal,
    mapper: Arc<Mapper>,
    counters: Arc<Counters>,
    feed: DrainFeed,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    // Build the link before spawning anything: a bad password file or CA is a config error.
    let link = match mqtt.protocol {
        MqttProtocol::V311 => Link::V4(v4::V4Link::new(&mqtt, store.batch_max)?),
        MqttProtocol::V5 => Link::V5(v5::V5Link::new(&mqtt, store.batch_max, counters.clone())?),
    };
    // S2: the store's record of a session of this client id on this broker.
    let marker = marker::SessionMarker::new(
        store.dir(),
        &mqtt.client_id,
        &crate::config::display_url(&format!("{}:{}", mqtt.host, mqtt.port)),
    );
    let (pub_tx, pub_rx) = mpsc::channel::<Stamped>(PUBLISH_CHANNEL);
    // Unbounded: acks ≤ publishes received, which the broker's in-flight window bounds.
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<AckToken>>();
    let batcher_done = CancellationToken::new();

    let batcher = {
        let counters = counters.clone();
        let cancel = cancel.clone();
        let done = batcher_done.clone();
        tokio::spawn(async move {
            let r =
                batcher::batcher(store, wal, mapper, counters, feed, pub_rx, ack_tx, cancel).await;
            done.cancel();
            r
        })
    };
    // One connection task, monomorphised per protocol.
    let conn_result = match link {
        Link::V4(link) => {
            connection::connection(mqtt, link, marker, pub_tx, ack_rx, counters, batcher_done).await
        }
        Link::V5(link) => {
            connection::connection(mqtt, link, marker, pub_tx, ack_rx, counters, batcher_done).await
        }
    };
    let batch_result = batcher.await.map_err(|source| IngestError::Task {
        task: "batcher",
        source,
    })?;
    batch_result?;
    conn_result
}

#[cfg(test)]
mod tests;
