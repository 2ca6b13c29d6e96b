//! alertbridge: a durable store-and-forward edge agent from MQTT device alerts to Genesys Cloud
//! CX workflows.
//!
//! # Layout: the path of one alert
//!
//! 1. [`ingest`]: the broker sends a QoS 1 PUBLISH. The connection task stamps it with the
//!    connection epoch and hands it to the batcher, which asks the payload mapper
//!    (`alertbridge-payload`) for the alert's identity and lane, and appends it with every other
//!    publish waiting at that moment in **one** group commit (`alertbridge-wal`:
//!    one write to the active segment, fdatasync). Only then are the PUBACKs written (I1), and only for
//!    publishes of the current connection (I2). A payload the mapping rejects is persisted
//!    straight into dead letters with the reason.
//! 2. Ingest wakes [`drain`], whose cursors page each lane of the log into a bounded window;
//!    its [`schedule::Queue`] orders critical alerts first
//!    without starving the rest. The [`limiter`] paces requests (token bucket, AIMD on 429,
//!    client-wide `Retry-After`) and the [`breaker`] holds them during an outage.
//! 3. A delivery task maps the payload to the request body and calls Genesys
//!    (`alertbridge-genesys`), which classifies the answer into a `Disposition`.
//! 4. The drain applies it: 2xx → `Wal::remove` with a receipt; retryable → attempts and next
//!    attempt time persisted, back in the queue; permanent → dead letter with status and API
//!    message; configuration fault → delivery paused loudly, alert kept (I3).
//! 5. Every step emits a typed event ([`events`]) that logs, counts and records its Prometheus
//!    metric together; `status`, the admin endpoint (`/metrics`, [`metrics`]) and the demo read
//!    the same counters.
//!
//! Shutdown ([`run`]): ingest stops taking publishes, commits its open batch and queues those
//! acks → drain stops picking, in-flight deliveries get `shutdown_timeout` → final durable flush.
//! Under systemd, [`notify`] says `STOPPING=1` when shutdown begins.
//!
//! The operator's side: [`cli`] parses commands and turns an error's type into the exit code
//! (0 ok, 1 runtime failure, 2 usage or configuration error); [`check`] validates a config
//! offline and, with `--online`, against Genesys; [`operator`] runs `status` and `dead-letters`
//! through the running agent's [`admin`] endpoint or on the stopped store, with one
//! implementation of the dead-letter operations in [`letters`].

pub mod admin;
pub mod breaker;
pub mod check;
pub mod cli;
mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod drain;
pub mod events;
pub mod export;
pub mod ingest;
pub mod letters;
pub mod limiter;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod receipts;
pub mod schedule;
mod session;

use std::future::Future;
use std::sync::Arc;

use alertbridge_genesys::GenesysClient;
use alertbridge_payload::Mapper;
use alertbridge_wal::Wal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use events::Counters;

