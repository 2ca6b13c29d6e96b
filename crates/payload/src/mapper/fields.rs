//! Required fields, then the fields themselves: pass-through (every top-level field under its
//! normalised key) or an explicit mapping (each declared key from a payload path, a topic
//! placeholder or a constant).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::coercion::coerce;
use super::compile::{Field, FieldSource};
use super::identity::scalar_text;
use super::keys::{check_keys, rename_keys, NestedIssue};
use super::{reject, type_name, Mapper, Note, Rejection, RejectionKind};
use crate::key::normalize_key_cow;
use crate::path::Source;

impl Mapper {
    /// Every `required` path present, non-null, non-empty and scalar, else the rejection naming
    /// the first that is not.
    pub(super) fn check_required(&self, obj: &Map<String, Value>) -> Result<(), Rejection> {
        for path in &self.required {
            let p = path.as_str();
            let problem = match path.get(obj) {
                None | Some(Value::Null) => {
                    Some((RejectionKind::MissingField, "is missing".to_owned()))
                }
                Some(Value::String(s)) if s.trim().is_empty() => {
                    Some((RejectionKind::MissingField, "is empty".to_owned()))
                }
                Some(v @ (Value::Object(_) | Value::Array(_))) => Some((
                    RejectionKind::WrongType,
                    format!("must be a string, number or boolean, got {}", type_name(v)),
                )),
                Some(_) => None,
            };
            if let Some((kind, what)) = problem {
                return Err(reject(
                    kind,
                    Some(p),
                    format!("required field `{p}` {what}"),
                ));
            }
        }
        Ok(())
    }

