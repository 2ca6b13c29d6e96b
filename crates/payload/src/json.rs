//! A strict JSON reader with the outcomes the payload contract needs and `serde_json` does not give:
//! duplicate keys are reported (not last-wins), nesting is bounded by a configured depth (and so is
//! recursion), integers beyond 64 bits and numbers beyond `f64` are kept as their exact digits in a
//! string (not silently rounded), and every error carries a byte offset or a field path.
//!
//! Otherwise it accepts exactly RFC 8259 JSON, like `serde_json` (a test compares the two), plus
//! one leading UTF-8 byte order mark, which is skipped.
//!
//! Cost: one pass, linear in the payload size. Object keys are counted as they are read (at every
//! depth); key `max_keys + 1` stops the parse, and the rest is only scanned to count its keys for
//! the error. Field paths in errors and notes are cut to [`MAX_PATH_LEN`] bytes, so a payload of
//! many values under one long key cannot make the list of paths quadratic in its size.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

/// Why a payload is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Invalid UTF-8 starting at `offset`.
    NotUtf8 { offset: usize },
    /// Not JSON: `what` went wrong at byte `offset`.
    Syntax { offset: usize, what: &'static str },
    /// An object or array at `path` is nested deeper than the limit.
    TooDeep { path: String, max_depth: usize },
    /// The key at `path` appears twice in its object.
    DuplicateKey { path: String },
    /// The payload has more than `max_keys` object keys (all depths); `count` is all of them.
    TooManyKeys { count: usize, max_keys: usize },
}

/// Longest field path (bytes) kept in an error or a note; a longer one is cut at a character
/// boundary and ends with `…`.
pub(crate) const MAX_PATH_LEN: usize = 256;

/// `path` as it goes into an error or a note: at most [`MAX_PATH_LEN`] bytes plus `…`.
pub(crate) fn clip_path(path: &str) -> String {
    if path.len() <= MAX_PATH_LEN {
        return path.to_owned();
    }
    let mut end = MAX_PATH_LEN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// A parsed payload.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The value.
    pub(crate) value: Value,
    /// Paths of numbers kept as strings because they do not fit `i64`/`u64`/`f64`.
    pub(crate) huge_numbers: Vec<String>,
}

/// Parses `bytes` as one JSON value, nesting at most `max_depth` objects/arrays and holding at
/// most `max_keys` object keys in all.
pub(crate) fn parse(bytes: &[u8], max_depth: usize, max_keys: usize) -> Result<Parsed, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let (text, base) = match text.strip_prefix('\u{feff}') {
        Some(rest) => (rest, 3),
        None => (text, 0),
    };
    let mut p = Parser {
        src: text,
        b: text.as_bytes(),
        pos: 0,
        base,
        path: Vec::new(),
        huge: Vec::new(),
        max_depth,
        keys: 0,
        max_keys,
    };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != p.b.len() {
        return Err(p.syntax("trailing characters after the JSON value"));
    }
    Ok(Parsed {
        value,
        huge_numbers: p.huge,
    })
}

/// One step of a field path: an object key or an array index.
enum Seg {
    Key(String),
    Index(usize),
}

/// Formats a field path the way config paths are written: `sensor.reading`, `readings.0`; at most
/// [`MAX_PATH_LEN`] bytes plus `…`. Copies at most that many bytes whatever the path's length, so
/// many values under one long key cost linear time in all.
fn join_path(segs: &[Seg], last: Option<&str>) -> String {
    let mut out = String::new();
    for part in segs
        .iter()
        .map(|s| match s {
            Seg::Key(k) => Cow::Borrowed(k.as_str()),
            Seg::Index(i) => Cow::Owned(i.to_string()),
        })
        .chain(last.map(Cow::Borrowed))
    {
        if out.len() > MAX_PATH_LEN {
            break;
        }
        if !out.is_empty() {
            out.push('.');
        }
        // One byte past the limit is enough for `clip_path` to see that the path is too long.
        let mut end = part.len().min((MAX_PATH_LEN + 1).saturating_sub(out.len()));
        while !part.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&part[..end]);
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    if out.len() > MAX_PATH_LEN {
        out = clip_path(&out);
    }
    out
}

