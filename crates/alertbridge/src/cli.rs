//! Command line: `run`, `check`, `status`, `dead-letters`, `replay`, `demo`.
//!
//! Exit codes ([`exit_code`] chooses them from the error's type):
//! - 0: ok.
//! - 1: runtime failure: the log failed, a stage task died, the store is locked and the agent's
//!   endpoint cannot be reached, the demo lost an alert. The systemd unit restarts the agent.
//! - 2: usage or configuration error: a bad or missing option, an invalid config file, a
//!   problem `check` found, an unreadable CA or password file at start, no store at `store.dir`
//!   for a read-only command. The unit sets `RestartPreventExitStatus=2`: restarting cannot fix
//!   a bad configuration, so the unit stops with the error in the journal.
//!
//! Every error is printed once, as one line: each cause in the chain said once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat};
use crate::operator;

/// The exit codes, as `--help` shows them.
const EXIT_CODES_HELP: &str = "Exit codes:
  0  ok
  1  runtime failure (the systemd unit restarts the agent)
  2  usage or configuration error (the unit does not restart: fix the config first)";

/// alertbridge: durable MQTT alerts → Genesys Cloud workflows.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What `dead-letters` does; without one it lists.
#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// List dead letters with their reasons (the default).
    List,
    /// Show one dead letter in full, payload included.
    Show {
        /// Dead-letter id (from `list`).
        id: u64,
    },
    /// Move dead letters back to pending for another delivery (fresh attempt count).
    Replay {
        /// Dead-letter ids to replay (repeatable).
        #[arg(long = "id")]
        ids: Vec<u64>,
        /// Replay every dead letter that still has its record.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters from the store for good. Without `--yes` it only says how many would go.
    Purge {
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
    /// Validate a config file, its secrets, the store directory and the CA file; exit 0 when
    /// usable, 2 when not.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Also fetch a token and verify the target (the workflow exists, is published and is a
        /// workflow; the events URL answers). Launches nothing.
        #[arg(long)]
        online: bool,
    },
    /// Pending count, dead letters, oldest pending age, live counters (from the running agent's
    /// endpoint, or from the store when it is stopped).
    Status {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List, show, replay or purge dead letters: through the running agent's admin endpoint
    /// (loopback `admin.listen`), or on the store directly when the agent is stopped.
    DeadLetters {
        /// Config file (before or after the action).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print JSON (one object per line for `list`).
        #[arg(long, global = true)]
        json: bool,
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<DeadLettersAction>,
    },
    /// Same as `dead-letters replay`.
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
    #[cfg(feature = "demo")]
    Demo {
        /// Alerts in the mass-failure burst.
        #[arg(long, default_value_t = 5000)]
        burst: usize,
        /// Keep the demo's log directory here instead of a temporary one.
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

/// A usage or configuration problem the CLI itself finds: exit 2.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A command that needs `--config` was given none.
    #[error("{0} needs --config <file>")]
    MissingConfig(&'static str),
    /// `--before` is neither unix ms nor an age.
    #[error("--before {0:?}: give unix milliseconds or an age like 7d, 12h, 30m")]
    Before(String),
    /// `replay` without `--id` or `--all`.
    #[error("name dead letters with --id N (repeatable) or use --all")]
    NoReplayTarget,
    /// A read-only command found no store where the config points (a mistyped path, or an
    /// agent that never ran): nothing was created there.
    #[error(
        "no alertbridge store in {dir} (store.dir of {config}); nothing was created there: \
         check the path, or start the agent once"
    )]
    NoStore {
        /// `store.dir`.
        dir: PathBuf,
        /// The config file.
        config: PathBuf,
    },
}

/// Parse arguments and run; the returned code is the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code for an error, from its type (see the module doc): 2 when restarting cannot fix
/// it (usage, configuration, a file the configuration names), 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>() || cause.is::<ConfigError>() {
            return 2;
        }
        if let Some(r) = cause.downcast_ref::<crate::RunError>() {
            return if r.is_config() { 2 } else { 1 };
        }
        if let Some(i) = cause.downcast_ref::<crate::ingest::IngestError>() {
            return if i.is_config() { 2 } else { 1 };
        }
    }
    1
}

