//! Storm coalescing: a pure state machine (time is passed in) that, during a mass failure,
//! collapses the non-critical alerts of one site into one summary alert per window.
//!
//! Per site, a window opens with the site's first offered alert and lasts `window_ms`. The first
//! `min_count - 1` alerts of a window are delivered as usual ([`CoalesceDecision::Deliver`]); the
//! `min_count`-th and every later one is absorbed ([`CoalesceDecision::Absorbed`]). When the window
//! has ended, [`Coalescer::flush_due`] returns one [`Summary`] for it (if it absorbed anything),
//! which the caller maps with [`crate::Mapper::map_summary`] and delivers once. Outside a storm no
//! alert is delayed; during a storm each window sends `min_count - 1` alerts plus one summary.
//!
//! Critical alerts are always delivered singly unless `include_critical` is set; alerts without a
//! site are always delivered. The state is in memory only: the caller keeps every absorbed alert
//! (it is the audit record of the summary) until the summary is delivered, and after a restart
//! delivers what is left pending as usual.

use std::collections::{BTreeMap, HashSet};

use crate::config::CoalesceConfig;
use crate::mapper::{Identity, Mapped, Priority};

/// What to do with an offered alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoalesceDecision {
    /// Deliver it as usual.
    Deliver,
    /// Do not deliver it alone: it is a member of the summary for `site` that becomes due at
    /// `flush_at_ms`. Keep it in the audit record.
    Absorbed {
        /// The site's key.
        site: String,
        /// When [`Coalescer::flush_due`] will return the summary.
        flush_at_ms: u64,
    },
}

/// One site's coalesced alerts for one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The site's key.
    pub site: String,
    /// When the window opened (its first alert).
    pub window_start_ms: u64,
    /// When it closed.
    pub window_end_ms: u64,
    /// Alerts absorbed into this summary.
    pub count: u64,
    /// Alerts of the same window delivered individually before coalescing began.
    pub delivered_individually: u64,
    /// Distinct devices of the absorbed alerts, in order of first appearance.
    pub devices: Vec<String>,
    /// Time of the first absorbed alert.
    pub first_ms: u64,
    /// Time of the last absorbed alert.
    pub last_ms: u64,
    /// Most severe level among the absorbed alerts (by `level_order`; unknown levels rank lowest,
    /// ties keep the first seen).
    pub worst_level: Option<String>,
    /// True when a member was critical (only possible with `include_critical`).
    pub critical: bool,
    /// The absorbed alerts' ids, in order.
    pub alert_ids: Vec<String>,
}

/// State of one site's open window.
#[derive(Debug)]
struct Window {
    start_ms: u64,
    end_ms: u64,
    seen: u64,
    delivered: u64,
    members: Vec<String>,
    devices: Vec<String>,
    device_set: HashSet<String>,
    first_ms: u64,
    last_ms: u64,
    /// (rank, level as sent)
    worst: Option<(usize, String)>,
    critical: bool,
}

impl Window {
    fn into_summary(self, site: String) -> Option<Summary> {
        if self.members.is_empty() {
            return None;
        }
        Some(Summary {
            site,
            window_start_ms: self.start_ms,
            window_end_ms: self.end_ms,
            count: u64::try_from(self.members.len()).unwrap_or(u64::MAX),
            delivered_individually: self.delivered,
            devices: self.devices,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            worst_level: self.worst.map(|(_, l)| l),
            critical: self.critical,
            alert_ids: self.members,
        })
    }
}

/// The storm coalescing state machine. Not shared: owned by the one task that decides delivery.
#[derive(Debug)]
pub struct Coalescer {
    enabled: bool,
    window_ms: u64,
    min_count: u64,
    include_critical: bool,
    /// Lowercased, least severe first.
    levels: Vec<String>,
    windows: BTreeMap<String, Window>,
    /// Windows that ended while alerts kept coming, waiting for the next `flush_due`.
    closed: Vec<Summary>,
}

