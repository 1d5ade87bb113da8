//! jsonb's canonical text, computed in Rust: what `payload::text` returns once
//! PostgreSQL has stored a JSON document as `jsonb`.
//!
//! The writer commits to an event's payload before PostgreSQL sees it
//! (`audit::leaf`), and `verify` recomputes that commitment from the stored
//! `jsonb`. PostgreSQL normalises on input, so the writer has to predict the
//! stored form exactly. The rules, from `jsonb_in`/`JsonbToCString` (PostgreSQL
//! 12 to 17):
//!
//! - an object's keys are sorted by byte length, then bytewise, and of duplicate
//!   keys only the last value is kept;
//! - members are separated by `", "`, keys from values by `": "`, nothing else;
//! - strings are unescaped on input (`\uXXXX`, surrogate pairs joined) and on
//!   output escape only `"`, `\`, `\b \f \n \r \t` and other control characters
//!   as `\u00xx` (lowercase hex);
//! - numbers are `numeric`: `1e2` is `100`, `1.50e1` is `15.0` (the scale is the
//!   fraction's digits minus the exponent, at least 0), zero has no sign, and
//!   more than 131,072 digits before the point or 16,383 after it are refused.
//!
//! `tests/it/audit_jsonb.rs` checks these rules against the real server with
//! generated documents. Streaming: arrays are written straight through, and only
//! an object's members are held (each in its canonical text) to be sorted, so
//! memory stays near the document's size whatever its shape.

/// Why a document cannot be stored as `jsonb` (PostgreSQL would refuse it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonbError {
    #[error("not json at byte {0}")]
    Syntax(usize),
    #[error("a string holds \\u0000, which jsonb cannot store")]
    Nul,
    #[error("a number is out of numeric's range")]
    NumberRange,
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
}

/// Deeper documents are refused by the decoder long before this.
const MAX_DEPTH: usize = 10_000;
/// `numeric`'s limits: the exponent PostgreSQL reads (`INT_MAX / 2`, excluded),
/// the digits before the point and the display scale it can store.
const MAX_EXPONENT: i64 = (i32::MAX / 2) as i64;
const MAX_INTEGER_DIGITS: i64 = 131_072;
const MAX_SCALE: i64 = 16_383;

