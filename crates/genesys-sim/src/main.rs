//! `genesys-sim`: runs the Genesys Cloud API simulator until Ctrl-C (or SIGTERM).
//!
//! Prints the base URL (use it as both login and API URL) as the first line on stdout; logs go to
//! stderr (`RUST_LOG`, default `info`). Exit codes: 0 stopped by a signal, 1 runtime failure (e.g.
//! the address is in use), 2 usage or configuration error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use genesys_sim::{Faults, Sim, SimConfig};

/// Genesys Cloud API simulator: OAuth client credentials, flow executions, events, webhooks, with
/// fault injection. Admin endpoints under /sim/ (stats, accepted, requests, faults, outage, revoke,
/// secret, token-ttl, known-flow-ids) change faults at run time.
#[derive(Debug, Parser)]
#[command(name = "genesys-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// OAuth client id to accept.
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    /// File holding the client secret to accept (trailing newline ignored). Without it the secret
    /// comes from GENESYS_SIM_CLIENT_SECRET, else it is `sim-secret`.
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// Token lifetime in seconds (fractions allowed).
    #[arg(long, default_value_t = 86_400.0)]
    token_ttl_secs: f64,
    /// Status answered for bad client credentials (401 or 400).
    #[arg(long, default_value_t = 401)]
    token_error_status: u16,
    /// Largest accepted API body in bytes.
    #[arg(long, default_value_t = 10_240)]
    max_body_bytes: usize,
    /// A flow id that exists (repeat for more). Without any, every flow id exists.
    #[arg(long = "known-flow-id")]
    known_flow_ids: Vec<String>,
    /// Token in the webhook invocation path. Default: GENESYS_SIM_WEBHOOK_TOKEN, else
    /// `sim-webhook-token`.
    #[arg(long)]
    webhook_token_file: Option<PathBuf>,
    /// Probability (0–1) that an API call answers 503.
    #[arg(long, default_value_t = 0.0)]
    error_rate_503: f64,
    /// Probability (0–1) that an API call answers 429.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_429: f64,
    /// Retry-After seconds on injected 429 and 503 answers.
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Delay added before every API and token answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between accepting an API call (it counts as an execution) and sending its 2xx, in
    /// milliseconds: a slow API whose answers arrive after the client's timeout.
    #[arg(long, default_value_t = 0)]
    answer_latency_ms: u64,
    /// Every API call answers this status (e.g. 403, 500).
    #[arg(long)]
    force_status: Option<u16>,
    /// The token endpoint answers this status (e.g. 503).
    #[arg(long)]
    token_failure: Option<u16>,
    /// Admit at most this many API calls per second; more → 429 with Retry-After: 1.
    #[arg(long)]
    max_requests_per_sec: Option<u32>,
    /// Start with an outage (every call 503) lasting this many seconds.
    #[arg(long)]
    outage_secs: Option<u64>,
}

fn read_secret_file(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} from {}", path.display()))?;
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        bail!("{what} file {} is empty", path.display());
    }
    Ok(text)
}

fn secret(file: Option<&PathBuf>, env: &str, default: &str, what: &str) -> anyhow::Result<String> {
    if let Some(path) = file {
        return read_secret_file(path, what);
    }
    match std::env::var(env) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Ok(default.to_owned()),
    }
}

fn probability(value: f64, flag: &str) -> anyhow::Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        bail!("--{flag} must be between 0 and 1, got {value}");
    }
    Ok(value)
}

fn status(value: Option<u16>, flag: &str) -> anyhow::Result<Option<u16>> {
    match value {
        Some(s) if !(400..=599).contains(&s) => bail!("--{flag} must be 400..=599, got {s}"),
        other => Ok(other),
    }
}

/// Turns the arguments into a configuration; every error here is a usage error (exit 2).
fn config(args: &Args) -> anyhow::Result<SimConfig> {
    let token_ttl = Duration::try_from_secs_f64(args.token_ttl_secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!(
                "--token-ttl-secs must be a positive number, got {}",
                args.token_ttl_secs
            )
        })?;
    if !matches!(args.token_error_status, 400 | 401) {
        bail!(
            "--token-error-status must be 400 or 401, got {}",
            args.token_error_status
        );
    }
    let mut faults = Faults {
        error_rate_503: probability(args.error_rate_503, "error-rate-503")?,
        outage_until: None,
        rate_limit_429: probability(args.rate_limit_429, "rate-limit-429")?,
        retry_after_secs: args.retry_after_secs,
        latency_ms: args.latency_ms,
        answer_latency_ms: args.answer_latency_ms,
        force_status: status(args.force_status, "force-status")?,
        token_failure: status(args.token_failure, "token-failure")?,
        max_requests_per_sec: args.max_requests_per_sec,
    };
    if let Some(secs) = args.outage_secs {
        faults = faults.with_outage_for(Duration::from_secs(secs));
    }
    Ok(SimConfig {
        client_id: args.client_id.clone(),
        client_secret: secret(
            args.client_secret_file.as_ref(),
            "GENESYS_SIM_CLIENT_SECRET",
            "sim-secret",
            "client secret",
        )?,
        token_ttl,
        max_body_bytes: args.max_body_bytes,
        known_flow_ids: (!args.known_flow_ids.is_empty()).then(|| args.known_flow_ids.clone()),
        webhook_token: secret(
            args.webhook_token_file.as_ref(),
            "GENESYS_SIM_WEBHOOK_TOKEN",
            "sim-webhook-token",
            "webhook token",
        )?,
        faults,
        bind: args.listen,
        token_error_status: args.token_error_status,
    })
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cfg: SimConfig) -> anyhow::Result<()> {
    let bind = cfg.bind;
    let sim = Sim::start(cfg)
        .await
        .with_context(|| format!("listening on {bind}"))?;
    println!("{}", sim.base_url());
    stop_signal().await;
    tracing::info!("stopping");
    sim.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = match config(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("genesys-sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("genesys-sim: starting the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genesys-sim: {e:#}");
            ExitCode::from(1)
        }
    }
}
