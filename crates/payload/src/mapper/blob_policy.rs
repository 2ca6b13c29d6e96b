//! Binary-looking values (base64, data URIs, control characters, byte arrays) under
//! `mapping.blob_policy`: replaced by a marker with a note, or the alert rejected.

use serde_json::{Map, Value};

use super::{reject, Mapper, Note, Rejection, RejectionKind};
use crate::blob;
use crate::config::BlobPolicy;
use crate::json;

impl Mapper {
    /// Scans `out` (all but the alert id) and `rest` for binary-looking values: each is replaced
    /// by a marker with a [`Note::StrippedBlob`], or the first one rejects the alert
    /// (`blob_policy = "dead_letter"`).
    pub(super) fn handle_blobs(
        &self,
        out: &mut Map<String, Value>,
        rest: &mut Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<(), Rejection> {
        let strip = self.blob_policy == BlobPolicy::Strip;
        let mut first: Option<(String, usize)> = None;
        // Paths are clipped: many blobs under one long key must not cost a copy of that key each.
        let mut found = |p: &str, len: usize| {
            if strip {
                notes.push(Note::StrippedBlob {
                    field: json::clip_path(p),
                    len,
                });
                true
            } else {
                first = Some((json::clip_path(p), len));
                false
            }
        };
        let tables = [(&mut *out, true), (&mut *rest, false)];
        'outer: for (table, is_out) in tables {
            for (k, v) in table.iter_mut() {
                if is_out && *k == self.alert_id_key {
                    continue;
                }
                let mut path = k.clone();
                if !blob::scan(v, &mut path, self.blob_min_len, strip, &mut found) {
                    break 'outer;
                }
            }
        }
        match first {
            Some((field, len)) => Err(reject(
                RejectionKind::BinaryBlob,
                Some(&field),
                format!(
                    "field `{field}` holds a binary-looking value ({len} bytes) and mapping.blob_policy = \"dead_letter\""
                ),
            )),
            None => Ok(()),
        }
    }
}
