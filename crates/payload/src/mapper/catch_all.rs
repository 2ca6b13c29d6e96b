//! The catch-all: payload fields the mapping does not name (schema drift) kept as one JSON string
//! under `catch_all_key`, cut with a marker when the budget requires it.

use serde_json::{Map, Value};

use super::{reject, Mapper, Note, Rejection, RejectionKind};
use crate::size::{string_len, truncate_with_marker};

impl Mapper {
    /// Adds the catch-all field holding `rest` as one JSON string, truncated with a marker when
    /// the budget requires it; returns the new serialized size of `out`.
    pub(super) fn add_catch_all(
        &self,
        out: &mut Map<String, Value>,
        base: usize,
        rest: Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<usize, Rejection> {
        let text = serde_json::to_string(&rest).unwrap_or_default();
        // `,"extra":` plus the string itself.
        let key_cost = 1 + string_len(&self.catch_all_key) + 1;
        let room = self.max_data_bytes.saturating_sub(base + key_cost);
        let text_len = string_len(&text);
        if text_len <= room {
            out.insert(self.catch_all_key.clone(), Value::String(text));
            return Ok(base + key_cost + text_len);
        }
        let marker = format!("...[truncated: {} bytes in total]", text.len());
        match truncate_with_marker(&text, &marker, room) {
            Some(cut) => {
                notes.push(Note::TruncatedExtra {
                    orig_len: text.len(),
                    kept_len: cut.len() - marker.len(),
                });
                let len = base + key_cost + string_len(&cut);
                out.insert(self.catch_all_key.clone(), Value::String(cut));
                Ok(len)
            }
            None => Err(reject(
                RejectionKind::OverBudget,
                Some(&self.catch_all_key),
                format!(
                    "mapped data is {base} bytes, leaving no room within mapping.max_data_bytes = {} for the catch-all field `{}`",
                    self.max_data_bytes, self.catch_all_key
                ),
            )),
        }
    }
}