/// The text PostgreSQL returns for `json` once stored as `jsonb`.
pub fn canonical(json: &[u8]) -> Result<Vec<u8>, JsonbError> {
    let mut p = Parser { s: json, at: 0 };
    let mut out = Vec::with_capacity(json.len());
    p.ws();
    p.value(&mut out, 0)?;
    p.ws();
    if p.at != json.len() {
        return Err(JsonbError::Syntax(p.at));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonbError> {
        if self.peek() == Some(b) {
            self.at += 1;
            Ok(())
        } else {
            Err(JsonbError::Syntax(self.at))
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Result<(), JsonbError> {
        if self.s[self.at..].starts_with(word) {
            self.at += word.len();
            out.extend_from_slice(word);
            Ok(())
        } else {
            Err(JsonbError::Syntax(self.at))
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), JsonbError> {
        if depth > MAX_DEPTH {
            return Err(JsonbError::TooDeep(MAX_DEPTH));
        }
        match self.peek() {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => self.array(out, depth),
            Some(b'"') => {
                let s = self.string()?;
                escape(&s, out);
                Ok(())
            }
            Some(b't') => self.literal(b"true", out),
            Some(b'f') => self.literal(b"false", out),
            Some(b'n') => self.literal(b"null", out),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(JsonbError::Syntax(self.at)),
        }
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), JsonbError> {
        self.expect(b'[')?;
        out.push(b'[');
        self.ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.ws();
            self.value(out, depth + 1)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    out.extend_from_slice(b", ");
                }
                Some(b']') => {
                    self.at += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(JsonbError::Syntax(self.at)),
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), JsonbError> {
        self.expect(b'{')?;
        self.ws();
        // Each member: its unescaped key and its value's canonical text.
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(JsonbError::Syntax(self.at));
                }
                let key = self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
                let mut value = Vec::new();
                self.value(&mut value, depth + 1)?;
                members.push((key, value));
                self.ws();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(JsonbError::Syntax(self.at)),
                }
            }
        }
        // Stable: of equal keys, the later stays later, and is the one kept.
        members.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
        out.push(b'{');
        let mut first = true;
        for (i, (key, value)) in members.iter().enumerate() {
            if members.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            escape(key, out);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
        }
        out.push(b'}');
        Ok(())
    }

    /// A string's unescaped UTF-8 bytes.
    fn string(&mut self) -> Result<Vec<u8>, JsonbError> {
        self.expect(b'"')?;
        let mut s = Vec::new();
        loop {
            // Plain text up to the next quote or backslash, in one piece.
            let start = self.at;
            let rest = &self.s[start..];
            let end = memchr::memchr2(b'"', b'\\', rest).ok_or(JsonbError::Syntax(self.s.len()))?;
            let plain = &rest[..end];
            if let Some(bad) = plain.iter().position(|&b| b < 0x20) {
                return Err(JsonbError::Syntax(start + bad));
            }
            s.extend_from_slice(plain);
            self.at = start + end;
            if self.s[self.at] == b'"' {
                self.at += 1;
                std::str::from_utf8(&s).map_err(|_| JsonbError::Syntax(start))?;
                return Ok(s);
            }
            // A backslash.
            self.at += 1;
            let c = self.peek().ok_or(JsonbError::Syntax(self.at))?;
            self.at += 1;
            let simple = match c {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(0x08),
                b'f' => Some(0x0c),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                b'u' => None,
                _ => return Err(JsonbError::Syntax(self.at - 1)),
            };
            match simple {
                Some(b) => s.push(b),
                None => {
                    let ch = self.unicode_escape()?;
                    let mut buf = [0u8; 4];
                    s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonbError> {
        let digits = self
            .s
            .get(self.at..self.at + 4)
            .ok_or(JsonbError::Syntax(self.at))?;
        let text = std::str::from_utf8(digits).map_err(|_| JsonbError::Syntax(self.at))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JsonbError::Syntax(self.at));
        }
        self.at += 4;
        Ok(u32::from_str_radix(text, 16).expect("four hex digits"))
    }

    /// The character of a `\uXXXX` escape (the `\u` read), joining a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, JsonbError> {
        let at = self.at;
        let hi = self.hex4()?;
        if hi == 0 {
            return Err(JsonbError::Nul);
        }
        let code = match hi {
            0xD800..=0xDBFF => {
                if !self.s[self.at..].starts_with(b"\\u") {
                    return Err(JsonbError::Syntax(at));
                }
                self.at += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(JsonbError::Syntax(at));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(JsonbError::Syntax(at)),
            c => c,
        };
        char::from_u32(code).ok_or(JsonbError::Syntax(at))
    }

    fn digits(&mut self) -> &[u8] {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        &self.s[start..self.at]
    }

    /// A number as `numeric` prints it.
    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), JsonbError> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let int = self.digits().to_vec();
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return Err(JsonbError::Syntax(start));
        }
        let mut frac = Vec::new();
        if self.peek() == Some(b'.') {
            self.at += 1;
            frac = self.digits().to_vec();
            if frac.is_empty() {
                return Err(JsonbError::Syntax(self.at));
            }
        }
        let mut exp: i64 = 0;
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            let minus = match self.peek() {
                Some(b'-') => {
                    self.at += 1;
                    true
                }
                Some(b'+') => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let digits = self.digits();
            if digits.is_empty() {
                return Err(JsonbError::Syntax(self.at));
            }
            // Past numeric's limit whatever follows; saturating keeps it so.
            for &d in digits {
                exp = exp.saturating_mul(10).saturating_add(i64::from(d - b'0'));
            }
            if minus {
                exp = -exp;
            }
            if exp >= MAX_EXPONENT || exp <= -MAX_EXPONENT {
                return Err(JsonbError::NumberRange);
            }
        }
        write_numeric(negative, &int, &frac, exp, out)
    }
}