/// One line for an error and its causes, each said once: some error types put their source's
/// text in their own message too, so printing the whole chain (`{:#}`) would say the same
/// cause twice.
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

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("alertbridge")
        .build()
        .context("starting the tokio runtime")
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    // Colour only for a person at a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi && format == LogFormat::Text)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Journald => builder
            .event_format(PriorityPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        LogFormat::Auto | LogFormat::Text => builder.try_init(),
    };
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM=<device>:<inode>` of the stream
/// it connected to stdout/stderr. Compared with stderr itself (`systemd.exec(5)` advises so),
/// because a child started from a shell in a unit inherits the variable with another stderr.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => journal_stream_is(&var.to_string_lossy(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` (`<device>:<inode>`, decimal) names the stream with this device and inode.
fn journal_stream_is(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// The `sd-daemon(3)` priority prefix of a level, as journald reads it from a service's
/// stdout/stderr: error 3, warning 4, info 6, debug and trace 7 (the syslog levels, so
/// `journalctl -p warning` is errors and warnings).
pub(crate) fn priority_prefix(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "<3>",
        tracing::Level::WARN => "<4>",
        tracing::Level::INFO => "<6>",
        tracing::Level::DEBUG | tracing::Level::TRACE => "<7>",
    }
}

/// `log.format = "journald"`: the inner format's line with the level's priority prefix on each
/// line (a message with a line break would otherwise log its second line at the default
/// priority, info).
struct PriorityPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for PriorityPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let prefix = priority_prefix(event.metadata().level());
        for part in line.lines() {
            writeln!(writer, "{prefix}{part}")?;
        }
        Ok(())
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = load_config(&config)?;
            init_logging(&cfg.log_level, cfg.log_format);
            for w in cfg.warnings() {
                tracing::warn!("{w}");
            }
            let rt = runtime()?;
            if let Err(e) = rt.block_on(crate::run(cfg, shutdown_signal())) {
                // One line on stderr (the journal under systemd) that also says what happens next.
                let what = if e.is_config() {
                    "alertbridge stopped: configuration error (exit 2; restarting cannot fix it)"
                } else {
                    "alertbridge stopped: runtime failure (exit 1; systemd restarts it)"
                };
                return Err(anyhow::Error::new(e).context(what));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, online } => check(&config, online),
        Command::Status { config, json } => {
            let cfg = load_config(&config)?;
            let status = runtime()?.block_on(operator::fetch_status(&cfg, &config))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                operator::print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters {
            config,
            json,
            action,
        } => {
            let config = config.ok_or(UsageError::MissingConfig("dead-letters"))?;
            let cfg = load_config(&config)?;
            let action = match action.unwrap_or(DeadLettersAction::List) {
                DeadLettersAction::Purge { before, kind, yes } => {
                    let before_ms = match before {
                        None => None,
                        Some(b) => Some(
                            parse_before(&b, crate::clock::now_ms())
                                .ok_or(UsageError::Before(b))?,
                        ),
                    };
                    operator::Action::Purge(crate::letters::PurgeRequest {
                        selection: crate::letters::Selection { before_ms, kind },
                        dry_run: !yes,
                    })
                }
                DeadLettersAction::Replay { ids, all } => replay_action(ids, all)?,
                DeadLettersAction::Show { id } => operator::Action::Show(id),
                DeadLettersAction::List => operator::Action::List,
            };
            runtime()?.block_on(operator::dead_letters(&cfg, &config, action, json))
        }
        Command::Replay { config, ids, all } => {
            let cfg = load_config(&config)?;
            let action = replay_action(ids, all)?;
            runtime()?.block_on(operator::dead_letters(&cfg, &config, action, false))
        }
        #[cfg(feature = "demo")]
        Command::Demo { burst, store } => {
            init_logging("error,rumqttd=off,alertbridge::events=off", LogFormat::Text);
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

fn replay_action(ids: Vec<u64>, all: bool) -> Result<operator::Action, UsageError> {
    if ids.is_empty() && !all {
        return Err(UsageError::NoReplayTarget);
    }
    Ok(operator::Action::Replay(crate::letters::ReplayRequest {
        ids,
        all,
    }))
}

/// `check`: the config loads (every key validated), then [`crate::check::offline`], then with
/// `--online` [`crate::check::online`]. Problems are printed one per line; any → exit 2.
fn check(path: &Path, online: bool) -> anyhow::Result<ExitCode> {
    let cfg = load_config(path)?;
    let mut problems = crate::check::offline(&cfg);
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    // MQTT 3.1.1 has no way to learn it, so say it every time.
    eprintln!(
        "note: the broker's message_size_limit is unknown to alertbridge: set it on the broker \
         (e.g. 1048576 in mosquitto.conf) so absurd publishes are refused there; alertbridge \
         reads any publish up to the MQTT maximum to dead-letter it, which costs that much memory"
    );
    if online && problems.is_empty() {
        match runtime()?.block_on(crate::check::online(&cfg)) {
            Ok(what) => println!("online: {what}"),
            Err(problem) => problems.push(format!("online: {problem}")),
        }
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    if !problems.is_empty() {
        return Ok(ExitCode::from(2));
    }
    // URLs go through `display_url`: validation refuses credentials in them, and this line
    // could not show any even if one slipped through (the events URL is never shown).
    println!(
        "{}: ok (broker {}, topics {:?}, store {}, api {})",
        path.display(),
        crate::config::display_url(&format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port)),
        cfg.mqtt.topics,
        cfg.store.dir().display(),
        crate::config::display_url(&cfg.genesys.api_url)
    );
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod journald_tests {
    use std::sync::{Arc, Mutex};

    use super::{journal_stream_is, PriorityPrefix};

    /// A writer the subscriber writes into, read back by the test.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_carry_the_syslog_priority_of_their_level() {
        let buf = Buffer::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .event_format(PriorityPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(seq = 7, "log poisoned");
            tracing::warn!(alert_id = "a-1", "dead-lettered at ingest");
            tracing::info!("delivered");
            tracing::debug!("window refilled");
            tracing::trace!("tick");
            tracing::warn!("first line\nsecond line");
        });
        let text = String::from_utf8(buf.0.lock().expect("not poisoned").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        let expected = [
            ("<3>", "log poisoned"),
            ("<4>", "dead-lettered at ingest"),
            ("<6>", "delivered"),
            ("<7>", "window refilled"),
            ("<7>", "tick"),
            ("<4>", "first line"),
            ("<4>", "second line"),
        ];
        assert_eq!(lines.len(), expected.len(), "{text}");
        for (line, (prefix, message)) in lines.iter().zip(expected) {
            assert!(line.starts_with(prefix), "{line:?} lacks {prefix}");
            assert!(line.contains(message), "{line:?} lacks {message:?}");
            // the journal stamps the time itself; no colour codes in the journal
            assert!(!line[3..].starts_with(char::is_numeric), "{line:?}");
            assert!(!line.contains('\u{1b}'), "{line:?}");
        }
        assert!(lines[0].contains("seq=7"), "fields kept: {}", lines[0]);
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 12346));
        assert!(!journal_stream_is("9:12345", 8, 12345));
        assert!(!journal_stream_is("", 8, 12345));
        assert!(!journal_stream_is("8-12345", 8, 12345));
    }
}

#[cfg(test)]
mod exit_code_tests {
    use super::{exit_code, UsageError};
    use crate::ingest::IngestError;
    use crate::RunError;

    #[test]
    fn the_exit_code_follows_the_error_type_through_context() {
        let cases: Vec<(anyhow::Error, u8)> = vec![
            (UsageError::NoReplayTarget.into(), 2),
            (
                crate::config::Config::parse("[mqtt]\nurll = 1\n", std::path::Path::new("x"))
                    .expect_err("unknown key")
                    .into(),
                2,
            ),
            (RunError::Ingest(IngestError::NoSystemRoots).into(), 2),
            (
                RunError::FinalFlush(alertbridge_wal::WalError::Poisoned).into(),
                1,
            ),
            (
                RunError::Drain(crate::drain::DrainError::Wal(
                    alertbridge_wal::WalError::Poisoned,
                ))
                .into(),
                1,
            ),
            (anyhow::anyhow!("anything else"), 1),
        ];
        for (e, code) in cases {
            let e = e.context("alertbridge stopped");
            assert_eq!(exit_code(&e), code, "{e:#}");
        }
    }
}
