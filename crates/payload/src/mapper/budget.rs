//! The data budget (`max_data_bytes`): pass-through spills fields into the catch-all until the
//! rest fits, identifying fields last; an explicit mapping over it is rejected naming its largest
//! field.

use std::cmp::Reverse;

use serde_json::{Map, Value};

use super::{reject, Mapper, Note, Rejection, RejectionKind};
use crate::size::{json_len, string_len};

impl Mapper {
    /// Pass-through only: while the fields (plus room for a truncated catch-all, when there is
    /// one) exceed the budget, moves fields into the catch-all, where they may be cut to fit:
    /// first the ordinary fields, largest first (the later field first among equals), then, only
    /// if still needed, the identifying ones (`identifying`), largest first. The alert id stays.
    /// An explicit mapping never spills: its fields are the workflow's contract. Returns the new
    /// size of `out` (computed exactly: every spilled entry follows the alert id entry, so it took
    /// a comma, its quoted key, a colon and its value).
    ///
    /// O(n log n) in the number of fields: each entry is measured once, the spill order is one
    /// sort, and `out` is rebuilt in one pass (removing entries one by one from the ordered map,
    /// or searching the largest again after each removal, was quadratic: minutes of CPU for
    /// 100 000 keys).
    pub(super) fn spill_largest(
        &self,
        out: &mut Map<String, Value>,
        rest: &mut Map<String, Value>,
        mut base: usize,
        notes: &mut Vec<Note>,
    ) -> usize {
        // `,"extra":"...[truncated: NNNNN bytes in total]"` with some text before the marker.
        let reserve = 1 + string_len(&self.catch_all_key) + 1 + 64;
        let over = |base: usize, rest_empty: bool| {
            base > self.max_data_bytes || (!rest_empty && base + reserve > self.max_data_bytes)
        };
        if !over(base, rest.is_empty()) {
            return base;
        }
        // (identifying, cost of `,"key":value`) per entry of `out`, in order.
        let entries: Vec<(bool, usize)> = out
            .iter()
            .map(|(k, v)| {
                (
                    self.identifying.contains(k),
                    1 + string_len(k) + 1 + json_len(v),
                )
            })
            .collect();
        let mut order: Vec<usize> = out
            .keys()
            .enumerate()
            .filter(|(_, k)| **k != self.alert_id_key)
            .map(|(i, _)| i)
            .collect();
        order.sort_unstable_by_key(|&i| (entries[i].0, Reverse(entries[i].1), Reverse(i)));
        // rank in the spill order, for the entries that go
        let mut spill: Vec<Option<usize>> = vec![None; entries.len()];
        let mut rest_empty = rest.is_empty();
        for (rank, &i) in order.iter().enumerate() {
            if !over(base, rest_empty) {
                break;
            }
            base = base.saturating_sub(entries[i].1);
            spill[i] = Some(rank);
            rest_empty = false;
        }
        let mut moved: Vec<(usize, String, Value)> = Vec::new();
        for (i, (k, v)) in std::mem::take(out).into_iter().enumerate() {
            match spill.get(i).copied().flatten() {
                Some(rank) => moved.push((rank, k, v)),
                None => {
                    out.insert(k, v);
                }
            }
        }
        moved.sort_unstable_by_key(|(rank, ..)| *rank);
        for (_, key, value) in moved {
            notes.push(Note::SpilledToCatchAll { field: key.clone() });
            let mut k = key;
            while rest.contains_key(&k) {
                k.push('\'');
            }
            rest.insert(k, value);
        }
        base
    }

    /// The `OverBudget` rejection for `out` of `len` bytes, naming its largest field.
    pub(super) fn over_budget(&self, out: &Map<String, Value>, len: usize) -> Rejection {
        let largest = out
            .iter()
            .map(|(k, v)| (k, json_len(v)))
            .max_by_key(|(_, n)| *n);
        let (field, detail) = match largest {
            Some((k, n)) => (
                Some(k.as_str()),
                format!("; largest field `{k}` is {n} bytes"),
            ),
            None => (None, String::new()),
        };
        reject(
            RejectionKind::OverBudget,
            field,
            format!(
                "mapped data is {len} bytes, over mapping.max_data_bytes = {}{detail}",
                self.max_data_bytes
            ),
        )
    }
}
