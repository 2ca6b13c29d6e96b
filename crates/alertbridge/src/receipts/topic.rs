//! Receipt topics: the `receipts.topic` template, the values its placeholders take from the
//! alert's topic, and the checks that keep a receipt topic from ever matching an ingest filter.

use super::LEVEL_MAX;

/// What a placeholder gives when the alert's topic does not match `mapping.topic_pattern`.
pub const UNKNOWN: &str = "_unknown";

/// One piece of a topic template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Placeholder(String),
}

/// A parsed `receipts.topic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        if text.starts_with('$') {
            return Err("starts with '$' (reserved for the broker)".into());
        }
        if text.contains(['+', '#', '\0']) {
            return Err(
                "contains '+', '#' or NUL (a receipt topic is a topic, not a filter)".into(),
            );
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err("has a '{' without '}'".into());
            };
            let name = &rest[open + 1..open + close];
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                return Err(format!(
                    "has an invalid placeholder {{{name}}} (ASCII letters, digits, '_')"
                ));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            pieces.push(Piece::Placeholder(name.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("has a '}' without '{'".into());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    /// The placeholder names it uses.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Placeholder(n) => Some(n.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The filter of every topic it can produce: a level holding a placeholder becomes `+`.
    pub fn as_filter(&self) -> String {
        let mut text = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => text.push_str(t),
                // Marks the level; no template text can contain it ('+' is refused).
                Piece::Placeholder(_) => text.push('+'),
            }
        }
        text.split('/')
            .map(|level| if level.contains('+') { "+" } else { level })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The topic for `values` (name → value); a missing value gives [`UNKNOWN`]. Values are
    /// sanitised with [`sanitise_level`].
    pub fn render(&self, values: &[(String, String)]) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Placeholder(name) => {
                    let value = values
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| sanitise_level(v))
                        .unwrap_or_else(|| UNKNOWN.to_owned());
                    out.push_str(&value);
                }
            }
        }
        out
    }
}

/// A value made safe as (part of) one topic level: `/`, `+`, `#` and NUL become `_`, a leading
/// `$` too, an empty value is [`UNKNOWN`], and it is cut to 128 bytes on a char boundary. So a
/// device name from a topic or payload can never add a level or a wildcard to a receipt topic.
pub fn sanitise_level(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect();
    if out.starts_with('$') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        return UNKNOWN.to_owned();
    }
    alertbridge_wal::cut_text(&out, LEVEL_MAX)
}

/// The placeholder names of a `mapping.topic_pattern` (levels written `{name}`).
pub fn pattern_placeholders(pattern: &str) -> Vec<String> {
    pattern
        .split('/')
        .filter_map(|l| l.strip_prefix('{').and_then(|l| l.strip_suffix('}')))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The values of `pattern`'s placeholders in `topic`; empty when it does not match.
pub fn topic_values(pattern: &str, topic: &str) -> Vec<(String, String)> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut parts = topic.split('/');
    for level in pattern.split('/') {
        if level == "#" {
            return out;
        }
        let Some(part) = parts.next() else {
            return Vec::new();
        };
        if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            if part.is_empty() {
                return Vec::new();
            }
            out.push((name.to_owned(), part.to_owned()));
        } else if level != "+" && level != part {
            return Vec::new();
        }
    }
    if parts.next().is_some() {
        return Vec::new();
    }
    out
}

/// Whether some topic matches both filters (`+` and a final `#` are wildcards).
pub fn overlaps(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (Some(&"#"), _) | (_, Some(&"#")) => true,
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(x), Some(y)) => (*x == "+" || *y == "+" || x == y) && go(&a[1..], &b[1..]),
        }
    }
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    go(&a, &b)
}

/// The part of `filter` topics are matched against: a shared subscription
/// `$share/<group>/<filter>` matches what `<filter>` matches (MQTT 5 §4.8.2).
pub fn matched_part(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// Why `topic`, an MQTT 5 publisher's response topic, cannot take a receipt; `None` when it can.
/// Refused: no valid topic name (empty, a wildcard, NUL, a leading `$`); a topic one of the
/// ingest filters matches (the receipt would come back in as an alert, and its receipt too); a
/// topic of the receipts template (`template_filter`: a publisher must not be able to post
/// receipts in another device's name).
pub fn reply_topic_problem(
    topic: &str,
    ingest_filters: &[String],
    template_filter: &str,
) -> Option<String> {
    if topic.is_empty() {
        return Some("the response topic is empty".into());
    }
    if topic.contains(['+', '#', '\0']) {
        return Some("the response topic contains '+', '#' or NUL".into());
    }
    if topic.starts_with('$') {
        return Some("the response topic starts with '$' (reserved for the broker)".into());
    }
    if overlaps(topic, template_filter) {
        return Some(format!(
            "the response topic is a receipts.topic topic ({template_filter}): a publisher may not post receipts for other devices"
        ));
    }
    ingest_filters
        .iter()
        .find(|f| overlaps(topic, matched_part(f)))
        .map(|f| format!("ingest filter {f:?} matches the response topic: the receipt would come back in as an alert"))
}
