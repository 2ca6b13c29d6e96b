//! A simulated plant: QoS 1 publishers that remember which publishes the broker acknowledged.
//! Used by the demo and the end-to-end tests to state the guarantee exactly:
//! every alert in [`Plant::acked_ids`] must end delivered or dead-lettered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// Alert ids of publishes handed to the client, in send order, until rumqttc assigns a pkid.
type SendOrder = Arc<Mutex<VecDeque<String>>>;

/// A publishing device fleet on one MQTT connection.
pub struct Plant {
    client: AsyncClient,
    order: SendOrder,
    acked: Arc<Mutex<HashSet<String>>>,
    sent: Arc<AtomicU64>,
    malformed: usize,
}

impl Plant {
    /// Connect to `127.0.0.1:port` with a persistent session (so publishes not yet acked are
    /// resent by rumqttc after a broker restart) and poll in a task until `cancel`.
    pub fn connect(
        port: u16,
        client_id: &str,
        cancel: CancellationToken,
    ) -> (Plant, tokio::task::JoinHandle<()>) {
        Plant::connect_with(port, client_id, false, cancel)
    }

    /// [`Plant::connect`] choosing the session kind. With `clean_session = true` rumqttc never
    /// resends an old publish after a reconnect, so with [`Plant::publish_confirmed`] the
    /// PUBACK bookkeeping stays exact across broker restarts.
    pub fn connect_with(
        port: u16,
        client_id: &str,
        clean_session: bool,
        cancel: CancellationToken,
    ) -> (Plant, tokio::task::JoinHandle<()>) {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_inflight(200)
            .set_clean_session(clean_session)
            // rumqttc's default (10 KiB) would refuse to send a payload that fills the agent's
            // default 64 KiB limit; hostile-input tests publish up to tens of MiB.
            .set_max_packet_size(1 << 20, 64 << 20);
        let (client, mut el) = AsyncClient::new(o, 20_000);
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let order: SendOrder = Arc::default();
        let (order2, acked2) = (order.clone(), acked.clone());
        let handle = tokio::spawn(async move {
            let mut by_pkid = HashMap::new();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(c))) if !c.session_present => {
                            // rumqttc dropped every unacked publish: their pkids mean nothing now
                            by_pkid.clear();
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            // a resend after reconnect reuses its pkid: keep the first mapping
                            if let std::collections::hash_map::Entry::Vacant(e) = by_pkid.entry(pkid) {
                                if let Some(id) = order2.lock().ok().and_then(|mut q| q.pop_front()) {
                                    e.insert(id);
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(a))) => {
                            if let Some(id) = by_pkid.remove(&a.pkid) {
                                if let Ok(mut s) = acked2.lock() { s.insert(id); }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        let plant = Plant {
            client,
            order,
            acked,
            sent: Arc::new(AtomicU64::new(0)),
            malformed: 0,
        };
        (plant, handle)
    }

    async fn send(
        &self,
        topic: String,
        body: Vec<u8>,
        id: String,
    ) -> Result<(), rumqttc::ClientError> {
        if let Ok(mut q) = self.order.lock() {
            q.push_back(id);
        }
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publish one alert and wait (up to `timeout`) until the broker acked it; true if it did.
    ///
    /// With one publish outstanding at a time the PUBACK attribution stays exact even when the
    /// broker restarts: rumqttc silently discards queued publishes when the broker answers with a
    /// fresh session, which would shift the send-order bookkeeping of [`Plant::publish`].
    pub async fn publish_confirmed(
        &self,
        topic: String,
        body: String,
        alert_id: String,
        timeout: Duration,
    ) -> Result<bool, rumqttc::ClientError> {
        if let Ok(mut q) = self.order.lock() {
            // a previous publish that never went out must not take this one's pkid
            q.clear();
        }
        self.send(topic, body.into_bytes(), alert_id.clone())
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self
                .acked
                .lock()
                .map(|a| a.contains(&alert_id))
                .unwrap_or(false)
            {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(false)
    }

    /// Publish one alert (QoS 1) identified by `alert_id`.
    pub async fn publish(
        &self,
        topic: String,
        body: String,
        alert_id: String,
    ) -> Result<(), rumqttc::ClientError> {
        self.send(topic, body.into_bytes(), alert_id).await
    }

    /// Publish a malformed payload; it is tracked as `malformed-<n>`.
    pub async fn publish_malformed(&mut self, body: &[u8]) -> Result<(), rumqttc::ClientError> {
        let id = format!("malformed-{}", self.malformed);
        self.malformed += 1;
        self.send(
            "plant/north/alerts/broken-firmware".into(),
            body.to_vec(),
            id,
        )
        .await
    }

    /// Publishes handed to the client.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Malformed payloads published.
    pub fn malformed(&self) -> usize {
        self.malformed
    }

    /// Number of publishes the broker acknowledged.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Ids of the publishes the broker acknowledged.
    pub fn acked_ids(&self) -> HashSet<String> {
        self.acked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// A realistic device alert: `(topic, JSON body, alert_id)`; one in ten is critical.
pub fn alert(n: usize, rng: &mut fastrand::Rng) -> (String, String, String) {
    const SITES: [&str; 4] = ["north", "south", "east", "west"];
    let site = SITES[n % SITES.len()];
    let device = format!("SN-{site}-{:04}", rng.usize(0..250));
    let level = match rng.u8(0..100) {
        0..=9 => "critical",
        10..=39 => "major",
        _ => "warning",
    };
    let alert_id = format!("alert-{n:07}");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let body = serde_json::json!({
        "alert_id": alert_id,
        "device_id": device,
        "sensor_type": "temperature_probe",
        "alert_level": level,
        "reading_value": 60.0 + rng.f64() * 40.0,
        "threshold_exceeded": true,
        "timestamp_ms": ts,
    });
    (
        format!("plant/{site}/alerts/{device}"),
        body.to_string(),
        alert_id,
    )
}
