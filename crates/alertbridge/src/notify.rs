//! systemd service notifications (`Type=notify`, `sd_notify(3)`): what the service manager is
//! told about the agent, and when.
//!
//! - `READY=1` once, after the log is open and ingest holds every configured subscription at
//!   QoS 1: from then on an alert published to a configured topic is made durable and
//!   acknowledged. Until then, while the main loops are healthy, each turn extends the start
//!   timeout (`EXTEND_TIMEOUT_USEC`), so a broker that is down at boot leaves the unit
//!   "activating" with a `STATUS=` saying why, instead of a start timeout and a restart loop.
//! - `STATUS=` with the state (ready, not ready and why, unhealthy and why, stopping), the
//!   pending count and what was delivered and dead-lettered since start: on every change of
//!   state and at least every [`STATUS_EVERY`]. `systemctl status alertbridge` shows the latest.
//! - `WATCHDOG=1` (when the unit sets `WatchdogSec=`) only while the main loops turn, by the
//!   one liveness judgement `/health` uses ([`crate::admin::health_problems`]): a wedged drain or
//!   MQTT loop stops the pings and systemd kills and restarts the agent (the broker keeps every
//!   unacked alert; the log keeps every acked one).
//! - `STOPPING=1` when shutdown begins.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, tests, the demo) nothing runs. The decisions
//! are pure ([`Notifier::tick`], table-tested); sending is a thin layer over the `sd-notify`
//! crate.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alertbridge_wal::Wal;
use tokio_util::sync::CancellationToken;

use crate::admin::{health_problems, readiness_problems, Liveness};
use crate::clock::now_ms;
use crate::events::Counters;

/// `STATUS=` is sent at least this often even when the state did not change (the counts move).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Longest time between two turns of the notifier: state changes reach `systemctl status`
/// within it. A shorter watchdog interval makes the turns shorter (half of `WatchdogSec=`, as
/// `sd_watchdog_enabled(3)` advises).
const TURN_MAX: Duration = Duration::from_secs(1);

/// One message to the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `READY=1`: start-up finished.
    Ready,
    /// `STATUS=<text>`: one line for `systemctl status`.
    Status(String),
    /// `WATCHDOG=1`: the main loops are alive.
    Watchdog,
    /// `EXTEND_TIMEOUT_USEC=`: still starting (waiting for the broker), and healthy.
    ExtendTimeout(Duration),
    /// `STOPPING=1`: shutdown began.
    Stopping,
}

/// What the notifier sees at one turn: the inputs of its decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Liveness problems (empty = the main loops turn): [`crate::admin::health_problems`].
    pub health: Vec<String>,
    /// Readiness problems (empty = ready): [`crate::admin::readiness_problems`].
    pub readiness: Vec<String>,
    /// The start-up condition of `READY=1`: every configured subscription is held.
    pub subscribed: bool,
    /// Alerts waiting for delivery (`None` when the log could not say).
    pub pending: Option<u64>,
    /// Alerts delivered since start.
    pub delivered: u64,
    /// Alerts dead-lettered since start.
    pub dead_lettered: u64,
}

/// The notifier's memory between turns; [`Notifier::tick`] decides what to send.
#[derive(Debug)]
pub struct Notifier {
    /// Whether the unit has a watchdog (`WATCHDOG_USEC` set for this process).
    watchdog: bool,
    /// How long each start-timeout extension lasts (a few turns, so one late turn is harmless).
    extend_by: Duration,
    ready_sent: bool,
    stopping: bool,
    last_state: Option<String>,
    last_status_at: Option<Instant>,
}

impl Notifier {
    /// A notifier for a unit with (`watchdog`) or without a watchdog, turning every `turn`.
    pub fn new(watchdog: bool, turn: Duration) -> Notifier {
        Notifier {
            watchdog,
            extend_by: (turn * 5).max(Duration::from_secs(5)),
            ready_sent: false,
            stopping: false,
            last_state: None,
            last_status_at: None,
        }
    }

