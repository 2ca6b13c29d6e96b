//! The batcher: group commit. Publishes from the connection task become log entries, appended
//! in one flush + fsync on a blocking thread; only then are their acks handed back (I1). The
//! disk budget and a full filesystem hold a batch unacked (the broker keeps it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_payload::Mapper;
use alertbridge_wal::{Appended, DeadKind, Durable, Entry, Wal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{entry_for, AckToken, DrainFeed, IngestError, Stamped, UnackedBatch};
use crate::clock::now_ms;
use crate::config::StoreConfig;
use crate::events::{self, BatchPersisted, Counters};

/// The batcher: group commit.
#[allow(clippy::too_many_arguments)]
pub(super) async fn batcher(
    store: StoreConfig,
    wal: Wal,
    mapper: Arc<Mapper>,
    counters: Arc<Counters>,
    feed: DrainFeed,
    mut pub_rx: mpsc::Receiver<Stamped>,
    ack_tx: mpsc::UnboundedSender<Vec<AckToken>>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = pub_rx.recv() => match p { Some(p) => p, None => break },
        };
        let mut publishes = vec![first];
        while publishes.len() < store.batch_max {
            match pub_rx.try_recv() {
                Ok(p) => publishes.push(p),
                Err(_) => break,
            }
        }
        // Disk budget: hold this batch unacked until space frees. The broker's in-flight window
        // then stops sending us more; nothing is deleted to make room.
        if !wait_for_budget(&wal, &store, &counters, &cancel).await? {
            break; // shutting down: the held batch stays with the broker
        }
        let now = now_ms();
        // The DUP flag goes with each entry: only a redelivery can be a duplicate. RETAIN = 1 on
        // a publish *to* us means the broker replays a stored retained message because we
        // subscribed (MQTT 3.1.1 §3.3.1.3; each process start subscribes again, see S1): it is
        // checked against the window like a redelivery.
        let entries: Vec<(Entry, bool)> = publishes
            .iter()
            .map(|(_, p, _)| {
                let entry = entry_for(&mapper, &p.topic, &p.payload, p.props.as_deref(), now);
                (entry, p.dup || p.retain)
            })
            .collect();
        // Why each rejected payload goes to dead letters, for the warning once it is durable.
        let rejected: Vec<Option<(String, String, DeadKind)>> = entries
            .iter()
            .map(|(e, _)| match e {
                Entry::DeadLetter(r, why) => {
                    Some((r.alert_id.clone(), why.message.clone(), why.kind))
                }
                Entry::Pending(_) => None,
            })
            .collect();
        let unacked = UnackedBatch { publishes };
        let started = Instant::now();
        let Some(durable) = append_when_space(&wal, entries, &counters, &cancel).await? else {
            break; // shutting down: the held batch stays with the broker
        };
        if fault_exit_before_ack() {
            // Test fault injection (see `fault_exit_before_ack`): die like a kill -9 between
            // the fsync and the PUBACK.
            std::process::abort();
        }
        let (mut persisted, mut dup, mut dead) = (0, 0, 0);
        for ((a, (_, p, _)), why) in durable.get().iter().zip(&unacked.publishes).zip(&rejected) {
            match a {
                Appended::Pending(key) => {
                    persisted += 1;
                    let _ = feed.send(*key);
                }
                Appended::DeadLettered(id) => {
                    dead += 1;
                    if let Some((alert_id, reason, kind)) = why {
                        events::PayloadDeadLettered {
                            dead_letter_id: *id,
                            alert_id,
                            topic: &p.topic,
                            kind: *kind,
                            reason,
                        }
                        .emit(&counters);
                    }
                }
                Appended::Duplicate { alert_id } => {
                    dup += 1;
                    events::DuplicateDropped {
                        alert_id,
                        topic: &p.topic,
                        retained: p.retain && !p.dup,
                    }
                    .emit(&counters);
                }
            }
        }
        BatchPersisted {
            persisted,
            duplicates: dup,
            dead_lettered: dead,
            took: started.elapsed(),
        }
        .emit(&counters);
        let acks = unacked.release(&durable);
        if ack_tx.send(acks).is_err() {
            break;
        }
    }
    Ok(())
}

/// Appends a batch, holding it (unacked: the broker keeps it) while the filesystem is full.
///
/// `min_free_bytes` normally holds ingest back before the disk fills; this covers space taken by
/// something else at the last moment. A full disk is backpressure, not a failure: the WAL wrote
/// nothing of the batch and stays usable, the drain keeps delivering what is pending. `None`
/// when cancelled while waiting.
async fn append_when_space(
    wal: &Wal,
    entries: Vec<(Entry, bool)>,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<Option<Durable<Vec<Appended>>>, IngestError> {
    let mut held_since: Option<Instant> = None;
    loop {
        let w = wal.clone();
        let batch = entries.clone();
        let result = tokio::task::spawn_blocking(move || w.append_publishes(batch))
            .await
            .map_err(|source| IngestError::Task {
                task: "log append",
                source,
            })?;
        match result {
            Ok(durable) => {
                if held_since.is_some() {
                    events::backpressure_changed(counters, None, wal.data_bytes());
                }
                return Ok(Some(durable));
            }
            Err(alertbridge_wal::WalError::NoSpace { op }) => {
                if held_since.is_none() {
                    held_since = Some(Instant::now());
                    events::backpressure_changed(
                        counters,
                        Some(&format!(
                            "the store's filesystem is full ({op}); holding the batch unacked"
                        )),
                        wal.data_bytes(),
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Fault injection for the end-to-end tests, never set in production: with
/// `ALERTBRIDGE_FAULT_ABORT_AFTER_FSYNC=1` in its environment the agent aborts right after its
/// first durable batch and before any PUBACK, which is the one crash window a kill -9 from
/// outside cannot hit on purpose (the broker then redelivers with DUP=1).
fn fault_exit_before_ack() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        std::env::var_os("ALERTBRIDGE_FAULT_ABORT_AFTER_FSYNC").is_some_and(|v| v == "1")
    })
}

/// Why ingest holds back, if it must. Pure, so the rule is a table test.
pub(crate) fn over_budget(
    size: u64,
    max_bytes: u64,
    free: Option<u64>,
    min_free: u64,
) -> Option<String> {
    if size >= max_bytes {
        return Some(format!(
            "log data {size} B reached store.max_bytes {max_bytes} B"
        ));
    }
    match free {
        Some(f) if f < min_free => Some(format!(
            "filesystem free space {f} B below store.min_free_bytes {min_free} B"
        )),
        _ => None,
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `dir` (None if unknown).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Returns Ok(true) when under budget (now or after waiting), Ok(false) when cancelled first.
/// While over, nothing is appended and nothing acked: the broker keeps the alerts (its
/// in-flight window stops the flow), and nothing already in the log is deleted to make room.
async fn wait_for_budget(
    wal: &Wal,
    store: &StoreConfig,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<bool, IngestError> {
    loop {
        // The segments holding pending alerts (they shrink as the backlog drains); dead letters
        // have their own budget and never hold up ingest.
        let size = wal.data_bytes();
        let reason = over_budget(
            size,
            store.max_bytes,
            free_bytes(store.dir()),
            store.min_free_bytes,
        );
        events::backpressure_changed(counters, reason.as_deref(), size);
        if reason.is_none() {
            return Ok(true);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
