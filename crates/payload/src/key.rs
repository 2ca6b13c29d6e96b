//! Output key policy: legal keys and their normalisation under a [`KeyCase`].
//!
//! A legal key matches `[A-Za-z][A-Za-z0-9_]*` and has at most [`MAX_KEY_LEN`] bytes, so it can be
//! bound to an Architect variable and used in a JSON path without quoting. Normalisation splits a
//! key into words (at every character outside `[A-Za-z0-9]`, including `_`, `-`, `.`, spaces and all
//! non-ASCII characters, and at case changes `deviceId` → `device` `Id`, `HTTPStatus` → `HTTP`
//! `Status`, `sensor2Value` → `sensor2` `Value`) and joins the words by the policy. A key that
//! already has the policy's shape is kept as it is (for `camelCase`: a lowercase ASCII letter, then
//! ASCII letters and digits, so `deviceID` stays), which makes normalisation idempotent: a
//! normalised key normalises to itself.

use std::borrow::Cow;

use crate::config::KeyCase;

/// Longest legal output key in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// True when `key` is a legal output key: an ASCII letter, then ASCII letters, digits and `_`, at
/// most [`MAX_KEY_LEN`] bytes.
pub fn is_legal_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KEY_LEN
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Normalises `key` under `case`; `None` when nothing legal remains (no ASCII letter to start with,
/// or longer than [`MAX_KEY_LEN`]).
///
/// ```
/// use alertbridge_payload::{normalize_key, KeyCase};
/// assert_eq!(normalize_key("reading_value", KeyCase::CamelCase).as_deref(), Some("readingValue"));
/// assert_eq!(normalize_key("Sensor-Type", KeyCase::SnakeCase).as_deref(), Some("sensor_type"));
/// assert_eq!(normalize_key("temp (C)", KeyCase::Preserve).as_deref(), Some("temp_C"));
/// assert_eq!(normalize_key("2nd", KeyCase::CamelCase), None);
/// ```
pub fn normalize_key(key: &str, case: KeyCase) -> Option<String> {
    normalize_key_cow(key, case).map(Cow::into_owned)
}

/// [`normalize_key`] without allocating when the key is already normalised (then the result is
/// `Cow::Borrowed`, and only then).
pub(crate) fn normalize_key_cow(key: &str, case: KeyCase) -> Option<Cow<'_, str>> {
    // Fast path: most payload keys are already legal and in the wanted style.
    if is_legal_key(key) && already_in_case(key, case) {
        return Some(Cow::Borrowed(key));
    }
    let out = match case {
        KeyCase::Preserve => preserve(key),
        KeyCase::CamelCase => {
            let mut out = String::with_capacity(key.len());
            for (i, w) in words(key).into_iter().enumerate() {
                if i == 0 {
                    out.extend(w.chars().map(|c| c.to_ascii_lowercase()));
                } else {
                    let mut chars = w.chars();
                    if let Some(first) = chars.next() {
                        out.push(first.to_ascii_uppercase());
                    }
                    out.extend(chars.map(|c| c.to_ascii_lowercase()));
                }
            }
            out
        }
        KeyCase::SnakeCase => {
            let mut out = String::with_capacity(key.len() + 4);
            for (i, w) in words(key).into_iter().enumerate() {
                if i > 0 {
                    out.push('_');
                }
                out.extend(w.chars().map(|c| c.to_ascii_lowercase()));
            }
            out
        }
    };
    if !is_legal_key(&out) {
        return None;
    }
    // Defensive: an unchanged key takes the fast path (outputs have exactly the fast-path shape),
    // but callers rely on `Borrowed` meaning "unchanged", so never report an equal key as owned.
    Some(if out == key {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(out)
    })
}

/// Cheap check that a legal key needs no change under `case`.
fn already_in_case(key: &str, case: KeyCase) -> bool {
    match case {
        KeyCase::Preserve => !key.ends_with('_'),
        // camelCase: a key that is already lower camel case (lowercase ASCII letter first, then
        // letters and digits) is kept as it is, acronyms included (`deviceID`). This also makes
        // the policy idempotent: every camelCase output has that shape.
        KeyCase::CamelCase => {
            key.bytes().all(|c| c.is_ascii_alphanumeric()) && key.as_bytes()[0].is_ascii_lowercase()
        }
        KeyCase::SnakeCase => {
            let b = key.as_bytes();
            b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
                && !key.contains("__")
                && !key.ends_with('_')
        }
    }
}

