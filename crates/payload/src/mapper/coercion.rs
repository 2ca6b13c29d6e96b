//! Coercion: a mapped value converted to its declared `type`, or a description of what it was
//! for the `WrongType` reason.

use serde_json::{Number, Value};

use super::type_name;
use crate::config::FieldType;

/// Describes a value for a type error: its type, and for scalars a short excerpt.
fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {:?}", clip_to(s, 40)),
        Value::Number(n) => format!("number {n}"),
        Value::Bool(b) => format!("boolean {b}"),
        other => type_name(other).to_owned(),
    }
}

fn clip_to(s: &str, chars: usize) -> &str {
    match s.char_indices().nth(chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Integral `f64` → `i64` when exactly representable in range.
fn f64_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; the valid range is [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// Coerces `v` to `kind`: the value and whether it changed, or a description of what it was.
pub(super) fn coerce(v: Value, kind: FieldType) -> Result<(Value, bool), String> {
    let bad = |v: &Value| describe_value(v);
    match (kind, v) {
        (FieldType::Any, v) => Ok((v, false)),
        (FieldType::String, v @ Value::String(_)) => Ok((v, false)),
        (FieldType::String, Value::Number(n)) => Ok((Value::String(n.to_string()), true)),
        (FieldType::String, Value::Bool(b)) => Ok((Value::String(b.to_string()), true)),
        (FieldType::Number, v @ Value::Number(_)) => Ok((v, false)),
        (FieldType::Number, Value::String(s)) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Ok((Value::from(i), true))
            } else if let Some(n) = t.parse::<f64>().ok().and_then(Number::from_f64) {
                Ok((Value::Number(n), true))
            } else {
                Err(bad(&Value::String(s)))
            }
        }
        (FieldType::Integer, Value::Number(n)) => {
            if n.is_i64() || n.is_u64() {
                Ok((Value::Number(n), false))
            } else if let Some(i) = n.as_f64().and_then(f64_to_i64) {
                Ok((Value::from(i), true))
            } else {
                Err(bad(&Value::Number(n)))
            }
        }
        (FieldType::Integer, Value::String(s)) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Ok((Value::from(i), true))
            } else if let Ok(u) = t.parse::<u64>() {
                Ok((Value::from(u), true))
            } else if let Some(i) = t.parse::<f64>().ok().and_then(f64_to_i64) {
                Ok((Value::from(i), true))
            } else {
                Err(bad(&Value::String(s)))
            }
        }
        (FieldType::Boolean, v @ Value::Bool(_)) => Ok((v, false)),
        (FieldType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok((Value::Bool(true), true)),
            "false" | "0" => Ok((Value::Bool(false), true)),
            _ => Err(bad(&Value::String(s))),
        },
        (FieldType::Boolean, Value::Number(n)) => match n.as_f64() {
            Some(1.0) => Ok((Value::Bool(true), true)),
            Some(0.0) => Ok((Value::Bool(false), true)),
            _ => Err(bad(&Value::Number(n))),
        },
        (_, v) => Err(bad(&v)),
    }
}
