//! Command line: `run`, `check`, `status`, `dead-letters`, `replay`, `demo`.
//!
//! Exit codes: 0 ok; 1 runtime failure (or `check` found a problem); 2 usage or configuration
//! error of `run` (the systemd unit sets `RestartPreventExitStatus=2`: restarting cannot fix a
//! bad config).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::admin::Status;
use crate::config::Config;

/// alertbridge: durable MQTT alerts → Genesys Cloud workflows.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What `dead-letters` does besides listing.
#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// Delete dead letters from the store for good. Without `--yes` it only says how many would go.
    Purge {
        /// Config file (or give it before `purge`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only those that became dead letters before this time: unix ms, or an age such as
        /// `7d`, `12h`, `30m`.
        #[arg(long)]
        before: Option<String>,
        /// Only this kind: Rejected, Malformed, Expired, Corrupt, Oversize, Exhausted, Unconfirmed.
        #[arg(long)]
        kind: Option<String>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// `--before`: unix ms, or an age (`7d`, `12h`, `30m`, `45s`) counted back from `now_ms`.
pub(crate) fn parse_before(text: &str, now_ms: u64) -> Option<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(now_ms.saturating_sub(secs * 1000))
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground until SIGTERM/SIGINT.
    Run {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (and that its secrets are readable); exit 0 when usable.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Pending count, dead letters, oldest pending age, live counters.
    Status {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List dead letters with their reasons, or purge them (agent must be stopped: the log is
    /// locked while it runs).
    DeadLetters {
        /// Config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// `purge`: delete dead letters for good.
        #[command(subcommand)]
        action: Option<DeadLettersAction>,
    },
    /// Move dead letters back to pending for another delivery (agent must be stopped).
    Replay {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Dead-letter ids to replay.
        #[arg(long = "id")]
        ids: Vec<u64>,
        /// Replay every dead letter that still has its record.
        #[arg(long)]
        all: bool,
    },
    /// Self-contained demo: embedded broker + Genesys simulator + a plant burst.
    Demo {
        /// Alerts in the mass-failure burst.
        #[arg(long, default_value_t = 5000)]
        burst: usize,
        /// Keep the demo's log directory here instead of a temporary one.
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

/// Parse arguments and run; the returned code is the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::from(1)
        }
    }
}

/// One line for an error and its causes, each said once: our error types already put their
/// source's text in their own message, so printing the whole chain (`{:#}`) said the same
/// cause two or three times.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("alertbridge")
        .build()
        .context("starting the tokio runtime")
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person at a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(&cfg.log_level, cfg.log_json);
            for w in cfg.warnings() {
                tracing::warn!("{w}");
            }
            let rt = runtime()?;
            rt.block_on(crate::run(cfg, shutdown_signal()))
                .context("alertbridge stopped with an error")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => Ok(check(&config)),
        Command::Status { config, json } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let status = runtime()?.block_on(fetch_status(&cfg))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters {
            config,
            json,
            action:
                Some(DeadLettersAction::Purge {
                    config: purge_config,
                    before,
                    kind,
                    yes,
                }),
        } => {
            let Some(config) = purge_config.or(config) else {
                eprintln!("error: dead-letters purge needs --config <file>");
                return Ok(ExitCode::from(2));
            };
            let _ = json;
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let before = match before
                .as_deref()
                .map(|b| (b, parse_before(b, crate::clock::now_ms())))
            {
                None => None,
                Some((_, Some(t))) => Some(t),
                Some((b, None)) => {
                    eprintln!(
                        "error: --before {b:?}: give unix milliseconds or an age like 7d, 12h, 30m"
                    );
                    return Ok(ExitCode::from(2));
                }
            };
            let wal =
                crate::open_wal(&cfg).context("the agent must be stopped to purge dead letters")?;
            let selected = |d: &alertbridge_wal::DeadLetter| {
                before.is_none_or(|t| d.dead_at_ms < t)
                    && kind
                        .as_deref()
                        .is_none_or(|k| format!("{:?}", d.reason.kind).eq_ignore_ascii_case(k))
            };
            if !yes {
                let n = wal
                    .dead_letters()
                    .filter_map(|d| d.ok())
                    .filter(|d| selected(d))
                    .count();
                println!("{n} dead letter(s) would be deleted; add --yes to delete them");
                return Ok(ExitCode::SUCCESS);
            }
            let n = wal
                .purge_dead_letters(selected)
                .context("purging dead letters")?;
            println!("{n} dead letter(s) deleted");
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters {
            config,
            json,
            action: None,
        } => {
            let Some(config) = config else {
                eprintln!("error: dead-letters needs --config <file>");
                return Ok(ExitCode::from(2));
            };
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let wal =
                crate::open_wal(&cfg).context("the agent must be stopped to read dead letters")?;
            let mut n = 0;
            for d in wal.dead_letters() {
                let d = d?;
                n += 1;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&crate::export::dead_letter_json(&d))?
                    );
                } else {
                    let (alert, topic, attempts) = d
                        .record
                        .as_ref()
                        .map(|r| (r.alert_id.as_str(), r.topic.as_str(), r.attempts))
                        .unwrap_or(("<corrupt>", "", 0));
                    println!(
                        "#{id} {kind:?} alert={alert} topic={topic} attempts={attempts} status={status} reason={reason}{api}",
                        id = d.id,
                        kind = d.reason.kind,
                        status = d.reason.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        reason = d.reason.message,
                        api = d.reason.api_message.as_deref().map(|m| format!(" api_message={m}")).unwrap_or_default(),
                    );
                }
            }
            if !json {
                eprintln!("{n} dead letter(s)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { config, ids, all } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if ids.is_empty() && !all {
                eprintln!("error: name dead letters with --id N (repeatable) or use --all");
                return Ok(ExitCode::from(2));
            }
            let wal = crate::open_wal(&cfg)
                .context("the agent must be stopped to replay dead letters")?;
            let targets: Vec<u64> = if all {
                wal.dead_letters()
                    .filter_map(|d| d.ok())
                    .filter(|d| d.record.is_some())
                    .map(|d| d.id)
                    .collect()
            } else {
                ids
            };
            let mut failed = 0;
            for id in targets {
                match wal.replay(id) {
                    Ok(key) => println!("dead letter #{id} → pending seq {}", key.seq),
                    Err(e) => {
                        failed += 1;
                        eprintln!("dead letter #{id}: {e}");
                    }
                }
            }
            wal.flush().context("flushing the log")?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Demo { burst, store } => {
            init_logging("error,rumqttd=off,alertbridge::events=off", false);
            let rt = runtime()?;
            let report =
                rt.block_on(crate::demo::run(crate::demo::DemoOptions { burst, store }))?;
            Ok(if report.lost == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut ok = true;
    if let Err(e) = cfg.genesys.secret.load() {
        eprintln!("error: genesys client secret: {e}");
        ok = false;
    }
    if let Some(src) = &cfg.mqtt.password {
        if let Err(e) = src.load() {
            eprintln!("error: mqtt password: {e}");
            ok = false;
        }
    }
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    // MQTT 3.1.1 has no way to learn it, so say it every time.
    eprintln!(
        "note: the broker's message_size_limit is unknown to alertbridge: set it on the broker \
         (e.g. 1048576 in mosquitto.conf) so absurd publishes are refused there; alertbridge \
         reads any publish up to the MQTT maximum to dead-letter it, which costs that much memory"
    );
    if ok {
        // URLs go through `display_url`: validation refuses credentials in them, and this line
        // could not show any even if one slipped through (the events URL is never shown).
        println!(
            "{}: ok (broker {}, topics {:?}, store {}, api {})",
            path.display(),
            crate::config::display_url(&format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port)),
            cfg.mqtt.topics,
            cfg.store.dir.display(),
            crate::config::display_url(&cfg.genesys.api_url)
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn fetch_status(cfg: &Config) -> anyhow::Result<Status> {
    // reqwest is built without a TLS provider; building a client without one panics
    crate::install_crypto_provider();
    if let Some(addr) = cfg.admin_listen {
        let url = format!("http://{addr}/status");
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .context("building HTTP client")?;
        if let Ok(resp) = client.get(&url).send().await {
            return resp
                .error_for_status()
                .context("status endpoint answered an error")?
                .json::<Status>()
                .await
                .context("status endpoint answered something unexpected");
        }
    }
    // Not running (or no endpoint): read the log itself.
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Status> {
        let wal = crate::open_wal(&c).context(
            "the agent seems to run without a reachable status endpoint ([admin] listen), and the log is locked",
        )?;
        Ok(crate::admin::status_of(&wal, None)?)
    })
    .await?
}

fn print_status(s: &Status) {
    println!("alertbridge {} ({})", s.version, s.source);
    println!(
        "  pending:        {} ({} critical)",
        s.pending, s.pending_critical
    );
    match s.oldest_pending_age_secs {
        Some(a) => println!("  oldest pending: {a} s"),
        None => println!("  oldest pending: -"),
    }
    println!("  dead letters:   {}", s.dead_letters);
    println!("  receipts kept:  {}", s.delivered_kept);
    println!(
        "  log data:       {} bytes (files on disk {} bytes)",
        s.data_bytes, s.store_bytes
    );
    if let Some(c) = &s.counters {
        println!(
            "  since start:    received {} persisted {} duplicates {} acked {} delivered {} retried {} dead-lettered {}",
            c.received, c.persisted, c.duplicates, c.acked, c.delivered, c.retried, c.dead_lettered
        );
        println!(
            "  state:          broker {} breaker {} delivery {} disk {}",
            if c.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            if c.breaker_open { "OPEN" } else { "closed" },
            if c.paused { "PAUSED" } else { "running" },
            if c.backpressure { "OVER BUDGET" } else { "ok" },
        );
        if let Some(r) = &c.pause_reason {
            println!("  pause reason:   {r}");
        }
        if c.drain_repairs + c.tasks_failed + c.clock_jumps > 0 {
            println!(
                "  anomalies:      drain repairs {} failed delivery tasks {} clock jumps {} (see the log)",
                c.drain_repairs, c.tasks_failed, c.clock_jumps
            );
        }
        if c.subscriptions_wanted > 0 {
            println!(
                "  subscriptions:  {}/{} held at QoS 1{}",
                c.subscriptions_held,
                c.subscriptions_wanted,
                if c.subscribed() {
                    ""
                } else {
                    " (NOT READY: alerts on a filter not held never reach alertbridge)"
                }
            );
        }
        if let Some(e) = &c.subscription_error {
            println!("  subscription error: {e}");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
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

#[cfg(test)]
mod error_line_tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("no space left on device")]
    struct Io;

    #[derive(Debug, thiserror::Error)]
    #[error("writing a receipt failed: {0}")]
    struct Wal(#[source] Io);

    #[derive(Debug, thiserror::Error)]
    #[error("drain: {0}")]
    struct Drain(#[source] Wal);

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Drain(Wal(Io))).context("alertbridge stopped with an error");
        assert_eq!(
            error_line(&e),
            "alertbridge stopped with an error: drain: writing a receipt failed: no space left on device"
        );
    }
}

#[cfg(test)]
mod purge_tests {
    use super::parse_before;

    #[test]
    fn before_is_unix_ms_or_an_age() {
        let now = 1_000_000_000;
        assert_eq!(parse_before("12345", now), Some(12_345));
        assert_eq!(parse_before("30s", now), Some(now - 30_000));
        assert_eq!(parse_before("2h", now), Some(now - 7_200_000));
        assert_eq!(parse_before("7d", now), Some(now - 604_800_000));
        assert_eq!(parse_before("7w", now), None);
        assert_eq!(parse_before("d", now), None);
    }
}
