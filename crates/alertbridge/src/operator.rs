//! The operator's commands on a store: `status` and `dead-letters list|show|replay|purge`.
//!
//! While the agent runs it holds the store's lock, so these go through its admin endpoint
//! (`admin.listen` from the same config, loopback); when it is stopped they open the store
//! directly. They never create a store: a config whose `store.dir` holds none (a mistyped path)
//! is a usage error naming the path (exit 2), and nothing is written there.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::admin::Status;
use crate::cli::UsageError;
use crate::config::Config;
use crate::letters::{Letters, PurgeRequest, ReplayRequest};

/// How long the CLI waits for the agent's endpoint.
const ENDPOINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What `dead-letters` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// List them.
    List,
    /// Show one.
    Show(u64),
    /// Replay some or all.
    Replay(ReplayRequest),
    /// Purge (or count, for a dry run).
    Purge(PurgeRequest),
}

/// Whether `dir` holds an alertbridge store (current format, or the old sled one that opening
/// migrates). Opening a directory without one would create a store there.
pub fn store_exists(dir: &Path) -> bool {
    dir.join("FORMAT").is_file() || (dir.join("db").is_file() && dir.join("conf").is_file())
}

fn no_store(cfg: &Config, config_path: &Path) -> anyhow::Error {
    UsageError::NoStore {
        dir: cfg.store.dir().to_path_buf(),
        config: config_path.to_path_buf(),
    }
    .into()
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a TLS provider; building a client without one panics.
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(ENDPOINT_TIMEOUT)
        .build()
        .context("building the HTTP client for the admin endpoint")
}

/// Whether something answers HTTP on the agent's admin endpoint (the agent runs).
async fn agent_answers(http: &reqwest::Client, addr: std::net::SocketAddr) -> bool {
    http.get(format!("http://{addr}/health"))
        .send()
        .await
        .is_ok()
}

/// Where the dead-letter commands go: the running agent's endpoint, or the store itself.
async fn letters(cfg: &Config, config_path: &Path) -> anyhow::Result<Letters> {
    if !store_exists(cfg.store.dir()) {
        return Err(no_store(cfg, config_path));
    }
    let http = http_client()?;
    if let Some(addr) = cfg.admin_listen {
        if agent_answers(&http, addr).await {
            return Ok(Letters::Agent { addr, http });
        }
    }
    let c = cfg.clone();
    let wal = tokio::task::spawn_blocking(move || crate::open_wal(&c))
        .await
        .context("opening the store")?
        .context(match cfg.admin_listen {
            Some(addr) => format!(
                "the agent's admin endpoint ({addr}) does not answer, so the store was opened \
                 directly; if the agent runs, check its admin.listen"
            ),
            None => "admin.listen is disabled, so the store was opened directly; stop the \
                     agent, or enable admin.listen, to work on dead letters"
                .into(),
        })?;
    Ok(Letters::Store(wal))
}