    /// Pass-through: every top-level field under its normalised key; fields with keys that cannot
    /// be normalised are returned for the catch-all.
    pub(super) fn pass_through(
        &self,
        obj: Map<String, Value>,
        out: &mut Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<Map<String, Value>, Rejection> {
        // Top-level keys the policy changed: (normalised, original), to name a collision.
        let mut renamed: Vec<(String, String)> = Vec::new();
        let mut rest = Map::new();
        let mut path = String::new();
        for (k, v) in obj {
            let new_key = match normalize_key_cow(&k, self.case) {
                None => {
                    notes.push(Note::UnmappableKey { field: k.clone() });
                    rest.insert(k, v);
                    continue;
                }
                Some(Cow::Borrowed(_)) => None,
                Some(Cow::Owned(nk)) => Some(nk),
            };
            let nk = new_key.as_deref().unwrap_or(&k);
            if nk == self.alert_id_key || nk == self.catch_all_key {
                let role = if nk == self.alert_id_key {
                    "the alert id"
                } else {
                    "the catch-all field"
                };
                return Err(reject(
                    RejectionKind::KeyCollision,
                    Some(&k),
                    format!(
                        "payload key `{k}` normalises to `{nk}`, which is reserved for {role}; map the field explicitly under another name (or set mapping.alert_id_field to it)"
                    ),
                ));
            }
            path.clear();
            path.push_str(&k);
            let v = match check_keys(&v, self.case, &mut path) {
                Ok(true) => rename_keys(v, self.case),
                Ok(false) => v,
                Err(NestedIssue::Illegal { .. }) => {
                    notes.push(Note::UnmappableKey { field: k.clone() });
                    rest.insert(k, v);
                    continue;
                }
                Err(issue @ NestedIssue::Collision { .. }) => {
                    return Err(reject(
                        RejectionKind::KeyCollision,
                        Some(&k),
                        issue.describe(self.case),
                    ))
                }
            };
            let out_key = match new_key {
                Some(nk) => {
                    renamed.push((nk.clone(), k.clone()));
                    nk
                }
                None => k.clone(),
            };
            // Payload keys are unique (the reader rejects duplicates), so two keys can only meet
            // here after normalisation. The overwrite is never seen: the alert is rejected.
            if out.insert(out_key.clone(), v).is_some() {
                let prev = renamed
                    .iter()
                    .find(|(nk, orig)| *nk == out_key && *orig != k)
                    .map_or(out_key.as_str(), |(_, orig)| orig.as_str());
                return Err(reject(
                    RejectionKind::KeyCollision,
                    Some(&k),
                    format!("payload keys `{prev}` and `{k}` both normalise to `{out_key}`"),
                ));
            }
        }
        Ok(rest)
    }

    /// Explicit mapping: the declared fields; everything they do not name is returned for the
    /// catch-all.
    pub(super) fn explicit(
        &self,
        fields: &[Field],
        mut obj: Map<String, Value>,
        captures: Option<&[(&str, &str)]>,
        props: &[(String, String)],
        out: &mut Map<String, Value>,
        notes: &mut Vec<Note>,
    ) -> Result<Map<String, Value>, Rejection> {
        for f in fields {
            let value = match &f.source {
                FieldSource::Const(v) => Some(v.clone()),
                FieldSource::Source(s) => resolve(s, &obj, captures, props),
            };
            let Some(value) = value.or_else(|| f.default.clone()) else {
                if f.required {
                    let why = match (&f.source, &self.topic) {
                        (FieldSource::Source(Source::Topic(_)), Some(t)) => {
                            format!(
                                " (the topic does not match mapping.topic_pattern `{}`)",
                                t.as_str()
                            )
                        }
                        (FieldSource::Source(Source::Prop(_)), _) => {
                            " (the publisher set no such MQTT 5 user property)".to_string()
                        }
                        _ => String::new(),
                    };
                    return Err(reject(
                        RejectionKind::MissingField,
                        Some(&f.out_key),
                        format!("required {} is missing{why}", f.describe()),
                    ));
                }
                continue;
            };
            let (value, coerced) = coerce(value, f.kind).map_err(|got| {
                reject(
                    RejectionKind::WrongType,
                    Some(&f.out_key),
                    format!("{}: expected {}, got {got}", f.describe(), f.kind),
                )
            })?;
            if coerced {
                notes.push(Note::Coerced {
                    field: f.out_key.clone(),
                    to: f.kind,
                });
            }
            let mut path = f.out_key.clone();
            let value = match check_keys(&value, self.case, &mut path) {
                Ok(false) => value,
                Ok(true) => rename_keys(value, self.case),
                Err(issue) => {
                    let kind = match issue {
                        NestedIssue::Illegal { .. } => RejectionKind::IllegalKey,
                        NestedIssue::Collision { .. } => RejectionKind::KeyCollision,
                    };
                    return Err(reject(
                        kind,
                        Some(&f.out_key),
                        format!("{}: {}", f.describe(), issue.describe(self.case)),
                    ));
                }
            };
            out.insert(f.out_key.clone(), value);
        }
        for f in fields {
            if let FieldSource::Source(Source::Payload(p)) = &f.source {
                p.remove_from(&mut obj);
            }
        }
        Ok(obj)
    }
}

/// The value of a source: a non-null payload value, a topic placeholder's level, or the first
/// MQTT 5 user property of that name.
fn resolve(
    src: &Source,
    obj: &Map<String, Value>,
    captures: Option<&[(&str, &str)]>,
    props: &[(String, String)],
) -> Option<Value> {
    match src {
        Source::Payload(p) => p.get(obj).filter(|v| !v.is_null()).cloned(),
        Source::Topic(name) => captures?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Value::String((*v).to_owned())),
        Source::Prop(name) => props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Value::String(v.clone())),
    }
}

/// [`resolve`] as trimmed, clipped, non-empty text (a site or device name).
pub(super) fn resolve_text(
    src: &Source,
    obj: &Map<String, Value>,
    captures: Option<&[(&str, &str)]>,
    props: &[(String, String)],
) -> Option<String> {
    resolve(src, obj, captures, props)
        .as_ref()
        .and_then(scalar_text)
        .filter(|s| !s.is_empty())
}
