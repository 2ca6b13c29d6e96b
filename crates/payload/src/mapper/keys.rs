//! Keys: every key nested in a value checked and normalised under `key_case`; a key that cannot
//! be made legal, or two keys meeting, is a named problem, never a silent overwrite.

use std::borrow::Cow;

use serde_json::Value;

use crate::config::KeyCase;
use crate::key::{normalize_key, normalize_key_cow};

/// A nested key problem found by [`check_keys`].
pub(super) enum NestedIssue {
    /// A key at `path` cannot be normalised.
    Illegal { path: String },
    /// Two keys of the object at `path` normalise to the same key.
    Collision {
        path: String,
        first: String,
        second: String,
        normalized: String,
    },
}

impl NestedIssue {
    pub(super) fn describe(&self, case: KeyCase) -> String {
        match self {
            NestedIssue::Illegal { path } => {
                format!("nested key `{path}` cannot become a legal key under key_case = {case}")
            }
            NestedIssue::Collision {
                path,
                first,
                second,
                normalized,
            } => format!(
                "in `{path}`, keys `{first}` and `{second}` both normalise to `{normalized}`"
            ),
        }
    }
}

/// Checks every key nested in `v` (whose own path is `path`): whether some key changes under
/// normalisation, or the first problem.
pub(super) fn check_keys(v: &Value, case: KeyCase, path: &mut String) -> Result<bool, NestedIssue> {
    let base = path.len();
    let mut changed = false;
    match v {
        Value::Object(m) => {
            // Keys the policy changes: (normalised, original). Keys in `m` are unique and a
            // normalised key normalises to itself, so two keys meet only if a changed key lands on
            // an existing key or on another changed key.
            let mut renamed: Vec<(String, &str)> = Vec::new();
            for (k, child) in m {
                match normalize_key_cow(k, case) {
                    None => {
                        return Err(NestedIssue::Illegal {
                            path: format!("{path}.{k}"),
                        })
                    }
                    Some(Cow::Borrowed(_)) => {}
                    Some(Cow::Owned(nk)) => renamed.push((nk, k)),
                }
                path.push('.');
                path.push_str(k);
                let r = check_keys(child, case, path);
                path.truncate(base);
                changed |= r?;
            }
            if !renamed.is_empty() {
                changed = true;
                let collision = |first: &str, second: &str, nk: &str| NestedIssue::Collision {
                    path: path.clone(),
                    first: first.to_owned(),
                    second: second.to_owned(),
                    normalized: nk.to_owned(),
                };
                for (nk, orig) in &renamed {
                    if m.contains_key(nk) {
                        return Err(collision(orig, nk, nk));
                    }
                }
                renamed.sort_by(|a, b| a.0.cmp(&b.0));
                for pair in renamed.windows(2) {
                    if pair[0].0 == pair[1].0 {
                        return Err(collision(pair[0].1, pair[1].1, &pair[0].0));
                    }
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push('.');
                path.push_str(&i.to_string());
                let r = check_keys(child, case, path);
                path.truncate(base);
                changed |= r?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// Renames every nested key to its normalised form (after [`check_keys`] found no problem).
pub(super) fn rename_keys(v: Value, case: KeyCase) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, child)| {
                    let nk = normalize_key(&k, case).unwrap_or(k);
                    (nk, rename_keys(child, case))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|c| rename_keys(c, case)).collect()),
        other => other,
    }
}
