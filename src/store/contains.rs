//! PostgreSQL's jsonb containment (`@>`) computed in Rust over a payload's
//! canonical text (`audit::jsonb`): `payload_contains` on the embedded store
//! (a SQL function), and the live tail's in-memory filter on both stores.
//!
//! The rules, from `JsonbDeepContains` (PostgreSQL 12 to 17):
//!
//! - an object contains another when each of the other's keys is present and
//!   its value is contained: scalars equal, objects and arrays contained
//!   recursively, a scalar never contains a container nor an object an array;
//! - an array contains another when each of the other's elements is found: a
//!   scalar equal to one of its scalar elements, a container contained in one of
//!   its containers of the same kind (order and repeats do not matter);
//! - scalars are equal when of one type and one value: numbers as `numeric`
//!   (`1.0` equals `1`, `1e2` equals `100`), strings after unescaping;
//! - at the root, an object contains only an object; an array contains a bare
//!   scalar it holds (`["a"] @> "a"`), and a bare scalar contains itself only.
//!
//! `tests/it/sqlite_contains.rs` checks these rules against the real server with
//! generated documents.

use crate::audit::jsonb::{JsonbError, canonical};

/// A parsed jsonb document: numbers in a canonical text where equal numerics
/// are equal strings, object keys unique and sorted (as jsonb keeps them).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Whether `doc` contains `pattern`, both any JSON text (`doc` usually the stored
/// canonical text); `Err` when one is not a document jsonb could hold.
pub fn contains_text(doc: &[u8], pattern: &[u8]) -> Result<bool, JsonbError> {
    Ok(contains(&parse(doc)?, &parse(pattern)?))
}

/// A JSON text as jsonb holds it (duplicate keys: the last kept).
pub fn parse(text: &[u8]) -> Result<Json, JsonbError> {
    let canon = canonical(text)?;
    let mut p = Parser { s: &canon, at: 0 };
    Ok(p.value())
}

/// A pattern ready to be tested against many stored documents: parsed once,
/// with the texts every document that contains it must hold in its canonical
/// text, looked for (memmem) before the document is parsed. A key or string
/// appears quoted as jsonb writes it; a number as its canonical digits without
/// trailing fractional zeros, a prefix of every equal number's text (`1.5` of
/// `1.50`; numeric's output has no exponent). Most documents that do not
/// contain a rare value are refused without being parsed.
#[derive(Debug)]
pub struct Pattern {
    json: Json,
    needles: Vec<memchr::memmem::Finder<'static>>,
}

impl Pattern {
    pub fn new(text: &[u8]) -> Result<Self, JsonbError> {
        let json = parse(text)?;
        let mut texts = Vec::new();
        needles_of(&json, &mut texts);
        texts.sort();
        texts.dedup();
        let needles = texts
            .into_iter()
            .map(|t| memchr::memmem::Finder::new(&t).into_owned())
            .collect();
        Ok(Pattern { json, needles })
    }

    /// Whether the stored document (canonical text) contains the pattern.
    pub fn matches(&self, doc: &[u8]) -> bool {
        if !self.needles.iter().all(|n| n.find(doc).is_some()) {
            return false;
        }
        // A stored payload is canonical text; one that is not matches nothing.
        parse(doc).is_ok_and(|d| contains(&d, &self.json))
    }
}

/// The texts a document containing `j` must hold (see [`Pattern`]).
fn needles_of(j: &Json, out: &mut Vec<Vec<u8>>) {
    let quoted = |s: &str| {
        let text = serde_json::to_vec(s).expect("a string serializes");
        canonical(&text).unwrap_or(text)
    };
    match j {
        Json::String(s) => out.push(quoted(s)),
        Json::Number(n) => out.push(n.clone().into_bytes()),
        Json::Array(items) => items.iter().for_each(|i| needles_of(i, out)),
        Json::Object(members) => {
            for (k, v) in members {
                out.push(quoted(k));
                needles_of(v, out);
            }
        }
        Json::Null | Json::Bool(_) => {}
    }
}

/// PostgreSQL's `doc @> pattern`.
pub fn contains(doc: &Json, pattern: &Json) -> bool {
    let mut unbounded = u32::MAX;
    contains_within(doc, pattern, &mut unbounded).unwrap_or(false)
}

