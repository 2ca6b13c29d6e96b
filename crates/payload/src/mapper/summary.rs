//! The mapping of a storm summary: its `data` under the same key policy and budget as an alert.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::compile::as_u64;
use super::identity::clip;
use super::{Mapped, Mapper, Note, Priority};
use crate::coalesce::Summary;
use crate::key::normalize_key;
use crate::size::{json_len, string_len, truncate_with_marker};

impl Mapper {
    /// The `data` object of a storm summary (see [`crate::Coalescer`]), under the same key policy
    /// and budget: alert id, `summary = true`, site, alert count, alerts delivered individually,
    /// device count, devices (comma-separated, cut with a marker if needed), first and last time,
    /// worst level (under the first priority field's key, e.g. `alertLevel`).
    pub fn map_summary(&self, s: &Summary) -> Mapped {
        let key = |k: &str| normalize_key(k, self.case).unwrap_or_else(|| k.to_owned());
        let mut hasher = Sha256::new();
        hasher.update(b"summary\0");
        hasher.update(s.site.as_bytes());
        hasher.update(b"\0");
        hasher.update(s.window_start_ms.to_be_bytes());
        for id in &s.alert_ids {
            hasher.update(b"\0");
            hasher.update(id.as_bytes());
        }
        let alert_id = hex::encode(&hasher.finalize()[..16]);
        let mut out = Map::new();
        out.insert(self.alert_id_key.clone(), Value::String(alert_id.clone()));
        out.insert(key("summary"), Value::Bool(true));
        out.insert(key("site"), Value::String(clip(&s.site).to_owned()));
        out.insert(key("alert_count"), Value::from(s.count));
        out.insert(
            key("delivered_individually"),
            Value::from(s.delivered_individually),
        );
        out.insert(key("device_count"), Value::from(as_u64(s.devices.len())));
        out.insert(key("first_ms"), Value::from(s.first_ms));
        out.insert(key("last_ms"), Value::from(s.last_ms));
        if let Some(level) = &s.worst_level {
            out.insert(
                self.level_key.clone(),
                Value::String(clip(level).to_owned()),
            );
        }
        let mut notes = Vec::new();
        let devices_key = key("devices");
        let devices = s
            .devices
            .iter()
            .map(|d| clip(d))
            .collect::<Vec<_>>()
            .join(",");
        let base = json_len(&out);
        let room = self
            .max_data_bytes
            .saturating_sub(base + 1 + string_len(&devices_key) + 1);
        if string_len(&devices) <= room {
            out.insert(devices_key, Value::String(devices));
        } else {
            notes.push(Note::TruncatedDevices {
                total: s.devices.len(),
            });
            let marker = format!("...[{} devices in total]", s.devices.len());
            if let Some(cut) = truncate_with_marker(&devices, &marker, room) {
                out.insert(devices_key, Value::String(cut));
            }
        }
        let serialized_len = json_len(&out);
        Mapped {
            alert_id,
            priority: if s.critical {
                Priority::Critical
            } else {
                Priority::Normal
            },
            level: s.worst_level.clone(),
            site: Some(s.site.clone()),
            device: None,
            data: out,
            serialized_len,
            notes,
        }
    }
}
