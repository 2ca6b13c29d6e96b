//! Sources of values: payload paths (`sensor.reading`, `readings.0`), topic placeholders (`{site}`),
//! MQTT 5 user properties (`$props.site`) and the topic pattern that defines the placeholders.

use serde_json::{Map, Value};

/// A dotted payload path. A segment selects an object key, or an array element when the value is
/// an array and the segment is a decimal index. Keys containing `.` cannot be addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Path {
    text: String,
    segs: Vec<String>,
}

impl Path {
    /// Parses a path; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Path, String> {
        if text.is_empty() {
            return Err("the path is empty".into());
        }
        if text.contains(['{', '}']) {
            return Err("a placeholder must be the whole source, like \"{site}\"".into());
        }
        let segs: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segs.iter().any(String::is_empty) {
            return Err("the path has an empty segment (leading, trailing or double '.')".into());
        }
        Ok(Path {
            text: text.to_owned(),
            segs,
        })
    }

    /// The path as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The first segment: the top-level payload key the path starts at.
    pub(crate) fn first(&self) -> &str {
        // `parse` never builds a path without segments.
        self.segs.first().map_or("", String::as_str)
    }

    /// The value at this path, if any.
    pub(crate) fn get<'a>(&self, root: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segs.split_first()?;
        let mut cur = root.get(first)?;
        for seg in rest {
            cur = match cur {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Removes the value at this path when every step is an object key, then removes objects the
    /// removal left empty. Paths through arrays are left alone (elements are copied, not moved).
    pub(crate) fn remove_from(&self, root: &mut Map<String, Value>) {
        fn go(map: &mut Map<String, Value>, segs: &[String]) {
            match segs {
                [] => {}
                [last] => {
                    map.shift_remove(last);
                }
                [first, rest @ ..] => {
                    if let Some(Value::Object(child)) = map.get_mut(first) {
                        let was_empty = child.is_empty();
                        go(child, rest);
                        if child.is_empty() && !was_empty {
                            map.shift_remove(first);
                        }
                    }
                }
            }
        }
        go(root, &self.segs);
    }
}

/// What marks a source as an MQTT 5 user property: `$props.<name>`.
pub(crate) const PROPS_PREFIX: &str = "$props.";

/// Where a value comes from: the payload, the topic or the publish's MQTT 5 user properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A payload path.
    Payload(Path),
    /// A placeholder of the topic pattern.
    Topic(String),
    /// An MQTT 5 user property by name (`$props.site`): the first value the publisher set under
    /// that name; absent with MQTT 3.1.1.
    Prop(String),
}

impl Source {
    /// Parses `"{name}"` as a placeholder and anything else as a payload path.
    pub(crate) fn parse(text: &str) -> Result<Source, String> {
        if let Some(name) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            if !valid_placeholder(name) {
                return Err("a placeholder name is ASCII letters, digits and '_'".into());
            }
            return Ok(Source::Topic(name.to_owned()));
        }
        if let Some(name) = text.strip_prefix(PROPS_PREFIX) {
            if name.is_empty() {
                return Err(
                    "`$props.` needs the user property's name, like \"$props.site\"".into(),
                );
            }
            return Ok(Source::Prop(name.to_owned()));
        }
        Path::parse(text).map(Source::Payload)
    }

    /// The source as written in config.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Payload(p) => p.as_str().to_owned(),
            Source::Topic(n) => format!("{{{n}}}"),
            Source::Prop(n) => format!("{PROPS_PREFIX}{n}"),
        }
    }
}

fn valid_placeholder(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// One level of a topic pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    Placeholder(String),
    /// `+`: any one level.
    Plus,
    /// `#` (last): any number of remaining levels.
    Hash,
}

/// A topic pattern like `plant/{site}/alerts/{device}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicPattern {
    text: String,
    levels: Vec<Level>,
}