    /// Shutdown began: `STOPPING=1` and a last `STATUS=`. Later turns keep feeding the
    /// watchdog while the loops are healthy, but say nothing more about readiness.
    pub fn stop(&mut self) -> Vec<Message> {
        if self.stopping {
            return Vec::new();
        }
        self.stopping = true;
        self.last_state = Some("stopping".into());
        vec![
            Message::Stopping,
            Message::Status("stopping: finishing in-flight deliveries, flushing the log".into()),
        ]
    }

    /// One turn: the messages due at `now` given what the agent looks like.
    pub fn tick(&mut self, now: Instant, obs: &Observation) -> Vec<Message> {
        let mut out = Vec::new();
        let healthy = obs.health.is_empty();
        if !self.stopping {
            if !self.ready_sent && obs.subscribed {
                self.ready_sent = true;
                out.push(Message::Ready);
            } else if !self.ready_sent && healthy {
                out.push(Message::ExtendTimeout(self.extend_by));
            }
            let state = state_of(obs, self.ready_sent);
            let changed = self.last_state.as_deref() != Some(state.as_str());
            let due = self
                .last_status_at
                .is_none_or(|at| now.saturating_duration_since(at) >= STATUS_EVERY);
            if changed || due {
                out.push(Message::Status(format!(
                    "{state}; {}",
                    counts(obs.pending, obs.delivered, obs.dead_lettered)
                )));
                self.last_state = Some(state);
                self.last_status_at = Some(now);
            }
        }
        if self.watchdog && healthy {
            out.push(Message::Watchdog);
        }
        out
    }
}

/// The state word(s) of `STATUS=`: unhealthy first (systemd is about to act on it), then
/// readiness, then whether start-up finished.
fn state_of(obs: &Observation, ready_sent: bool) -> String {
    if !obs.health.is_empty() {
        format!("unhealthy: {}", obs.health.join("; "))
    } else if !obs.readiness.is_empty() {
        let doing = if ready_sent { "not ready" } else { "starting" };
        format!("{doing}: {}", obs.readiness.join("; "))
    } else {
        "ready".into()
    }
}

fn counts(pending: Option<u64>, delivered: u64, dead_lettered: u64) -> String {
    let pending = pending.map_or_else(|| "?".into(), |p| p.to_string());
    format!("{pending} pending, {delivered} delivered, {dead_lettered} dead-lettered since start")
}

impl Message {
    fn to_state(&self) -> sd_notify::NotifyState<'_> {
        use sd_notify::NotifyState;
        match self {
            Message::Ready => NotifyState::Ready,
            Message::Status(s) => NotifyState::Status(s),
            Message::Watchdog => NotifyState::Watchdog,
            Message::ExtendTimeout(d) => {
                NotifyState::ExtendTimeoutUsec(u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
            }
            Message::Stopping => NotifyState::Stopping,
        }
    }
}

/// Send `messages` in one datagram. A failure is logged when it starts (`failing` remembers it,
/// so a vanished socket does not log every second) and otherwise ignored: the agent's job is
/// delivery, and a service manager that cannot be told anything acts on its own timeouts.
fn send(messages: &[Message], failing: &mut bool) {
    if messages.is_empty() {
        return;
    }
    let states: Vec<_> = messages.iter().map(Message::to_state).collect();
    match sd_notify::notify(&states) {
        Ok(()) => *failing = false,
        Err(e) => {
            if !*failing {
                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
            }
            *failing = true;
        }
    }
}

/// The notifier of one [`crate::run`]: a task when systemd asked for notifications, nothing
/// otherwise. Dropping it leaves the task to end with the cancellation token given to
/// [`spawn`].
pub struct NotifyTask {
    /// Tells the task that shutdown began (`STOPPING=1`).
    stopping: CancellationToken,
    /// The task itself, `None` without `NOTIFY_SOCKET`.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl NotifyTask {
    /// Shutdown began: the task sends `STOPPING=1` at once.
    pub fn stopping(&self) {
        self.stopping.cancel();
    }