impl Coalescer {
    /// A coalescer for `cfg` (checked by [`crate::Mapper::new`]; a `min_count` of 0 acts as 1).
    pub fn new(cfg: &CoalesceConfig) -> Coalescer {
        Coalescer {
            enabled: cfg.enabled,
            window_ms: cfg.window_ms,
            min_count: u64::from(cfg.min_count.max(1)),
            include_critical: cfg.include_critical,
            levels: cfg
                .level_order
                .iter()
                .map(|l| l.trim().to_lowercase())
                .collect(),
            windows: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    fn rank(&self, level: &str) -> usize {
        let l = level.to_lowercase();
        self.levels
            .iter()
            .position(|k| *k == l)
            .map_or(0, |i| i + 1)
    }

    /// Decides about one alert at `now_ms`. `site` is normally `mapped.site`.
    pub fn offer(
        &mut self,
        now_ms: u64,
        identity: &Identity,
        mapped: &Mapped,
        site: Option<&str>,
    ) -> CoalesceDecision {
        if !self.enabled {
            return CoalesceDecision::Deliver;
        }
        let Some(site) = site else {
            return CoalesceDecision::Deliver;
        };
        let critical = identity.priority == Priority::Critical;
        if critical && !self.include_critical {
            return CoalesceDecision::Deliver;
        }
        if self.windows.get(site).is_some_and(|w| now_ms >= w.end_ms) {
            if let Some(w) = self.windows.remove(site) {
                self.closed.extend(w.into_summary(site.to_owned()));
            }
        }
        let rank = identity.level.as_deref().map(|l| self.rank(l));
        let window_ms = self.window_ms;
        let w = self
            .windows
            .entry(site.to_owned())
            .or_insert_with(|| Window {
                start_ms: now_ms,
                end_ms: now_ms.saturating_add(window_ms),
                seen: 0,
                delivered: 0,
                members: Vec::new(),
                devices: Vec::new(),
                device_set: HashSet::new(),
                first_ms: now_ms,
                last_ms: now_ms,
                worst: None,
                critical: false,
            });
        w.seen += 1;
        if w.seen < self.min_count {
            w.delivered += 1;
            return CoalesceDecision::Deliver;
        }
        if w.members.is_empty() {
            w.first_ms = now_ms;
        }
        w.first_ms = w.first_ms.min(now_ms);
        w.last_ms = w.last_ms.max(now_ms);
        w.members.push(identity.alert_id.clone());
        if let Some(d) = &mapped.device {
            if w.device_set.insert(d.clone()) {
                w.devices.push(d.clone());
            }
        }
        if let (Some(rank), Some(level)) = (rank, &identity.level) {
            if w.worst.as_ref().is_none_or(|(r, _)| rank > *r) {
                w.worst = Some((rank, level.clone()));
            }
        }
        w.critical |= critical;
        CoalesceDecision::Absorbed {
            site: site.to_owned(),
            flush_at_ms: w.end_ms,
        }
    }

    /// Summaries of every window that has ended by `now_ms` (oldest first); ended windows
    /// without absorbed alerts are forgotten.
    pub fn flush_due(&mut self, now_ms: u64) -> Vec<Summary> {
        let due: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| w.end_ms <= now_ms)
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = std::mem::take(&mut self.closed);
        for site in due {
            if let Some(w) = self.windows.remove(&site) {
                out.extend(w.into_summary(site));
            }
        }
        out.sort_by(|a, b| (a.window_end_ms, &a.site).cmp(&(b.window_end_ms, &b.site)));
        out
    }

    /// Summaries of every window, ended or not (at shutdown); the coalescer is empty afterwards.
    pub fn flush_all(&mut self) -> Vec<Summary> {
        self.flush_due(u64::MAX)
    }

    /// When the next summary becomes due, if any alert is absorbed.
    pub fn next_flush_ms(&self) -> Option<u64> {
        let open = self
            .windows
            .values()
            .filter(|w| !w.members.is_empty())
            .map(|w| w.end_ms);
        let closed = self.closed.iter().map(|s| s.window_end_ms);
        open.chain(closed).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn cfg(min_count: u32) -> CoalesceConfig {
        CoalesceConfig {
            enabled: true,
            window_ms: 1_000,
            min_count,
            ..CoalesceConfig::default()
        }
    }

    fn alert(id: &str, level: &str, device: &str) -> (Identity, Mapped) {
        let priority = if level == "critical" {
            Priority::Critical
        } else {
            Priority::Normal
        };
        let identity = Identity {
            alert_id: id.to_owned(),
            priority,
            level: Some(level.to_owned()),
        };
        let mapped = Mapped {
            alert_id: id.to_owned(),
            priority,
            level: Some(level.to_owned()),
            site: Some("berlin".to_owned()),
            device: Some(device.to_owned()),
            data: Map::new(),
            serialized_len: 2,
            notes: Vec::new(),
        };
        (identity, mapped)
    }

    fn offer(
        c: &mut Coalescer,
        now: u64,
        id: &str,
        level: &str,
        device: &str,
        site: Option<&str>,
    ) -> CoalesceDecision {
        let (i, m) = alert(id, level, device);
        c.offer(now, &i, &m, site)
    }

    fn absorbed(flush_at_ms: u64) -> CoalesceDecision {
        CoalesceDecision::Absorbed {
            site: "berlin".to_owned(),
            flush_at_ms,
        }
    }

    #[test]
    fn disabled_coalescer_delivers_everything() {
        let mut c = Coalescer::new(&CoalesceConfig::default());
        for i in 0..20 {
            assert_eq!(
                offer(&mut c, i, &format!("a{i}"), "warning", "d", Some("berlin")),
                CoalesceDecision::Deliver
            );
        }
        assert_eq!(c.flush_all(), vec![]);
    }

    #[test]
    fn storm_beyond_min_count_is_absorbed_into_one_summary() {
        let mut c = Coalescer::new(&cfg(3));
        let table = [
            (100, "a1", "warning", "p1", CoalesceDecision::Deliver),
            (200, "a2", "info", "p2", CoalesceDecision::Deliver),
            (300, "a3", "minor", "p3", absorbed(1_100)),
            (400, "a4", "major", "p1", absorbed(1_100)),
            (500, "a5", "warning", "p4", absorbed(1_100)),
            (600, "a6", "bogus", "p4", absorbed(1_100)),
        ];
        for (now, id, level, dev, want) in table {
            assert_eq!(
                offer(&mut c, now, id, level, dev, Some("berlin")),
                want,
                "{id}"
            );
        }
        assert_eq!(c.next_flush_ms(), Some(1_100));
        assert_eq!(c.flush_due(1_099), vec![]);
        let summaries = c.flush_due(1_100);
        assert_eq!(
            summaries,
            vec![Summary {
                site: "berlin".into(),
                window_start_ms: 100,
                window_end_ms: 1_100,
                count: 4,
                delivered_individually: 2,
                devices: vec!["p3".into(), "p1".into(), "p4".into()],
                first_ms: 300,
                last_ms: 600,
                worst_level: Some("major".into()),
                critical: false,
                alert_ids: vec!["a3".into(), "a4".into(), "a5".into(), "a6".into()],
            }]
        );
        // Delivered once: nothing more to flush.
        assert_eq!(c.flush_all(), vec![]);
        assert_eq!(c.next_flush_ms(), None);
    }

    #[test]
    fn critical_alerts_are_never_coalesced_unless_configured() {
        let mut c = Coalescer::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 0, "c1", "critical", "p", Some("berlin")),
            CoalesceDecision::Deliver
        );
        assert_eq!(
            offer(&mut c, 1, "n1", "warning", "p", Some("berlin")),
            absorbed(1_001)
        );
        let mut c = Coalescer::new(&CoalesceConfig {
            include_critical: true,
            ..cfg(1)
        });
        assert_eq!(
            offer(&mut c, 0, "c1", "critical", "p", Some("berlin")),
            absorbed(1_000)
        );
        let s = c.flush_all();
        assert_eq!(s.len(), 1);
        assert!(s[0].critical);
        assert_eq!(s[0].worst_level.as_deref(), Some("critical"));
    }