impl TopicPattern {
    /// Parses a pattern; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<TopicPattern, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = if *part == "#" {
                if i + 1 != parts.len() {
                    return Err("has '#' before its last level".into());
                }
                Level::Hash
            } else if *part == "+" {
                Level::Plus
            } else if let Some(name) = part.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                if !valid_placeholder(name) {
                    return Err(format!(
                        "has an invalid placeholder {part:?} (ASCII letters, digits, '_')"
                    ));
                }
                if levels.contains(&Level::Placeholder(name.to_owned())) {
                    return Err(format!("repeats the placeholder {part:?}"));
                }
                Level::Placeholder(name.to_owned())
            } else if part.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "has a level {part:?} mixing text with '{{', '}}', '+' or '#'"
                ));
            } else {
                Level::Literal((*part).to_owned())
            };
            levels.push(level);
        }
        Ok(TopicPattern {
            text: text.to_owned(),
            levels,
        })
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `name` is one of the pattern's placeholders.
    pub(crate) fn has_placeholder(&self, name: &str) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::Placeholder(n) if n == name))
    }

    /// Matches `topic`; on success the placeholder values (each a non-empty level).
    pub(crate) fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut out = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return Some(out),
                Level::Plus => {
                    parts.next()?;
                }
                Level::Literal(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                }
                Level::Placeholder(name) => {
                    let part = parts.next()?;
                    if part.is_empty() {
                        return None;
                    }
                    out.push((name.as_str(), part));
                }
            }
        }
        parts.next().is_none().then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn paths_select_nested_keys_and_array_elements() {
        let root = obj(json!({"a": {"b": [10, {"c": "x"}]}, "d": 1, "0": "zero"}));
        for (path, want) in [
            ("d", Some(json!(1))),
            ("a.b.0", Some(json!(10))),
            ("a.b.1.c", Some(json!("x"))),
            ("a.b.2", None),
            ("a.b.x", None),
            ("d.e", None),
            ("0", Some(json!("zero"))),
            ("missing", None),
        ] {
            let p = Path::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(p.get(&root).cloned(), want, "{path}");
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        for path in ["", ".a", "a.", "a..b", "a.{b}", "{site}x"] {
            assert!(Path::parse(path).is_err(), "{path:?}");
        }
    }

    #[test]
    fn removing_a_leaf_prunes_emptied_objects() {
        let mut root =
            obj(json!({"s": {"r": 1, "u": "C"}, "t": {"x": {"y": 1}}, "e": {}, "l": [{"k": 1}]}));
        for p in ["s.r", "t.x.y", "l.0.k", "nope.x"] {
            Path::parse(p)
                .unwrap_or_else(|e| panic!("{e}"))
                .remove_from(&mut root);
        }
        // `e` was empty before and stays; `t` became empty and goes; arrays are not touched.
        assert_eq!(
            Value::Object(root),
            json!({"s": {"u": "C"}, "e": {}, "l": [{"k": 1}]})
        );
    }

    #[test]
    fn sources_are_placeholders_or_paths() {
        assert_eq!(Source::parse("{site}"), Ok(Source::Topic("site".into())));
        assert!(matches!(
            Source::parse("sensor.reading"),
            Ok(Source::Payload(_))
        ));
        assert!(Source::parse("{}").is_err());
        assert!(Source::parse("{a-b}").is_err());
        assert_eq!(
            Source::parse("$props.site"),
            Ok(Source::Prop("site".into()))
        );
        assert_eq!(
            Source::parse("$props.line id").map(|s| s.describe()),
            Ok("$props.line id".to_string())
        );
        assert!(Source::parse("$props.").is_err());
    }

    #[test]
    fn topic_patterns_capture_placeholders() {
        let p =
            TopicPattern::parse("plant/{site}/alerts/{device}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.captures("plant/berlin/alerts/pump-7"),
            Some(vec![("site", "berlin"), ("device", "pump-7")])
        );
        for topic in [
            "plant/berlin/alerts",
            "plant/berlin/alerts/x/y",
            "plant//alerts/x",
            "other/b/alerts/x",
        ] {
            assert_eq!(p.captures(topic), None, "{topic}");
        }
        let wild = TopicPattern::parse("+/{site}/#").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wild.captures("a/b/c/d"), Some(vec![("site", "b")]));
        assert_eq!(wild.captures("a/b"), Some(vec![("site", "b")]));
    }

    #[test]
    fn malformed_topic_patterns_are_refused() {
        for pat in ["a/#/b", "a/{x}/{x}", "a/{x-y}", "a/b{x}", "a/x+"] {
            assert!(TopicPattern::parse(pat).is_err(), "{pat}");
        }
    }
}