/// `preserve`: runs of characters outside `[A-Za-z0-9_]` become one `_`; leading and trailing `_`
/// are trimmed.
fn preserve(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_illegal = false;
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
            in_illegal = false;
        } else if !in_illegal {
            out.push('_');
            in_illegal = true;
        }
    }
    out.trim_matches('_').to_owned()
}

/// Splits a key into ASCII alphanumeric words (see the module doc).
fn words(key: &str) -> Vec<&str> {
    let b = key.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        // Every index used to slice is at an ASCII byte, hence a char boundary.
        let mut start = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            let (prev, cur) = (b[i - 1], b[i]);
            let hump =
                cur.is_ascii_uppercase() && (prev.is_ascii_lowercase() || prev.is_ascii_digit());
            let acronym_end = cur.is_ascii_uppercase()
                && prev.is_ascii_uppercase()
                && b.get(i + 1).is_some_and(u8::is_ascii_lowercase);
            if hump || acronym_end {
                out.push(&key[start..i]);
                start = i;
            }
            i += 1;
        }
        out.push(&key[start..i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalise_per_policy() {
        use KeyCase::{CamelCase as C, Preserve as P, SnakeCase as S};
        let table: &[(&str, KeyCase, Option<&str>)] = &[
            ("device_id", C, Some("deviceId")),
            ("device_id", S, Some("device_id")),
            ("device_id", P, Some("device_id")),
            ("deviceId", C, Some("deviceId")),
            ("deviceId", S, Some("device_id")),
            ("deviceID", C, Some("deviceID")),
            ("DeviceID", C, Some("deviceId")),
            ("x_Y_z", C, Some("xYZ")),
            ("DeviceID", S, Some("device_id")),
            ("HTTPStatus", C, Some("httpStatus")),
            ("HTTPStatus", S, Some("http_status")),
            ("sensor2Value", C, Some("sensor2Value")),
            ("sensor2Value", S, Some("sensor2_value")),
            ("Sensor-Type", C, Some("sensorType")),
            ("Sensor-Type", P, Some("Sensor_Type")),
            ("temp (C)", P, Some("temp_C")),
            ("temp (C)", C, Some("tempC")),
            ("_id", C, Some("id")),
            ("_id", P, Some("id")),
            ("__v", S, Some("v")),
            ("a.b.c", C, Some("aBC")),
            ("a.b.c", S, Some("a_b_c")),
            ("température", C, Some("tempRature")),
            ("2nd_sensor", C, None),
            ("2nd_sensor", P, None),
            ("", C, None),
            ("---", S, None),
            ("€", P, None),
            ("x", C, Some("x")),
            ("X", C, Some("x")),
            ("X", P, Some("X")),
        ];
        for (key, case, want) in table {
            assert_eq!(
                normalize_key(key, *case).as_deref(),
                *want,
                "{key:?} under {case}"
            );
        }
    }

    #[test]
    fn overlong_keys_are_not_legal() {
        let long = "a".repeat(MAX_KEY_LEN + 1);
        assert_eq!(normalize_key(&long, KeyCase::CamelCase), None);
        assert!(is_legal_key(&long[..MAX_KEY_LEN]));
    }

    #[test]
    fn legal_keys_are_recognised() {
        for (key, legal) in [
            ("deviceId", true),
            ("device_id", true),
            ("a1", true),
            ("1a", false),
            ("_a", false),
            ("a-b", false),
            ("", false),
            ("ä", false),
        ] {
            assert_eq!(is_legal_key(key), legal, "{key:?}");
        }
    }

    #[test]
    fn normalisation_is_idempotent_on_tricky_keys() {
        for key in [
            "aBC",
            "a1B",
            "mode2D",
            "HTTPServer",
            "x_Y_z",
            "a__b",
            "Ab_",
            "aB_c",
        ] {
            for case in [KeyCase::CamelCase, KeyCase::SnakeCase, KeyCase::Preserve] {
                if let Some(once) = normalize_key(key, case) {
                    assert_eq!(
                        normalize_key(&once, case).as_deref(),
                        Some(once.as_str()),
                        "{key:?} {case}"
                    );
                }
            }
        }
    }
}
