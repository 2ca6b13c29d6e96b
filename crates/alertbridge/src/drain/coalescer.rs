//! Storm coalescing: a pure state machine (time is passed in) that, during a mass failure,
//! collapses the non-critical alerts of one site into one summary alert per window. Generic over
//! the member it keeps for each absorbed alert (the drain's [`super::job::Member`]), which it
//! hands back with the window's [`Summary`].
//!
//! Per site, a window opens with the site's first offered alert and lasts `window_ms`. The first
//! `min_count - 1` alerts of a window are delivered as usual ([`CoalesceDecision::Deliver`]); the
//! `min_count`-th and every later one is absorbed ([`CoalesceDecision::Absorbed`]). When the window
//! has ended, [`Coalescer::flush_due`] returns one [`Summary`] for it (if it absorbed anything),
//! with its members, which the caller maps with `Mapper::map_summary` and delivers once. Outside
//! a storm no alert is delayed; during a storm each window sends `min_count - 1` alerts plus one
//! summary.
//!
//! Critical alerts are always delivered singly unless `include_critical` is set; alerts without a
//! site are always delivered. The state is in memory only: the members are the audit record of
//! the summary, kept until it is settled; after a restart the caller delivers what is left
//! pending as usual.

use std::collections::{BTreeMap, HashSet};

use alertbridge_payload::{CoalesceConfig, Identity, Mapped, Priority, Summary};

/// What to do with an offered alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CoalesceDecision {
    /// Deliver it as usual.
    Deliver,
    /// Do not deliver it alone: it is a member of the summary for `site` that becomes due at
    /// `flush_at_ms`, kept here until then.
    Absorbed {
        /// The site's key.
        site: String,
        /// When [`Coalescer::flush_due`] will return the summary.
        flush_at_ms: u64,
    },
}

/// A window's summary and the members it covers, in arrival order.
pub(crate) type Flushed<M> = (Summary, Vec<M>);

/// State of one site's open window.
#[derive(Debug)]
struct Window<M> {
    start_ms: u64,
    end_ms: u64,
    seen: u64,
    delivered: u64,
    /// Absorbed alerts' ids (the summary's `alert_ids`) and what the caller keeps of each.
    members: Vec<String>,
    kept: Vec<M>,
    devices: Vec<String>,
    device_set: HashSet<String>,
    first_ms: u64,
    last_ms: u64,
    /// (rank, level as sent)
    worst: Option<(usize, String)>,
    critical: bool,
}

impl<M> Window<M> {
    fn into_summary(self, site: String) -> Option<Flushed<M>> {
        if self.members.is_empty() {
            return None;
        }
        let summary = Summary {
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
        };
        Some((summary, self.kept))
    }
}

/// The storm coalescing state machine. Not shared: owned by the one task that decides delivery.
#[derive(Debug)]
pub(crate) struct Coalescer<M> {
    enabled: bool,
    window_ms: u64,
    min_count: u64,
    include_critical: bool,
    /// Lowercased, least severe first.
    levels: Vec<String>,
    windows: BTreeMap<String, Window<M>>,
    /// Windows that ended while alerts kept coming, waiting for the next `flush_due`.
    closed: Vec<Flushed<M>>,
}

