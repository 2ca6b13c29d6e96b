//! Binary-looking values: detection and stripping.
//!
//! A string of at least `min_len` bytes is binary-looking when it is a `data:` URI with
//! `;base64,`, or consists only of base64 characters (standard or URL-safe alphabet, `=` padding,
//! line breaks), or more than a tenth of its characters are control characters (other than tab and
//! line breaks) or U+FFFD. An array of at least `min_len` elements that are all integers 0..=255 is
//! a byte array. Natural text has spaces or punctuation, so it never matches.

use serde_json::Value;

/// The marker that replaces a stripped value.
pub(crate) fn marker(len: usize) -> String {
    format!("[binary value stripped: {len} bytes]")
}

/// True when the string looks binary (see the module doc).
pub(crate) fn looks_binary_str(s: &str, min_len: usize) -> bool {
    if s.len() < min_len {
        return false;
    }
    // bytes, not a str slice: index 128 may fall inside a multi-byte character
    let head = &s.as_bytes()[..s.len().min(128)];
    if s.starts_with("data:") && head.windows(8).any(|w| w == b";base64,") {
        return true;
    }
    let mut base64 = true;
    let mut odd = 0usize;
    let mut chars = 0usize;
    for c in s.chars() {
        chars += 1;
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '+' | '/' | '-' | '_' | '=' | '\r' | '\n' => {}
            _ => {
                base64 = false;
                if (c.is_control() && c != '\t') || c == '\u{FFFD}' {
                    odd += 1;
                }
            }
        }
    }
    base64 || odd * 10 > chars
}

/// True when the array looks like raw bytes.
fn looks_binary_array(a: &[Value], min_len: usize) -> bool {
    a.len() >= min_len && a.iter().all(|v| v.as_u64().is_some_and(|n| n <= 255))
}

/// Size of a binary-looking value (bytes of a string, elements of an array), if it is one.
pub(crate) fn binary_len(v: &Value, min_len: usize) -> Option<usize> {
    match v {
        Value::String(s) if looks_binary_str(s, min_len) => Some(s.len()),
        Value::Array(a) if looks_binary_array(a, min_len) => Some(a.len()),
        _ => None,
    }
}

/// Finds binary-looking values in `v` (itself and nested), calling `found(path, len)` for each;
/// when `strip` is true each is replaced by its marker. `path` is the value's path; nested paths
/// are `path.key` / `path.index`. Returns early with the first path when `found` returns false.
pub(crate) fn scan(
    v: &mut Value,
    path: &mut String,
    min_len: usize,
    strip: bool,
    found: &mut dyn FnMut(&str, usize) -> bool,
) -> bool {
    if let Some(len) = binary_len(v, min_len) {
        if !found(path, len) {
            return false;
        }
        if strip {
            *v = Value::String(marker(len));
        }
        return true;
    }
    let base = path.len();
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                path.push('.');
                path.push_str(k);
                let go_on = scan(child, path, min_len, strip, found);
                path.truncate(base);
                if !go_on {
                    return false;
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                path.push('.');
                path.push_str(&i.to_string());
                let go_on = scan(child, path, min_len, strip, found);
                path.truncate(base);
                if !go_on {
                    return false;
                }
            }
        }
        _ => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Regression: a `data:` value whose 128th byte falls inside a multi-byte character made
    /// the check slice a `&str` off a char boundary and panic (found in review).
    #[test]
    fn data_prefix_with_multibyte_text_does_not_panic() {
        let s = format!("data:{}", "é".repeat(200));
        assert!(!looks_binary_str(&s, 16));
        let b64 = format!("data:image/png;base64,{}", "QUJD".repeat(50));
        assert!(looks_binary_str(&b64, 16));
    }

    #[test]
    fn binary_looking_strings_are_detected() {
        let b64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==".repeat(4);
        let table: &[(String, bool)] = &[
            (b64.clone(), true),
            (format!("data:image/png;base64,{b64}"), true),
            (b64.replace('+', "-").replace('/', "_"), true),
            (
                b64.chars()
                    .collect::<Vec<_>>()
                    .chunks(76)
                    .map(|c| c.iter().collect::<String>())
                    .collect::<Vec<_>>()
                    .join("\r\n"),
                true,
            ),
            ("\u{1}\u{2}abc".repeat(100), true),
            ("\u{FFFD}xyz".repeat(100), true),
            (
                "Pump 7 reports a pressure drop below the configured threshold. ".repeat(8),
                false,
            ),
            (
                "https://cdn.example.com/snapshots/2024/03/15/cam-12.jpg?sig=abc".repeat(6),
                false,
            ),
            (b64[..100].to_owned(), false),
            ("line one\nline two\ttabbed ".repeat(20), false),
        ];
        for (s, want) in table {
            assert_eq!(
                looks_binary_str(s, 256),
                *want,
                "{:?}",
                &s[..s.len().min(40)]
            );
        }
    }

    #[test]
    fn byte_arrays_are_detected() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(binary_len(&json!(bytes), 256), Some(256));
        assert_eq!(binary_len(&json!(bytes[..255]), 256), None);
        let mut floats: Vec<Value> = bytes.iter().map(|b| json!(b)).collect();
        floats[3] = json!(1.5);
        assert_eq!(binary_len(&Value::Array(floats), 256), None);
        assert_eq!(binary_len(&json!(vec![300; 300]), 256), None);
    }

    #[test]
    fn scan_strips_nested_blobs_and_reports_paths() {
        let blob = "A".repeat(300);
        let mut v = json!({"cam": {"img": blob, "name": "c1"}, "list": [1, blob]});
        let mut seen = Vec::new();
        let mut path = String::from("payload");
        scan(&mut v, &mut path, 256, true, &mut |p, n| {
            seen.push((p.to_owned(), n));
            true
        });
        assert_eq!(
            seen,
            vec![
                ("payload.cam.img".to_owned(), 300),
                ("payload.list.1".to_owned(), 300)
            ]
        );
        assert_eq!(
            v,
            json!({"cam": {"img": marker(300), "name": "c1"}, "list": [1, marker(300)]})
        );
    }
}
