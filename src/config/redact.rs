//! Secrets out of connection strings, for everything that shows one: the
//! start-up log, `/health`, configuration errors.
//!
//! A password can sit in three places of a string tokio-postgres or lapin takes:
//! the URL's user info (`user:pass@`), a URL query parameter (`?password=…`,
//! which tokio-postgres accepts), and a libpq key=value string
//! (`host=h password=…`, quoted or not). Each is replaced by `***`; the rest is
//! kept, since it is what an operator needs to see.

/// Keys whose values are secrets, in a URL query or a key=value string.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

fn is_secret_key(key: &str) -> bool {
    let key = key.trim();
    SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

/// `s` with every password it holds replaced by `***`.
///
/// ```
/// use candystore::config::redact_url;
/// assert_eq!(redact_url("amqp://guest:guest@localhost:5672/%2f"), "amqp://guest:***@localhost:5672/%2f");
/// assert_eq!(redact_url("postgres://u@db/cs?password=x"), "postgres://u@db/cs?password=***");
/// assert_eq!(redact_url("host=db password='x y'"), "host=db password=***");
/// ```
pub fn redact_url(s: &str) -> String {
    match s.find("://") {
        Some(i) => redact_as_url(s, i + 3),
        None => redact_key_values(s),
    }
}

fn redact_as_url(url: &str, scheme_end: usize) -> String {
    let (before_query, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    let rest = &before_query[scheme_end..];
    // The user info ends at the last '@' before the path (a password may hold '@').
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            out.push_str(&before_query[..scheme_end]);
            match rest[..at].find(':') {
                Some(colon) => {
                    out.push_str(&rest[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(&rest[..at]),
            }
            out.push_str(&rest[at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let (query, fragment) = match query.find('#') {
            Some(h) => (&query[..h], Some(&query[h..])),
            None => (query, None),
        };
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_key(&percent_decoded(k)) => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
        out.push_str(fragment.unwrap_or(""));
    }
    out
}

/// A query key with `%XX` decoded, so `pass%77ord` is seen for what it is.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A libpq key=value string (`host=h password='a b'`) with secret values
/// replaced. Values are quoted with `'` and escaped with `\`, as libpq reads them.
fn redact_key_values(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        // Whitespace between pairs.
        if b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        // The key, up to '=' or whitespace.
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        out.push_str(key);
        // Spaces around '='.
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b'=' {
            continue;
        }
        out.push_str(&s[i..=j]);
        i = j + 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
        }
        // The value: quoted (with escapes) or up to whitespace.
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(b.len());
        }
        // An escape may have stepped into a character of several bytes.
        while i < b.len() && !s.is_char_boundary(i) {
            i += 1;
        }
        if is_secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&s[value_start..i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn every_form_of_password_is_hidden_and_the_rest_kept() {
        for (given, shown) in [
            (
                "amqp://guest:guest@localhost:5672/%2f",
                "amqp://guest:***@localhost:5672/%2f",
            ),
            (
                "postgres://postgres@localhost/db",
                "postgres://postgres@localhost/db",
            ),
            (
                "postgres://u:p@ss:w@rd@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://:hunter2@h/db", "postgres://:***@h/db"),
            (
                "postgres://u@h/db?sslmode=require&password=hunter2",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            (
                "postgres://u@h/db?PASSWORD=hunter2&application_name=x",
                "postgres://u@h/db?PASSWORD=***&application_name=x",
            ),
            (
                "postgres://u@h/db?pass%77ord=hunter2",
                "postgres://u@h/db?pass%77ord=***",
            ),
            (
                "postgres://u@h/db?sslpassword=hunter2",
                "postgres://u@h/db?sslpassword=***",
            ),
            (
                "postgres://u:x@h/db?password=hunter2#frag",
                "postgres://u:***@h/db?password=***#frag",
            ),
            (
                "host=h user=u password=hunter2 dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "host=h password = 'hunter 2' dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("password='it\\'s hunter2' host=h", "password=*** host=h"),
            ("host=h sslpassword=hunter2", "host=h sslpassword=***"),
            ("password=", "password=***"),
        ] {
            assert_eq!(redact_url(given), shown, "{given}");
            assert!(!redact_url(given).contains("hunter2"), "{given}");
        }
    }

    #[test]
    fn odd_strings_never_panic() {
        for s in [
            "",
            "=",
            "'",
            "password='",
            "a\\",
            "x://",
            "x://@",
            "x://?",
            "x://?%",
            "x://?%4",
            "?password=1",
        ] {
            let _ = redact_url(s);
        }
    }
}