impl<M> Coalescer<M> {
    /// A coalescer for `cfg` (checked by `Mapper::new`; a `min_count` of 0 acts as 1).
    pub(crate) fn new(cfg: &CoalesceConfig) -> Coalescer<M> {
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

    /// Decides about one alert at `now_ms`. `site` is normally `mapped.site`; `member` is kept
    /// if the alert is absorbed (and dropped if it is to be delivered).
    pub(crate) fn offer(
        &mut self,
        now_ms: u64,
        identity: &Identity,
        mapped: &Mapped,
        site: Option<&str>,
        member: M,
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
                kept: Vec::new(),
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
        w.kept.push(member);
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

    /// Summaries of every window that has ended by `now_ms` (oldest first), with their
    /// members; ended windows without absorbed alerts are forgotten.
    pub(crate) fn flush_due(&mut self, now_ms: u64) -> Vec<Flushed<M>> {
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
        out.sort_by(|(a, _), (b, _)| (a.window_end_ms, &a.site).cmp(&(b.window_end_ms, &b.site)));
        out
    }

    /// Summaries of every window, ended or not; the coalescer is empty afterwards.
    #[cfg(test)]
    pub(crate) fn flush_all(&mut self) -> Vec<Flushed<M>> {
        self.flush_due(u64::MAX)
    }

    /// Every member held: absorbed into a window, open or ended and not yet flushed.
    pub(crate) fn members(&self) -> impl Iterator<Item = &M> + '_ {
        self.windows
            .values()
            .flat_map(|w| w.kept.iter())
            .chain(self.closed.iter().flat_map(|(_, kept)| kept.iter()))
    }

    /// Nothing absorbed.
    pub(crate) fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.windows.values().all(|w| w.members.is_empty())
    }

    /// When the next summary becomes due, if any alert is absorbed.
    pub(crate) fn next_flush_ms(&self) -> Option<u64> {
        let open = self
            .windows
            .values()
            .filter(|w| !w.members.is_empty())
            .map(|w| w.end_ms);
        let closed = self.closed.iter().map(|(s, _)| s.window_end_ms);
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

    /// The summaries flushed; each one's members (here: the alert ids) are its `alert_ids`.
    fn summaries(flushed: Vec<Flushed<String>>) -> Vec<Summary> {
        flushed
            .into_iter()
            .map(|(s, kept)| {
                assert_eq!(s.alert_ids, kept);
                s
            })
            .collect()
    }

    fn offer(
        c: &mut Coalescer<String>,
        now: u64,
        id: &str,
        level: &str,
        device: &str,
        site: Option<&str>,
    ) -> CoalesceDecision {
        let (i, m) = alert(id, level, device);
        c.offer(now, &i, &m, site, id.to_owned())
    }

    fn absorbed(flush_at_ms: u64) -> CoalesceDecision {
        CoalesceDecision::Absorbed {
            site: "berlin".to_owned(),
            flush_at_ms,
        }
    }

    #[test]
    fn disabled_coalescer_delivers_everything() {
        let mut c = Coalescer::<String>::new(&CoalesceConfig::default());
        for i in 0..20 {
            assert_eq!(
                offer(&mut c, i, &format!("a{i}"), "warning", "d", Some("berlin")),
                CoalesceDecision::Deliver
            );
        }
        assert_eq!(summaries(c.flush_all()), vec![]);
    }

    #[test]
    fn storm_beyond_min_count_is_absorbed_into_one_summary() {
        let mut c = Coalescer::<String>::new(&cfg(3));
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
        assert_eq!(summaries(c.flush_due(1_099)), vec![]);
        let flushed = summaries(c.flush_due(1_100));
        assert_eq!(
            flushed,
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
        assert_eq!(summaries(c.flush_all()), vec![]);
        assert_eq!(c.next_flush_ms(), None);
    }

    #[test]
    fn critical_alerts_are_never_coalesced_unless_configured() {
        let mut c = Coalescer::<String>::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 0, "c1", "critical", "p", Some("berlin")),
            CoalesceDecision::Deliver
        );
        assert_eq!(
            offer(&mut c, 1, "n1", "warning", "p", Some("berlin")),
            absorbed(1_001)
        );
        let mut c = Coalescer::<String>::new(&CoalesceConfig {
            include_critical: true,
            ..cfg(1)
        });
        assert_eq!(
            offer(&mut c, 0, "c1", "critical", "p", Some("berlin")),
            absorbed(1_000)
        );
        let s = summaries(c.flush_all());
        assert_eq!(s.len(), 1);
        assert!(s[0].critical);
        assert_eq!(s[0].worst_level.as_deref(), Some("critical"));
    }