/// Counts object keys in `rest` without building anything: strings followed (after whitespace)
/// by `:`. `rest` must start outside a string. Exact for the rest of a valid JSON document; for
/// broken JSON it counts what looks like keys, which is good enough for an error message.
fn count_keys(rest: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < rest.len() {
        if rest[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        while i < rest.len() {
            match rest[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        i += 1;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = rest.get(i) {
            i += 1;
        }
        if rest.get(i) == Some(&b':') {
            n += 1;
        }
    }
    n
}

struct Parser<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Bytes skipped before `src` (a byte order mark), added to reported offsets.
    base: usize,
    path: Vec<Seg>,
    huge: Vec<String>,
    max_depth: usize,
    /// Object keys read so far, at every depth.
    keys: usize,
    max_keys: usize,
}

impl Parser<'_> {
    fn syntax(&self, what: &'static str) -> ParseError {
        ParseError::Syntax {
            offset: self.pos + self.base,
            what,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat_literal(&mut self, lit: &'static str, v: Value) -> Result<Value, ParseError> {
        if self.b[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(v)
        } else {
            Err(self.syntax("invalid literal"))
        }
    }

    /// Parses a value at nesting `depth` (number of enclosing containers).
    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        match self.b.get(self.pos) {
            None => Err(self.syntax("unexpected end of input")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.eat_literal("true", Value::Bool(true)),
            Some(b'f') => self.eat_literal("false", Value::Bool(false)),
            Some(b'n') => self.eat_literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.syntax("expected a JSON value")),
        }
    }

    fn too_deep(&self, depth: usize) -> Option<ParseError> {
        (depth > self.max_depth).then(|| ParseError::TooDeep {
            path: join_path(&self.path, None),
            max_depth: self.max_depth,
        })
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        if let Some(e) = self.too_deep(depth) {
            return Err(e);
        }
        self.pos += 1; // '{'
        let mut map = Map::new();
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            if self.b.get(self.pos) != Some(&b'"') {
                return Err(self.syntax("expected a string key"));
            }
            let key = self.string()?;
            self.keys += 1;
            if self.keys > self.max_keys {
                // Stop building; only count the rest, for the error.
                return Err(ParseError::TooManyKeys {
                    count: self.keys + count_keys(&self.b[self.pos..]),
                    max_keys: self.max_keys,
                });
            }
            if map.contains_key(&key) {
                return Err(ParseError::DuplicateKey {
                    path: join_path(&self.path, Some(&key)),
                });
            }
            self.skip_ws();
            if self.b.get(self.pos) != Some(&b':') {
                return Err(self.syntax("expected ':' after a key"));
            }
            self.pos += 1;
            self.skip_ws();
            self.path.push(Seg::Key(key));
            let v = self.value(depth);
            // Take the key back out of the path (pushed just above, so it is there).
            let key = match self.path.pop() {
                Some(Seg::Key(k)) => k,
                _ => String::new(),
            };
            map.insert(key, v?);
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.syntax("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        if let Some(e) = self.too_deep(depth) {
            return Err(e);
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.path.push(Seg::Index(items.len()));
            let v = self.value(depth);
            self.path.pop();
            items.push(v?);
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.syntax("expected ',' or ']' in an array")),
            }
        }
    }

    /// Parses a string starting at its opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // '"'
        let mut out = String::new();
        let mut start = self.pos;
        loop {
            let Some(&c) = self.b.get(self.pos) else {
                return Err(self.syntax("unterminated string"));
            };
            match c {
                b'"' => {
                    // Slicing at ASCII bytes of valid UTF-8 keeps char boundaries.
                    out.push_str(&self.src[start..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(&self.src[start..self.pos]);
                    self.pos += 1;
                    self.escape(&mut out)?;
                    start = self.pos;
                }
                0x00..=0x1f => return Err(self.syntax("control character in a string")),
                _ => self.pos += 1,
            }
        }
    }

    /// Parses the escape after a backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), ParseError> {
        let Some(&c) = self.b.get(self.pos) else {
            return Err(self.syntax("unterminated string"));
        };
        self.pos += 1;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = match hi {
                    0xD800..=0xDBFF => {
                        if self.b.get(self.pos) != Some(&b'\\')
                            || self.b.get(self.pos + 1) != Some(&b'u')
                        {
                            return Err(self.syntax("lone surrogate in a \\u escape"));
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(self.syntax("lone surrogate in a \\u escape"));
                        }
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(self.syntax("lone surrogate in a \\u escape")),
                    _ => hi,
                };
                match char::from_u32(code) {
                    Some(ch) => ch,
                    None => return Err(self.syntax("invalid \\u escape")),
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.syntax("invalid escape"));
            }
        };
        out.push(ch);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.b.get(self.pos) {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.syntax("invalid \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let negative = self.b[self.pos] == b'-';
        if negative {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.syntax("invalid number")),
        }
        let mut integer = true;
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.syntax("invalid number"));
            }
            integer = false;
        }
        if let Some(b'e' | b'E') = self.b.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.b.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("invalid number"));
            }
            integer = false;
        }
        let text = &self.src[start..self.pos];
        let number = if integer {
            if negative {
                match text.parse::<i64>() {
                    // serde_json reads `-0` as the float -0.0; do the same.
                    Ok(0) => Number::from_f64(-0.0),
                    Ok(n) => Some(Number::from(n)),
                    Err(_) => None,
                }
            } else {
                text.parse::<u64>().ok().map(Number::from)
            }
        } else {
            text.parse::<f64>().ok().and_then(Number::from_f64)
        };
        Ok(match number {
            Some(n) => Value::Number(n),
            None => {
                self.huge.push(join_path(&self.path, None));
                Value::String(text.to_owned())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Value {
        match parse(text.as_bytes(), 32, 1024) {
            Ok(p) => p.value,
            Err(e) => panic!("{text:?}: {e:?}"),
        }
    }

    #[test]
    fn valid_json_parses_like_serde_json() {
        for text in [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#,
            r#" { "x" : -12.5e3 , "y" : "\u00e9\ud83d\ude00\n\"\\\/" } "#,
            "[]",
            "{}",
            "0",
            "-0",
            "1.0",
            "18446744073709551615",
            "-9223372036854775808",
            r#""tab\tnew\nline""#,
            "1E+2",
        ] {
            let want: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(ok(text), want, "{text}");
        }
    }

    #[test]
    fn malformed_json_is_a_syntax_error_with_offset() {
        for (text, offset) in [
            ("", 0),
            ("{", 1),
            (r#"{"a"}"#, 4),
            (r#"{"a":}"#, 5),
            (r#"{"a":1,}"#, 7),
            ("[1,]", 3),
            ("01", 1),
            ("1.", 2),
            ("-", 1),
            ("1e", 2),
            ("tru", 0),
            ("\"abc", 4),
            ("\"a\u{1}\"", 2),
            (r#""\x""#, 2),
            (r#""\ud800""#, 7),
            (r#""\udc00""#, 7),
            (r#""\u12G4""#, 5),
            ("{} x", 3),
            ("NaN", 0),
            ("{'a':1}", 1),
        ] {
            match parse(text.as_bytes(), 32, 1024) {
                Err(ParseError::Syntax { offset: o, .. }) => assert_eq!(o, offset, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_utf8_reports_its_offset() {
        assert_eq!(
            parse(b"{\"a\":\"\xff\"}", 32, 1024).err(),
            Some(ParseError::NotUtf8 { offset: 6 })
        );
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let p = parse("\u{feff}{\"a\":1}".as_bytes(), 32, 1024).map(|p| p.value);
        assert_eq!(p, Ok(json!({"a": 1})));
    }

    #[test]
    fn duplicate_keys_name_their_path() {
        for (text, path) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"s":{"r":1,"r":1}}"#, "s.r"),
            (r#"{"l":[{"k":1},{"k":1,"k":2}]}"#, "l.1.k"),
        ] {
            assert_eq!(
                parse(text.as_bytes(), 32, 1024).err(),
                Some(ParseError::DuplicateKey { path: path.into() }),
                "{text}"
            );
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_too_deep() {
        assert!(parse(br#"{"a":{"b":[1]}}"#, 3, 1024).is_ok());
        assert_eq!(
            parse(br#"{"a":{"b":[[1]]}}"#, 3, 1024).err(),
            Some(ParseError::TooDeep {
                path: "a.b.0".into(),
                max_depth: 3
            })
        );
        // Far deeper than the stack could take if recursion were unbounded.
        let deep = "[".repeat(1_000_000);
        assert!(matches!(
            parse(deep.as_bytes(), 32, 1024),
            Err(ParseError::TooDeep { .. })
        ));
    }

    #[test]
    fn key_number_max_keys_plus_one_stops_the_parse_and_the_rest_is_only_counted() {
        // (text, max_keys, total keys reported)
        for (text, max_keys, count) in [
            (r#"{"a":1,"b":2}"#, 1, 2),
            (r#"{"a":{"b":{"c":{}}}}"#, 2, 3),
            (
                r#"{"a":[{"k":1},{"k":2}],"s":"\":\"","t":"\\","u" : 0}"#,
                1,
                6,
            ),
            // After the limit nothing is built or checked: a later syntax error or duplicate
            // key does not change the outcome, and the count is what looks like keys.
            (r#"{"a":1,"b":2,"b":3,"c":"#, 1, 4),
        ] {
            assert_eq!(
                parse(text.as_bytes(), 32, max_keys).err(),
                Some(ParseError::TooManyKeys { count, max_keys }),
                "{text}"
            );
        }
        assert!(parse(br#"{"a":{"b":1},"c":[{"d":2}]}"#, 32, 4).is_ok());
    }

    #[test]
    fn paths_longer_than_the_limit_are_cut_at_a_character_boundary() {
        let short = "a.b.0";
        assert_eq!(clip_path(short), short);
        let long = format!("{}é{}", "x".repeat(MAX_PATH_LEN - 1), "y".repeat(10));
        let cut = clip_path(&long);
        assert_eq!(cut, format!("{}…", "x".repeat(MAX_PATH_LEN - 1)));
        let segs = vec![Seg::Key("k".repeat(1000)), Seg::Index(7)];
        let joined = join_path(&segs, Some("leaf"));
        assert_eq!(joined, format!("{}…", "k".repeat(MAX_PATH_LEN)));
        assert_eq!(join_path(&[], None), "(top level)");
        assert_eq!(
            join_path(&[Seg::Key("a".into()), Seg::Index(0)], Some("b")),
            "a.0.b"
        );
    }

    #[test]
    fn huge_numbers_are_kept_as_exact_strings() {
        let p = match parse(
            br#"{"serial":123456789012345678901234567890,"x":[1e400,-99999999999999999999]}"#,
            32,
            1024,
        ) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(
            p.value,
            json!({"serial": "123456789012345678901234567890", "x": ["1e400", "-99999999999999999999"]})
        );
        assert_eq!(p.huge_numbers, vec!["serial", "x.0", "x.1"]);
    }

    /// Equal, with floats allowed to differ in the last bit (serde_json's default float reader is
    /// not always correctly rounded; ours uses `str::parse`, which is).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => x == y || ((x - y) / x).abs() < 1e-15,
                    _ => false,
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
            }
            _ => a == b,
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn reads_back_what_serde_json_writes(v in arb_value()) {
            let text = serde_json::to_string(&v).unwrap_or_default();
            match parse(text.as_bytes(), 128, 1024) {
                Ok(p) => {
                    prop_assert!(same(&p.value, &v), "{} read as {}", text, p.value);
                    prop_assert!(p.huge_numbers.is_empty());
                }
                Err(e) => prop_assert!(false, "{}: {:?}", text, e),
            }
        }

        #[test]
        fn accepts_exactly_what_serde_json_accepts(text in "[\\[\\]{}\",:0-9a-eE.+\\- \\\\u]{0,24}") {
            let theirs = serde_json::from_str::<Value>(&text);
            match (theirs, parse(text.as_bytes(), 128, 1024)) {
                (Ok(a), Ok(p)) => prop_assert!(!p.huge_numbers.is_empty() || same(&a, &p.value), "{}", text),
                (Ok(_), Err(ParseError::DuplicateKey { .. })) | (Err(_), Err(_)) => {}
                (Ok(a), Err(e)) => prop_assert!(false, "{:?}: serde_json read {}, we failed with {:?}", text, a, e),
                (Err(e), Ok(p)) => prop_assert!(false, "{:?}: serde_json failed with {}, we read {}", text, e, p.value),
            }
        }
    }
}