    /// Wait for the task to end (after the `cancel` token given to [`spawn`]).
    pub async fn finish(self) {
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Start notifying systemd when `NOTIFY_SOCKET` is set; the task runs until `cancel`. `wal` is
/// the open log (its pending count goes into `STATUS=`), `liveness` the limits `/health` uses.
pub fn spawn(
    wal: Wal,
    counters: Arc<Counters>,
    liveness: Liveness,
    cancel: CancellationToken,
) -> NotifyTask {
    let stopping = CancellationToken::new();
    let task = std::env::var_os("NOTIFY_SOCKET").map(|_| {
        let watchdog = sd_notify::watchdog_enabled();
        let turn = watchdog.map_or(TURN_MAX, |w| {
            (w / 2).clamp(Duration::from_millis(10), TURN_MAX)
        });
        tracing::info!(
            watchdog_secs = watchdog.map(|w| w.as_secs_f64()),
            "notifying systemd (Type=notify)"
        );
        tokio::spawn(run(
            Notifier::new(watchdog.is_some(), turn),
            turn,
            wal,
            counters,
            liveness,
            stopping.clone(),
            cancel,
        ))
    });
    NotifyTask { stopping, task }
}

async fn run(
    mut notifier: Notifier,
    turn: Duration,
    wal: Wal,
    counters: Arc<Counters>,
    liveness: Liveness,
    stopping: CancellationToken,
    cancel: CancellationToken,
) {
    let started_ms = now_ms();
    let mut every = tokio::time::interval(turn);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop_seen = false;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = stopping.cancelled(), if !stop_seen => {
                stop_seen = true;
                send(&notifier.stop(), &mut failing);
                continue;
            }
            _ = every.tick() => {}
        }
        let obs = observe(&wal, &counters, &liveness, started_ms).await;
        send(&notifier.tick(Instant::now(), &obs), &mut failing);
    }
}