    #[test]
    fn alerts_without_site_are_delivered() {
        let mut c = Coalescer::<String>::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 0, "a", "info", "p", None),
            CoalesceDecision::Deliver
        );
    }

    #[test]
    fn sites_have_separate_windows() {
        let mut c = Coalescer::<String>::new(&cfg(2));
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
        let s = summaries(c.flush_due(1_010));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].site, "berlin");
        // hamburg's window ended too, absorbed nothing and is forgotten.
        assert_eq!(summaries(c.flush_all()), vec![]);
    }

    #[test]
    fn a_window_ending_while_alerts_arrive_is_kept_for_the_next_flush() {
        let mut c = Coalescer::<String>::new(&cfg(1));
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
        let s = summaries(c.flush_due(1_600));
        assert_eq!(
            s.iter().map(|s| s.alert_ids.clone()).collect::<Vec<_>>(),
            vec![vec!["a1".to_owned()]]
        );
        let s = summaries(c.flush_due(2_500));
        assert_eq!(
            s.iter().map(|s| s.alert_ids.clone()).collect::<Vec<_>>(),
            vec![vec!["a2".to_owned()]]
        );
    }

    #[test]
    fn time_going_backwards_stays_in_the_open_window() {
        let mut c = Coalescer::<String>::new(&cfg(1));
        assert_eq!(
            offer(&mut c, 500, "a1", "info", "p", Some("berlin")),
            absorbed(1_500)
        );
        assert_eq!(
            offer(&mut c, 100, "a2", "info", "p", Some("berlin")),
            absorbed(1_500)
        );
        let s = summaries(c.flush_all());
        assert_eq!((s[0].first_ms, s[0].last_ms, s[0].count), (100, 500, 2));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
    fn coalescing_delivers_or_summarises_every_alert_exactly_once(
        alerts in proptest::collection::vec((0u64..5_000, 0usize..3, proptest::prelude::any::<bool>()), 0..120),
        min_count in 1u32..6,
    ) {
        let mut c = Coalescer::<String>::new(&CoalesceConfig {
            enabled: true,
            window_ms: 1_000,
            min_count,
            ..CoalesceConfig::default()
        });
        let sites = ["berlin", "hamburg", "munich"];
        let mut now = 0;
        let mut delivered = Vec::new();
        let mut absorbed = Vec::new();
        let mut summarised = Vec::new();
        for (i, (step, site, critical)) in alerts.iter().enumerate() {
            now += step;
            let priority = if *critical { Priority::Critical } else { Priority::Normal };
            let identity = Identity { alert_id: format!("a{i}"), priority, level: None };
            let mapped = Mapped {
                alert_id: identity.alert_id.clone(),
                priority,
                level: None,
                site: Some(sites[*site].to_owned()),
                device: Some(format!("d{i}")),
                data: Map::new(),
                serialized_len: 2,
                notes: Vec::new(),
            };
            match c.offer(now, &identity, &mapped, mapped.site.as_deref(), identity.alert_id.clone()) {
                CoalesceDecision::Deliver => delivered.push(i),
                CoalesceDecision::Absorbed { .. } => {
                    proptest::prop_assert!(!critical, "critical alert absorbed");
                    absorbed.push(i);
                }
            }
            if step % 3 == 0 {
                for (s, kept) in c.flush_due(now) {
                    proptest::prop_assert!(s.window_end_ms <= now);
                    proptest::prop_assert_eq!(&s.alert_ids, &kept);
                    summarised.extend(s.alert_ids);
                }
            }
        }
        for (s, kept) in c.flush_all() {
            proptest::prop_assert_eq!(&s.alert_ids, &kept);
            summarised.extend(s.alert_ids);
        }
        let mut want: Vec<String> = absorbed.iter().map(|i| format!("a{i}")).collect();
        want.sort();
        summarised.sort();
        proptest::prop_assert_eq!(summarised, want);
        proptest::prop_assert_eq!(delivered.len() + absorbed.len(), alerts.len());
    }
    }
}