/// [`contains`] in at most `steps` comparisons; `None` when they ran out (a
/// pattern's arrays against a document's arrays can cost their product).
pub fn contains_within(doc: &Json, pattern: &Json, steps: &mut u32) -> Option<bool> {
    match (doc, pattern) {
        (Json::Object(_), Json::Object(_)) | (Json::Array(_), Json::Array(_)) => {
            deep(doc, pattern, steps)
        }
        // A bare scalar is a one-element array that is marked raw: an array
        // holds it, and it holds only itself.
        (Json::Array(items), scalar) if !is_container(scalar) => {
            for i in items {
                *steps = steps.checked_sub(1)?;
                if i == scalar {
                    return Some(true);
                }
            }
            Some(false)
        }
        (a, b) if !is_container(a) && !is_container(b) => Some(a == b),
        _ => Some(false),
    }
}

fn is_container(j: &Json) -> bool {
    matches!(j, Json::Array(_) | Json::Object(_))
}

/// Containment of two containers (of one kind, else false).
fn deep(doc: &Json, pattern: &Json, steps: &mut u32) -> Option<bool> {
    *steps = steps.checked_sub(1)?;
    Some(match (doc, pattern) {
        (Json::Object(have), Json::Object(want)) => {
            for (key, w) in want {
                let Ok(i) = have.binary_search_by(|(k, _)| jsonb_key_order(k, key)) else {
                    return Some(false);
                };
                let h = &have[i].1;
                let held = match (is_container(h), is_container(w)) {
                    (false, false) => h == w,
                    (true, true) => deep(h, w, steps)?,
                    _ => false,
                };
                if !held {
                    return Some(false);
                }
            }
            true
        }
        (Json::Array(have), Json::Array(want)) => {
            for w in want {
                let mut found = false;
                for h in have {
                    *steps = steps.checked_sub(1)?;
                    let held = if is_container(w) {
                        deep(h, w, steps)?
                    } else {
                        h == w
                    };
                    if held {
                        found = true;
                        break;
                    }
                }
                if !found {
                    return Some(false);
                }
            }
            true
        }
        _ => false,
    })
}