/// Why the agent stopped with an error. [`RunError::is_config`] tells the binary which exit code
/// to use: 2 when restarting cannot fix it (the configuration or a file it names), 1 otherwise
/// (systemd restarts the agent).
///
/// Each message names only its own step; the cause is its `source()`, so printing the chain
/// says every cause once.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The log could not be opened: locked by another process, unreadable, or an unsupported
    /// store format. Runtime (exit 1) except an unsupported format, which only another release
    /// can read (exit 2).
    #[error("opening the write-ahead log in {dir}")]
    Open {
        /// Store directory.
        dir: std::path::PathBuf,
        /// Cause.
        #[source]
        source: alertbridge_wal::WalError,
    },
    /// The payload mapping could not be built. Configuration (exit 2); `check` reports it first.
    #[error("the payload mapping")]
    Mapping(#[source] alertbridge_payload::MappingConfigError),
    /// The HTTP client could not be built. A bad setting is configuration (exit 2); anything
    /// else (no TLS provider, no trust roots) is runtime (exit 1).
    #[error("building the Genesys client")]
    Client(#[source] alertbridge_genesys::ClientError),
    /// Ingest failed: the log is poisoned (runtime), or the broker options are unusable
    /// (unreadable CA or password file: configuration).
    #[error("ingest")]
    Ingest(#[from] ingest::IngestError),
    /// Drain failed (log error). Runtime (exit 1).
    #[error("drain")]
    Drain(#[from] drain::DrainError),
    /// The last durable flush at shutdown failed: removals and attempt counts of the last
    /// moments may be lost (those alerts are delivered again after the restart), and the log is
    /// poisoned. Runtime (exit 1).
    #[error("the final flush of the write-ahead log")]
    FinalFlush(#[source] alertbridge_wal::WalError),
    /// A stage task panicked or was cancelled, or the blocking pool refused a log call. Runtime
    /// (exit 1): what the task did is unknown, the restart reads the log as it is.
    #[error("the {stage} task failed")]
    Task {
        /// Which stage: `open`, `ingest`, `drain` or `final flush`.
        stage: &'static str,
        /// The join error (panic or cancellation).
        #[source]
        source: tokio::task::JoinError,
    },
    /// Stopping took longer than `delivery.shutdown_timeout_secs` plus a margin (a stage stuck
    /// in I/O, e.g. on a full or vanished disk): the process exits non-zero anyway, and the
    /// broker keeps every alert that was not acked.
    #[error("shutdown did not finish within {0:?}; exiting anyway (unacked alerts stay with the broker)")]
    ShutdownTimeout(std::time::Duration),
}

impl RunError {
    /// True when restarting cannot fix the cause: the configuration, or a file it names, must
    /// change first. The binary exits 2 then (the systemd unit does not restart on 2).
    pub fn is_config(&self) -> bool {
        match self {
            RunError::Mapping(_) => true,
            RunError::Client(e) => {
                matches!(e, alertbridge_genesys::ClientError::InvalidConfig { .. })
            }
            RunError::Ingest(e) => e.is_config(),
            RunError::Open { source, .. } => matches!(
                source,
                alertbridge_wal::WalError::UnsupportedStoreFormat { .. }
            ),
            RunError::Drain(_)
            | RunError::FinalFlush(_)
            | RunError::Task { .. }
            | RunError::ShutdownTimeout(_) => false,
        }
    }
}

/// Install rustls' `ring` provider once per process (reqwest is built without a provider, so
/// this must happen before the first client is built; a second call is harmless).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Open the log described by the config.
pub fn open_wal(config: &Config) -> Result<Wal, RunError> {
    let wal = Wal::open(config.store.wal.clone()).map_err(|source| RunError::Open {
        dir: config.store.dir().to_path_buf(),
        source,
    })?;
    wal.set_dead_letter_sink(Box::new(export::JsonlExport::new(
        config.store.dead_letters_export_dir.clone(),
        config.store.dead_letters_export_files,
    )));
    Ok(wal)
}

/// Build the Genesys client described by the config.
pub fn genesys_client(config: &Config) -> Result<GenesysClient, RunError> {
    install_crypto_provider();
    GenesysClient::new(config.genesys.clone()).map_err(RunError::Client)
}

/// SIGHUP: forget the cached token, so the next request fetches a new one with the secret read
/// afresh from its file (rotation without restart; the file is also re-read at every token
/// fetch and once more when the token endpoint answers `invalid_client`).
async fn reload_on_sighup(
    client: GenesysClient,
    reprobe: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup.recv() => {
                    client.drop_token();
                    // a paused drain or open breaker probes now instead of after its cool-down
                    reprobe.notify_one();
                    tracing::info!("SIGHUP: token dropped; the client secret is read again at the next token fetch");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (client, reprobe);
        cancel.cancelled().await;
    }
}

/// Run the agent until `shutdown` resolves (SIGTERM/SIGINT in the binary, a oneshot in tests).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    run_with(config, Arc::new(Counters::default()), shutdown).await
}

/// [`run`] with caller-owned counters (the demo shows them live).
pub async fn run_with(
    config: Config,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let wal = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || open_wal(&c))
            .await
            .map_err(|source| RunError::Task {
                stage: "open",
                source,
            })??
    };
    let mapper = Arc::new(Mapper::new(&config.mapping).map_err(RunError::Mapping)?);
    let client = genesys_client(&config)?;
    let client_for_reload = client.clone();
    metrics::attach(&counters, &config, &client);
    tracing::info!(
        store = %config.store.dir().display(),
        broker = %config::display_url(&format!("{}:{}", config.mqtt.host, config.mqtt.port)),
        api = %config::display_url(&config.genesys.api_url),
        "alertbridge starting"
    );

    let root = CancellationToken::new();
    let ingest_cancel = root.child_token();
    let drain_cancel = CancellationToken::new();
    let (feed_tx, feed_rx) = mpsc::unbounded_channel();

    let liveness = admin::Liveness::for_mqtt(config.mqtt.keep_alive, config.mqtt.reconnect_max);
    let admin = match config.admin_listen {
        Some(addr) => {
            admin::spawn(
                addr,
                wal.clone(),
                counters.clone(),
                liveness,
                feed_tx.clone(),
                root.child_token(),
            )
            .await
        }
        None => None,
    };

    // systemd (Type=notify): READY once subscribed, STATUS, WATCHDOG while the loops turn.
    let notifier = notify::spawn(wal.clone(), counters.clone(), liveness, root.child_token());

    let drain = drain::Drain::new(
        config.delivery.clone(),
        wal.clone(),
        client,
        mapper.clone(),
        counters.clone(),
    );
    let reload = tokio::spawn(reload_on_sighup(
        client_for_reload,
        drain.reprobe_handle(),
        root.child_token(),
    ));
    let mut ingest = tokio::spawn(ingest::run(
        config.mqtt.clone(),
        config.store.clone(),
        wal.clone(),
        mapper,
        counters.clone(),
        feed_tx,
        ingest_cancel.clone(),
    ));
    let mut drain = tokio::spawn(drain.run(feed_rx, drain_cancel.clone()));
    // Receipts to MQTT (`[receipts]`): a courtesy beside delivery, never a reason to stop.
    let receipts_cancel = root.child_token();
    let mut receipts = config.receipts.clone().map(|r| {
        tokio::spawn(receipts::run(
            r,
            config.mqtt.clone(),
            wal.clone(),
            counters.clone(),
            receipts_cancel.clone(),
        ))
    });

    // Wait for the signal or for a stage to fail.
    let mut ingest_result = None;
    let mut drain_result = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        r = &mut ingest => ingest_result = Some(r),
        r = &mut drain => drain_result = Some(r),
    }
    notifier.stopping();
    // Order: ingest first (commit open batch, queue its acks), then drain, then a final flush.
    // The whole of it has a deadline: a stage stuck in I/O (a full or vanished disk) must not
    // keep the process alive, "stopping", forever; systemd restarts a non-zero exit.
    let deadline = config.delivery.shutdown_timeout + std::time::Duration::from_secs(5);
    let teardown = async {
        ingest_cancel.cancel();
        let ingest_result = match ingest_result {
            Some(r) => r,
            None => ingest.await,
        };
        drain_cancel.cancel();
        let drain_result = match drain_result {
            Some(r) => r,
            None => drain.await,
        };
        // Receipts marked done so far go into the final flush; the rest wait in the log.
        receipts_cancel.cancel();
        if let Some(h) = receipts.as_mut() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), h).await;
        }
        let flushed = {
            let w = wal.clone();
            tokio::task::spawn_blocking(move || w.close()).await
        };
        (ingest_result, drain_result, flushed)
    };
    let Ok((ingest_result, drain_result, flushed)) = tokio::time::timeout(deadline, teardown).await
    else {
        tracing::error!(
            deadline_secs = deadline.as_secs(),
            "shutdown timed out; exiting non-zero"
        );
        root.cancel();
        return Err(RunError::ShutdownTimeout(deadline));
    };
    root.cancel();
    let _ = reload.await;
    notifier.finish().await;
    if let Some(h) = admin {
        // a slow status client must not hold the exit
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), h).await;
    }
    ingest_result.map_err(|source| RunError::Task {
        stage: "ingest",
        source,
    })??;
    drain_result.map_err(|source| RunError::Task {
        stage: "drain",
        source,
    })??;
    flushed
        .map_err(|source| RunError::Task {
            stage: "final flush",
            source,
        })?
        .map_err(RunError::FinalFlush)?;
    tracing::info!("alertbridge stopped cleanly");
    Ok(())
}