    #[test]
    fn alerts_without_site_are_delivered() {
        let mut c = Coalescer::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 0, "a", "info", "p", None),
            CoalesceDecision::Deliver
        );
    }

    #[test]
    fn sites_have_separate_windows() {
        let mut c = Coalescer::new(&cfg(2));
        assert_eq!(
            offer(&mut c, 0, "b1", "info", "p", Some("berlin")),
            CoalesceDecision::Deliver
        );
        assert_eq!(
            offer(&mut c, 10, "h1", "info", "p", Some("hamburg")),
            CoalesceDecision::Deliver
        );
        assert_eq!(
            offer(&mut c, 20, "b2", "info", "p", Some("berlin")),
            absorbed(1_000)
        );
        let s = c.flush_due(1_010);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].site, "berlin");
        // hamburg's window ended too, absorbed nothing and is forgotten.
        assert_eq!(c.flush_all(), vec![]);
    }

    #[test]
    fn a_window_ending_while_alerts_arrive_is_kept_for_the_next_flush() {
        let mut c = Coalescer::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 0, "a1", "info", "p", Some("berlin")),
            absorbed(1_000)
        );
        // No flush_due call in between: the old window is closed by the next offer.
        assert_eq!(
            offer(&mut c, 1_500, "a2", "info", "p", Some("berlin")),
            absorbed(2_500)
        );
        assert_eq!(c.next_flush_ms(), Some(1_000));
        let s = c.flush_due(1_600);
        assert_eq!(
            s.iter().map(|s| s.alert_ids.clone()).collect::<Vec<_>>(),
            vec![vec!["a1".to_owned()]]
        );
        let s = c.flush_due(2_500);
        assert_eq!(
            s.iter().map(|s| s.alert_ids.clone()).collect::<Vec<_>>(),
            vec![vec!["a2".to_owned()]]
        );
    }

    #[test]
    fn time_going_backwards_stays_in_the_open_window() {
        let mut c = Coalescer::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 500, "a1", "info", "p", Some("berlin")),
            absorbed(1_500)
        );
        assert_eq!(
            offer(&mut c, 100, "a2", "info", "p", Some("berlin")),
            absorbed(1_500)
        );
        let s = c.flush_all();
        assert_eq!((s[0].first_ms, s[0].last_ms, s[0].count), (100, 500, 2));
    }
}