/// Read the inputs of one turn. The pending count takes the log's lock, so it is read off the
/// runtime's worker threads.
async fn observe(
    wal: &Wal,
    counters: &Counters,
    liveness: &Liveness,
    started_ms: u64,
) -> Observation {
    let snapshot = counters.snapshot();
    let pending = {
        let w = wal.clone();
        tokio::task::spawn_blocking(move || w.stats().ok().map(|s| s.pending))
            .await
            .ok()
            .flatten()
    };
    Observation {
        health: health_problems(
            now_ms(),
            started_ms,
            counters.drain_tick_ms.load(Ordering::Relaxed),
            counters.mqtt_tick_ms.load(Ordering::Relaxed),
            liveness,
        ),
        readiness: readiness_problems(&snapshot, wal.is_poisoned()),
        subscribed: snapshot.subscribed(),
        pending,
        delivered: snapshot.delivered,
        dead_lettered: snapshot.dead_lettered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_ready() -> Observation {
        Observation {
            subscribed: true,
            pending: Some(3),
            delivered: 10,
            ..Observation::default()
        }
    }

    fn waiting_for_broker() -> Observation {
        Observation {
            readiness: vec!["not connected to the MQTT broker".into()],
            pending: Some(0),
            ..Observation::default()
        }
    }

    fn wedged_drain() -> Observation {
        Observation {
            health: vec!["the drain loop has not turned for 31 s (limit 30 s)".into()],
            ..healthy_ready()
        }
    }

    fn statuses(m: &[Message]) -> Vec<&str> {
        m.iter()
            .filter_map(|m| match m {
                Message::Status(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ready_is_sent_once_when_every_subscription_is_held() {
        let mut n = Notifier::new(true, Duration::from_secs(1));
        let t0 = Instant::now();
        let first = n.tick(t0, &waiting_for_broker());
        assert!(!first.contains(&Message::Ready), "{first:?}");
        assert_eq!(
            statuses(&first),
            ["starting: not connected to the MQTT broker; 0 pending, 0 delivered, 0 dead-lettered since start"]
        );
        let second = n.tick(t0 + Duration::from_secs(1), &healthy_ready());
        assert_eq!(second[0], Message::Ready, "{second:?}");
        assert_eq!(
            statuses(&second),
            ["ready; 3 pending, 10 delivered, 0 dead-lettered since start"]
        );
        let third = n.tick(t0 + Duration::from_secs(2), &healthy_ready());
        assert!(!third.contains(&Message::Ready), "{third:?}");
    }

    #[test]
    fn a_healthy_start_waiting_for_the_broker_extends_the_start_timeout() {
        let mut n = Notifier::new(false, Duration::from_secs(1));
        let out = n.tick(Instant::now(), &waiting_for_broker());
        assert!(
            out.iter()
                .any(|m| matches!(m, Message::ExtendTimeout(d) if *d >= Duration::from_secs(5))),
            "{out:?}"
        );
        // Wedged while starting: no extension, so systemd's start timeout acts.
        let mut n = Notifier::new(false, Duration::from_secs(1));
        let wedged = Observation {
            subscribed: false,
            ..wedged_drain()
        };
        let out = n.tick(Instant::now(), &wedged);
        assert!(
            !out.iter().any(|m| matches!(m, Message::ExtendTimeout(_))),
            "{out:?}"
        );
    }

    #[test]
    fn watchdog_is_fed_only_while_the_main_loops_turn() {
        let mut n = Notifier::new(true, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(n.tick(t0, &healthy_ready()).contains(&Message::Watchdog));
        let wedged = n.tick(t0 + Duration::from_secs(1), &wedged_drain());
        assert!(!wedged.contains(&Message::Watchdog), "{wedged:?}");
        assert_eq!(
            statuses(&wedged),
            ["unhealthy: the drain loop has not turned for 31 s (limit 30 s); 3 pending, 10 delivered, 0 dead-lettered since start"]
        );
        for i in 2..10 {
            let out = n.tick(t0 + Duration::from_secs(i), &wedged_drain());
            assert!(!out.contains(&Message::Watchdog), "turn {i}: {out:?}");
        }
        // The loop turns again: the pings resume.
        assert!(n
            .tick(t0 + Duration::from_secs(10), &healthy_ready())
            .contains(&Message::Watchdog));
    }

    #[test]
    fn without_a_watchdog_no_ping_is_sent() {
        let mut n = Notifier::new(false, Duration::from_secs(1));
        assert!(!n
            .tick(Instant::now(), &healthy_ready())
            .contains(&Message::Watchdog));
    }

    #[test]
    fn status_is_sent_on_a_change_of_state_and_every_few_seconds() {
        let mut n = Notifier::new(true, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(statuses(&n.tick(t0, &healthy_ready())).len(), 1);
        // Same state within STATUS_EVERY: quiet, even though a count moved.
        let moved = Observation {
            delivered: 11,
            ..healthy_ready()
        };
        assert!(statuses(&n.tick(t0 + Duration::from_secs(1), &moved)).is_empty());
        // A change of state is said at once.
        let lost = Observation {
            readiness: vec!["not connected to the MQTT broker".into()],
            ..healthy_ready()
        };
        assert_eq!(
            statuses(&n.tick(t0 + Duration::from_secs(2), &lost)),
            ["not ready: not connected to the MQTT broker; 3 pending, 10 delivered, 0 dead-lettered since start"]
        );
        // Unchanged, but STATUS_EVERY passed: said again with the new counts.
        let later = t0 + Duration::from_secs(2) + STATUS_EVERY;
        assert_eq!(statuses(&n.tick(later, &lost)).len(), 1);
    }

    #[test]
    fn stopping_is_said_once_and_ends_status_updates_but_not_the_watchdog() {
        let mut n = Notifier::new(true, Duration::from_secs(1));
        let t0 = Instant::now();
        let _ = n.tick(t0, &healthy_ready());
        let stop = n.stop();
        assert_eq!(stop[0], Message::Stopping);
        assert!(statuses(&stop)[0].starts_with("stopping"), "{stop:?}");
        assert!(n.stop().is_empty());
        let after = n.tick(t0 + STATUS_EVERY * 2, &healthy_ready());
        assert_eq!(after, vec![Message::Watchdog]);
    }

    #[test]
    fn messages_use_the_sd_notify_wire_format() {
        let wire = |m: Message| m.to_state().to_string();
        assert_eq!(wire(Message::Ready), "READY=1");
        assert_eq!(wire(Message::Watchdog), "WATCHDOG=1");
        assert_eq!(wire(Message::Stopping), "STOPPING=1");
        assert_eq!(wire(Message::Status("ready".into())), "STATUS=ready");
        assert_eq!(
            wire(Message::ExtendTimeout(Duration::from_secs(5))),
            "EXTEND_TIMEOUT_USEC=5000000"
        );
    }
}
