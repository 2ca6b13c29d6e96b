//! A storm summary: what the agent's storm coalescer (in its drain) collected for one site's
//! window, as [`crate::Mapper::map_summary`] maps it into one summary alert. Coalescing itself
//! (windows, which alert is absorbed) is a delivery-time policy and lives in the agent.

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