/// `numeric_out(numeric_in(text))` for a JSON number split into its parts.
fn write_numeric(
    negative: bool,
    int: &[u8],
    frac: &[u8],
    exp: i64,
    out: &mut Vec<u8>,
) -> Result<(), JsonbError> {
    let scale = (frac.len() as i64).saturating_sub(exp).max(0);
    if scale > MAX_SCALE {
        return Err(JsonbError::NumberRange);
    }
    // All the digits, and where the point falls among them.
    let digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let point = int.len() as i64 + exp;
    let digit = |i: i64| -> u8 {
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            b'0'
        }
    };
    let Some(first) = digits.iter().position(|&d| d != b'0') else {
        // Zero: no sign, whatever its exponent.
        out.push(b'0');
        if scale > 0 {
            out.push(b'.');
            out.resize(out.len() + scale as usize, b'0');
        }
        return Ok(());
    };
    let first = first as i64;
    if point - first > MAX_INTEGER_DIGITS {
        return Err(JsonbError::NumberRange);
    }
    if negative {
        out.push(b'-');
    }
    if point <= first {
        out.push(b'0');
    } else {
        out.extend((first..point).map(digit));
    }
    if scale > 0 {
        out.push(b'.');
        out.extend((point..point + scale).map(digit));
    }
    Ok(())
}

/// A string as jsonb prints it (`escape_json`): runs of plain bytes copied whole.
fn escape(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> String {
        String::from_utf8(canonical(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn numbers_print_as_numeric_does() {
        // Each pair was read off PostgreSQL 15.
        for (input, stored) in [
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("1e2", "100"),
            ("1.50e1", "15.0"),
            ("0.00001e3", "0.01"),
            ("1E+2", "100"),
            ("1e-3", "0.001"),
            ("123.456e-5", "0.00123456"),
            ("-1.0", "-1.0"),
            ("0e-3", "0.000"),
            ("-0e5", "0"),
            ("100e-2", "1.00"),
        ] {
            assert_eq!(c(input), stored, "{input}");
        }
    }

    #[test]
    fn keys_sort_by_length_then_bytes_and_the_last_duplicate_wins() {
        assert_eq!(
            c(r#"{"b":1,"aa":2,"a":3,"a":4}"#),
            r#"{"a": 4, "b": 1, "aa": 2}"#
        );
        assert_eq!(
            c(r#" [ 1 , { "x" : [ ] } , {} ] "#),
            r#"[1, {"x": []}, {}]"#
        );
    }

    #[test]
    fn strings_are_unescaped_then_escaped_as_jsonb_does() {
        assert_eq!(
            c(r#""\u00e9\ud83d\ude00\u001f\u007f/\/\b\u000b""#),
            "\"é😀\\u001f\u{7f}//\\b\\u000b\""
        );
    }

    #[test]
    fn what_postgresql_refuses_is_refused() {
        for bad in [
            r#""\u0000""#,
            "1e131072",
            "1e-16384",
            "0.5e-16383",
            "1e99999999999",
            "01",
            "1.",
            r#""\ud800""#,
            "[1,]",
            "{\"a\" 1}",
            "nul",
            "1 2",
        ] {
            assert!(canonical(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(canonical(b"\"\\u0000\""), Err(JsonbError::Nul));
        assert_eq!(canonical(b"-1e-16384"), Err(JsonbError::NumberRange));
        assert_eq!(canonical(b"0e2000000"), Ok(b"0".to_vec()));
        assert_eq!(canonical(b"1e131071").unwrap().len(), 131_072);
    }
}