/// Runs one `dead-letters` action and prints its result.
pub async fn dead_letters(
    cfg: &Config,
    config_path: &Path,
    action: Action,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let letters = letters(cfg, config_path).await?;
    match action {
        Action::List => {
            let all = letters.list().await?;
            for d in &all {
                if json {
                    println!("{}", serde_json::to_string(d)?);
                } else {
                    println!("{}", summary_line(d));
                }
            }
            if !json {
                eprintln!("{} dead letter(s)", all.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Show(id) => match letters.show(id).await? {
            Some(d) => {
                println!("{}", serde_json::to_string_pretty(&d)?);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no dead letter #{id}");
                Ok(ExitCode::from(1))
            }
        },
        Action::Replay(req) => {
            let outcomes = letters.replay(&req).await?;
            let mut failed = 0;
            for o in &outcomes {
                if json {
                    println!("{}", serde_json::to_string(o)?);
                    continue;
                }
                match (o.seq, &o.error) {
                    (Some(seq), _) => println!("dead letter #{} → pending seq {seq}", o.id),
                    (None, error) => eprintln!(
                        "dead letter #{}: {}",
                        o.id,
                        error.as_deref().unwrap_or("not replayed")
                    ),
                }
            }
            failed += outcomes.iter().filter(|o| o.seq.is_none()).count();
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Action::Purge(req) => {
            let outcome = letters.purge(&req).await?;
            if json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else if outcome.deleted {
                println!("{} dead letter(s) deleted", outcome.count);
            } else {
                println!(
                    "{} dead letter(s) would be deleted; add --yes to delete them",
                    outcome.count
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line per dead letter for `list`.
fn summary_line(d: &Value) -> String {
    let text = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
    let num = |k: &str| {
        d.get(k)
            .and_then(Value::as_u64)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let alert = d
        .get("alert_id")
        .and_then(Value::as_str)
        .unwrap_or("<corrupt>");
    let api = d
        .get("api_message")
        .and_then(Value::as_str)
        .map(|m| format!(" api_message={m}"))
        .unwrap_or_default();
    format!(
        "#{id} {kind} alert={alert} topic={topic} attempts={attempts} status={status} reason={reason}{api}",
        id = num("id"),
        kind = text("kind"),
        topic = text("topic"),
        attempts = d.get("attempts").and_then(Value::as_u64).unwrap_or(0),
        status = num("status"),
        reason = text("reason"),
    )
}

/// `status`: from the running agent's endpoint, else from the store (never created).
pub async fn fetch_status(cfg: &Config, config_path: &Path) -> anyhow::Result<Status> {
    let http = http_client()?;
    if let Some(addr) = cfg.admin_listen {
        if let Ok(resp) = http.get(format!("http://{addr}/status")).send().await {
            return resp
                .error_for_status()
                .context("the status endpoint answered an error")?
                .json::<Status>()
                .await
                .context("the status endpoint answered something unexpected");
        }
    }
    // Not running (or no endpoint): read the log itself, if there is one.
    if !store_exists(cfg.store.dir()) {
        return Err(no_store(cfg, config_path));
    }
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Status> {
        let wal = crate::open_wal(&c)
            .context("the agent seems to run without a reachable status endpoint (admin.listen)")?;
        Ok(crate::admin::status_of(&wal, None)?)
    })
    .await?
}

/// The `broker session:` line of `status` when the broker lost a session of ours since start
/// (S2); `None` when it did not.
fn session_lost_line(c: &crate::events::Snapshot, now_ms: u64) -> Option<String> {
    if c.sessions_lost == 0 {
        return None;
    }
    let when = c
        .session_lost_at_ms
        .map(|at| format!(", last {} s ago", now_ms.saturating_sub(at) / 1000))
        .unwrap_or_default();
    Some(format!(
        "  broker session: LOST {} time(s) since start{when}: alerts published while alertbridge was away may be gone at the broker (journal: MQTT SESSION LOST)",
        c.sessions_lost
    ))
}

/// Prints a status for a person.
pub fn print_status(s: &Status) {
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
        if let Some(line) = session_lost_line(c, crate::clock::now_ms()) {
            println!("{line}");
        }
        if c.receipts_published + c.receipts_dropped + s.receipts_pending > 0
            || c.receipts_connected
        {
            println!(
                "  receipts:       published {} dropped {} waiting {} publisher {}",
                c.receipts_published,
                c.receipts_dropped,
                s.receipts_pending,
                if c.receipts_connected {
                    "connected"
                } else {
                    "disconnected"
                }
            );
            if c.receipts_reply_refused > 0 {
                println!(
                    "  receipts:       {} MQTT 5 response topics refused (see the log)",
                    c.receipts_reply_refused
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Snapshot;

    #[test]
    fn status_shows_a_lost_session_only_when_there_was_one() {
        assert_eq!(session_lost_line(&Snapshot::default(), 10_000), None);
        let lost = Snapshot {
            sessions_lost: 1,
            session_lost_at_ms: Some(4_000),
            ..Snapshot::default()
        };
        let line = session_lost_line(&lost, 10_000).expect("a line");
        assert!(
            line.contains("LOST 1 time(s) since start, last 6 s ago")
                && line.contains("may be gone at the broker"),
            "{line}"
        );
    }
}
