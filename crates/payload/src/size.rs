//! Serialized sizes, measured exactly as `serde_json` writes compact JSON.

use std::io;

use serde::Serialize;

/// A writer that only counts bytes.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of `v` serialized as compact JSON (what the Genesys client sends). Serializing a
/// `serde_json::Value` or map cannot fail; should it ever, `usize::MAX` makes the caller reject
/// the alert as over budget rather than send something unmeasured.
pub(crate) fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut c = Counter(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// Bytes one char takes inside a serialized JSON string (serde_json escapes `"`, `\` and
/// U+0000..U+001F, using the short forms for \b \f \n \r \t).
fn char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        '\u{0}'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// Bytes of `s` serialized as a JSON string, quotes included.
pub(crate) fn string_len(s: &str) -> usize {
    2 + s.chars().map(char_len).sum::<usize>()
}

/// The longest prefix of `s` that, followed by `marker`, serializes to at most `limit` bytes
/// (quotes included), joined with the marker; `None` when not even the marker fits.
pub(crate) fn truncate_with_marker(s: &str, marker: &str, limit: usize) -> Option<String> {
    let fixed = string_len(marker);
    if fixed > limit {
        return None;
    }
    let mut room = limit - fixed;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        let n = char_len(c);
        if n > room {
            break;
        }
        room -= n;
        end = i + c.len_utf8();
    }
    let mut out = String::with_capacity(end + marker.len());
    out.push_str(&s[..end]);
    out.push_str(marker);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_len_matches_serde_json() {
        for s in [
            "",
            "abc",
            "a\"b\\c",
            "\n\r\t\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "héllo ✓ 😀",
            "{\"k\":[1,2]}",
        ] {
            assert_eq!(string_len(s), json_len(&json!(s)), "{s:?}");
        }
    }

    #[test]
    fn truncation_fits_the_limit_and_keeps_the_marker() {
        let s = "{\"a\":\"é\\n\"}".repeat(50);
        for limit in [20, 40, 41, 99, 100, 1000] {
            match truncate_with_marker(&s, "...[cut]", limit) {
                Some(t) => {
                    assert!(string_len(&t) <= limit, "{limit}");
                    assert!(t.ends_with("...[cut]"));
                    assert!(s.starts_with(t.trim_end_matches("...[cut]")));
                    // One more char would not have fitted.
                    let kept = t.len() - "...[cut]".len();
                    if let Some(c) = s[kept..].chars().next() {
                        let longer = format!("{}{c}...[cut]", &s[..kept]);
                        assert!(string_len(&longer) > limit, "{limit}");
                    }
                }
                None => assert!(limit < string_len("...[cut]")),
            }
        }
        assert_eq!(truncate_with_marker("abc", "...[cut]", 5), None);
    }
}