/// jsonb's key order: shorter first, then bytewise.
fn jsonb_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// A reader of canonical text (well formed: `canonical` wrote it).
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip(&mut self, text: &[u8]) {
        debug_assert_eq!(&self.s[self.at..self.at + text.len()], text);
        self.at += text.len();
    }

    fn peek(&self) -> u8 {
        self.s.get(self.at).copied().unwrap_or(0)
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'n' => {
                self.skip(b"null");
                Json::Null
            }
            b't' => {
                self.skip(b"true");
                Json::Bool(true)
            }
            b'f' => {
                self.skip(b"false");
                Json::Bool(false)
            }
            b'"' => Json::String(self.string()),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if self.peek() == b']' {
                    self.at += 1;
                    return Json::Array(items);
                }
                loop {
                    items.push(self.value());
                    match self.peek() {
                        b',' => self.skip(b", "),
                        _ => {
                            self.skip(b"]");
                            return Json::Array(items);
                        }
                    }
                }
            }
            b'{' => {
                self.at += 1;
                let mut members = Vec::new();
                if self.peek() == b'}' {
                    self.at += 1;
                    return Json::Object(members);
                }
                loop {
                    let key = self.string();
                    self.skip(b": ");
                    members.push((key, self.value()));
                    match self.peek() {
                        b',' => self.skip(b", "),
                        _ => {
                            self.skip(b"}");
                            return Json::Object(members);
                        }
                    }
                }
            }
            _ => Json::Number(self.number()),
        }
    }

    /// A number's value as text: `numeric`'s output without the zeros of its
    /// scale (`15.0` and `15` are one number).
    fn number(&mut self) -> String {
        let start = self.at;
        while matches!(self.peek(), b'-' | b'0'..=b'9' | b'.') {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("0");
        match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
            false => text.to_owned(),
        }
    }

    fn string(&mut self) -> String {
        self.skip(b"\"");
        let mut out = Vec::new();
        loop {
            match self.peek() {
                b'"' => {
                    self.at += 1;
                    break;
                }
                b'\\' => {
                    let e = self.s.get(self.at + 1).copied().unwrap_or(b'\\');
                    self.at += 2;
                    match e {
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            // Canonical text escapes only control characters so.
                            let hex = std::str::from_utf8(&self.s[self.at..self.at + 4])
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                                .unwrap_or('\u{fffd}');
                            self.at += 4;
                            let mut buf = [0; 4];
                            out.extend_from_slice(hex.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                0 if self.at >= self.s.len() => break,
                b => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(doc: &str, pattern: &str) -> bool {
        contains_text(doc.as_bytes(), pattern.as_bytes()).unwrap()
    }

    #[test]
    fn the_examples_of_postgresqls_manual_hold() {
        assert!(c(r#"{"a":1, "b":2}"#, r#"{"b":2}"#));
        assert!(c("[1, 2, 3]", "[1, 3]"));
        assert!(c("[1, 2, 3]", "[3, 1]"));
        assert!(c("[1, 2, 3]", "[1, 1]"));
        assert!(c(
            r#"{"product": "PostgreSQL", "version": 9.4, "jsonb": true}"#,
            r#"{"version": 9.4}"#
        ));
        assert!(!c("[1, 2, [1, 3]]", "[1, 3]"));
        assert!(c("[1, 2, [1, 3]]", "[[1, 3]]"));
        assert!(!c(r#"{"foo": {"bar": "baz"}}"#, r#"{"bar": "baz"}"#));
        assert!(c(r#"{"foo": {"bar": "baz"}}"#, r#"{"foo": {}}"#));
        assert!(c(r#"["foo", "bar"]"#, r#""foo""#));
        assert!(!c(r#""foo""#, r#"["foo"]"#));
        assert!(c(r#""foo""#, r#""foo""#));
    }

    #[test]
    fn numbers_compare_as_numeric_and_strings_after_unescaping() {
        assert!(c(r#"{"n": 1.0}"#, r#"{"n": 1}"#));
        assert!(c(r#"{"n": 1e2}"#, r#"{"n": 100.000}"#));
        assert!(c(r#"{"n": -0.0}"#, r#"{"n": 0}"#));
        assert!(!c(r#"{"n": 1.01}"#, r#"{"n": 1.1}"#));
        assert!(!c(r#"{"n": 10}"#, r#"{"n": 1}"#));
        assert!(!c(r#"{"n": "1"}"#, r#"{"n": 1}"#));
        assert!(c(r#"{"s": "\u00e9\n"}"#, "{\"s\": \"é\\n\"}"));
        assert!(c(r#"{"k": 1, "k": 2}"#, r#"{"k": 2}"#));
        assert!(!c(r#"{"k": 1, "k": 2}"#, r#"{"k": 1}"#));
    }

    #[test]
    fn kinds_must_match_at_every_level() {
        assert!(!c(r#"{"a": []}"#, r#"{"a": {}}"#));
        assert!(!c(r#"{"a": {}}"#, r#"{"a": []}"#));
        assert!(!c(r#"{"a": 1}"#, r#"{"a": [1]}"#));
        assert!(!c(r#"{"a": [1]}"#, r#"{"a": 1}"#));
        assert!(!c("[1]", "{}"));
        assert!(!c("{}", "[]"));
        assert!(c(r#"{"a": [{"b": 1, "c": 2}, 3]}"#, r#"{"a": [{"c": 2}]}"#));
        assert!(!c(r#"{"a": [{"b": 1}, [2]]}"#, r#"{"a": [[1]]}"#));
        assert!(c(r#"{"a": null}"#, r#"{"a": null}"#));
        assert!(!c(r#"{"a": false}"#, r#"{"a": null}"#));
    }

    #[test]
    fn a_check_past_its_budget_gives_up_rather_than_decides() {
        let doc =
            parse(format!("{{\"a\": {:?}}}", (0..10_000).collect::<Vec<_>>()).as_bytes()).unwrap();
        // Every pattern element is last in the array: 20,000 x 10,000 comparisons.
        let pattern = parse(format!("{{\"a\": {:?}}}", vec![9_999; 20_000]).as_bytes()).unwrap();
        let mut steps = 100_000;
        assert_eq!(contains_within(&doc, &pattern, &mut steps), None);
        let mut steps = 100_000;
        let small = parse(br#"{"a": [3, 7]}"#).unwrap();
        assert_eq!(contains_within(&doc, &small, &mut steps), Some(true));
    }
}
