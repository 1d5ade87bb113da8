//! The query string: every parameter of every route is validated here, before
//! any query runs, and a bad one gets a 400 problem that names it. One rule for
//! all routes: an unknown parameter is refused, and so is one given twice.

use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};

use crate::api::problem::Problem;
use crate::model::envelope::MAX_IDENT_BYTES;

pub const MAX_LIMIT: i64 = 1000;
pub use crate::model::query::{Cursor, DEFAULT_LIMIT, EventQuery, FILTERS, Paging};

/// The cursor's timestamp; a 400 problem naming `cursor` when it is not one this
/// API made.
pub(crate) fn cursor_time(c: &Cursor) -> Result<DateTime<Utc>, Problem> {
    c.time()
        .ok_or_else(|| Problem::bad_parameter("cursor", "not a cursor this API returned"))
}

/// The query string as name/value pairs; a malformed one is a 400 problem.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, Problem> {
    serde_urlencoded::from_str(query).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the query string is malformed: {e}"),
        )
    })
}

/// `limit`: 1 to MAX_LIMIT.
pub(crate) fn parse_limit(value: &str) -> Result<i64, Problem> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            Problem::bad_parameter(
                "limit",
                format!("{value:?} is not a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// The deepest `offset` served. An offset is skipped on an index, so its cost
/// grows with it; deeper pages are reached with `cursor`, which costs the same at
/// any depth.
pub const MAX_OFFSET: i64 = 100_000;

/// `offset`: 0 to [`MAX_OFFSET`].
pub(crate) fn parse_offset(value: &str) -> Result<i64, Problem> {
    value
        .parse()
        .ok()
        .filter(|n| (0..=MAX_OFFSET).contains(n))
        .ok_or_else(|| {
            Problem::bad_parameter(
                "offset",
                format!(
                    "{value:?} is not a whole number from 0 to {MAX_OFFSET} (walk further with cursor)"
                ),
            )
        })
}

/// `cursor`: a `next_cursor` this API returned.
pub(crate) fn parse_cursor(value: &str) -> Result<Cursor, Problem> {
    Cursor::decode(value)
        .ok_or_else(|| Problem::bad_parameter("cursor", "not a cursor this API returned"))
}

/// The query string's parameters, each one of `known` and given at most once, in
/// the order sent.
pub(crate) fn known_pairs(
    query: &str,
    known: &[&'static str],
) -> Result<Vec<(&'static str, String)>, Problem> {
    let mut pairs: Vec<(&'static str, String)> = Vec::new();
    for (key, value) in query_pairs(query)? {
        let name = known.iter().find(|n| **n == key).copied().ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("unknown parameter {key:?}"),
            )
        })?;
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(Problem::bad_parameter(name, "given more than once"));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

impl Paging {
    /// Takes `name` if it is a paging parameter; false if it is not one.
    pub(crate) fn take(&mut self, name: &str, value: &str) -> Result<bool, Problem> {
        match name {
            "limit" => self.limit = parse_limit(value)?,
            "offset" => self.offset = parse_offset(value)?,
            "cursor" => self.cursor = Some(parse_cursor(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The rules between the three, once all are read.
    pub(crate) fn check(&self) -> Result<(), Problem> {
        if self.cursor.is_some() && self.offset > 0 {
            return Err(Problem::bad_parameter(
                "offset",
                "cannot be combined with cursor",
            ));
        }
        Ok(())
    }

    /// Paging alone (the timelines): only `limit`, `offset` and `cursor`.
    pub(crate) fn parse(query: &str) -> Result<Self, Problem> {
        let mut p = Paging::default();
        for (name, value) in known_pairs(query, &Self::PARAMETERS)? {
            p.take(name, &value)?;
        }
        p.check()?;
        Ok(p)
    }
}

/// `start_time`, `end_time`: RFC 3339 (any offset; none is UTC) or a date
/// (`query::time_bound`: midnight UTC), as the command line takes them.
pub(crate) fn parse_time_parameter(
    name: &'static str,
    value: &str,
) -> Result<DateTime<Utc>, Problem> {
    crate::model::query::time_bound(value).ok_or_else(|| {
        Problem::bad_parameter(
            name,
            format!("{value:?} is not an RFC 3339 time or a date (YYYY-MM-DD)"),
        )
    })
}

/// An equality filter's value (`query::identifier`), as a problem naming it.
pub(crate) fn parse_identifier(name: &'static str, value: &str) -> Result<String, Problem> {
    crate::model::query::identifier(name, value).map_err(Problem::from)
}

/// `payload_contains` (`query::containment`), as a problem naming it.
pub(crate) fn parse_containment(value: &str) -> Result<serde_json::Value, Problem> {
    crate::model::query::containment(value).map_err(Problem::from)
}

/// Whether `id` could name a stored row: stored identifiers hold no NUL and at
/// most `MAX_IDENT_BYTES` (decode's rule), so anything else is a 404 without a query.
pub(crate) fn could_be_stored(id: &str) -> bool {
    !id.is_empty() && !id.contains('\0') && id.len() <= MAX_IDENT_BYTES
}

/// The filters of `GET /events` and of the live tail, as the OpenAPI document
/// states them (one list for both). Parsing and validation are `EventQuery::parse`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventFilters {
    /// only this session
    #[param(min_length = 1, max_length = 1024)]
    session_id: Option<String>,
    /// only this event type
    #[param(min_length = 1, max_length = 1024)]
    event_type: Option<String>,
    /// only this source
    #[param(min_length = 1, max_length = 1024)]
    source: Option<String>,
    /// only this target
    #[param(min_length = 1, max_length = 1024)]
    target: Option<String>,
    /// only this correlation id
    #[param(min_length = 1, max_length = 1024)]
    correlation_id: Option<String>,
    /// RFC 3339 time, or a date YYYY-MM-DD (its midnight UTC); inclusive
    #[param(format = DateTime)]
    start_time: Option<String>,
    /// RFC 3339 time, or a date YYYY-MM-DD (its midnight UTC); inclusive, not before start_time
    #[param(format = DateTime)]
    end_time: Option<String>,
    /// a JSON object the payload contains (jsonb @>), e.g. {"status":"failed"}
    #[param(min_length = 2)]
    payload_contains: Option<String>,
}

/// Every parameter `GET /events` takes.
pub const EVENT_PARAMETERS: [&str; 11] = [
    "session_id",
    "event_type",
    "source",
    "target",
    "correlation_id",
    "start_time",
    "end_time",
    "payload_contains",
    "limit",
    "offset",
    "cursor",
];

impl EventQuery {
    /// Parses and validates a query string of `GET /events`.
    pub fn parse(query: &str) -> Result<Self, Problem> {
        Self::from_pairs(known_pairs(query, &EVENT_PARAMETERS)?)
    }

    /// Validates pairs already checked by [`known_pairs`] (each known, each once).
    pub fn from_pairs(pairs: Vec<(&'static str, String)>) -> Result<Self, Problem> {
        let mut q = EventQuery::default();
        for (name, value) in pairs {
            if q.paging.take(name, &value)? {
                continue;
            }
            match name {
                "start_time" => q.start_time = Some(parse_time_parameter(name, &value)?),
                "end_time" => q.end_time = Some(parse_time_parameter(name, &value)?),
                "payload_contains" => q.payload_contains = Some(parse_containment(&value)?),
                _ => q.filters.push((name, parse_identifier(name, &value)?)),
            }
        }
        if let (Some(s), Some(e)) = (q.start_time, q.end_time)
            && s > e
        {
            return Err(Problem::bad_parameter("end_time", "is before start_time"));
        }
        q.paging.check()?;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor {
            timestamp_micros: 1_764_000_000_123_456,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "zz", "00", &"g".repeat(32)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (query, name) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("offset=-1", "offset"),
            ("start_time=yesterday", "start_time"),
            ("end_time=2026-13-01T00:00:00Z", "end_time"),
            (
                "start_time=2026-02-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
                "end_time",
            ),
            ("cursor=abc", "cursor"),
            ("session_id=", "session_id"),
            (&format!("target={}", "x".repeat(1025)), "target"),
            ("source=a&source=b", "source"),
            ("cursor=00000000000000000000000000000001&offset=5", "offset"),
            ("payload_contains=%7Bnope", "payload_contains"),
            ("payload_contains=%5B1%2C2%5D", "payload_contains"),
            ("payload_contains=42", "payload_contains"),
            (
                "payload_contains=%7B%22a%22%3A%22x%5Cu0000%22%7D",
                "payload_contains",
            ),
        ] {
            let p = EventQuery::parse(query).unwrap_err();
            assert_eq!(p.status, 400, "{query}");
            assert_eq!(p.parameter, Some(name), "{query}: {}", p.detail);
            assert!(p.detail.contains(name), "{query}: {}", p.detail);
        }
        let p = EventQuery::parse("sesion_id=x").unwrap_err();
        assert!(p.detail.contains("sesion_id"), "{}", p.detail);
    }

    #[test]
    fn a_date_is_its_midnight_utc_as_on_the_command_line() {
        let q = EventQuery::parse("start_time=2026-12-03&end_time=2026-12-04").unwrap();
        assert_eq!(
            q.start_time.unwrap().to_rfc3339(),
            "2026-12-03T00:00:00+00:00"
        );
        assert_eq!(
            q.end_time.unwrap().to_rfc3339(),
            "2026-12-04T00:00:00+00:00"
        );
        for bad in ["2026-12-32", "2026-12", "03-12-2026"] {
            let p = EventQuery::parse(&format!("start_time={bad}")).unwrap_err();
            assert_eq!(p.parameter, Some("start_time"), "{bad}");
            assert!(p.detail.contains("or a date (YYYY-MM-DD)"), "{}", p.detail);
        }
    }

    #[test]
    fn defaults_and_filters_are_read() {
        let q = EventQuery::parse("").unwrap();
        assert_eq!((q.paging.limit, q.paging.offset), (100, 0));
        let q =
            EventQuery::parse("session_id=abc-123&start_time=2026-11-20T14:00:00%2B02:00&limit=5")
                .unwrap();
        assert_eq!(q.filters, vec![("session_id", "abc-123".to_owned())]);
        assert_eq!(
            q.start_time.unwrap().to_rfc3339(),
            "2026-11-20T12:00:00+00:00"
        );
        assert_eq!(q.paging.limit, 5);
    }

    #[test]
    fn paging_alone_keeps_the_rules_of_events() {
        for (query, name) in [
            ("limit=1&limit=2", "limit"),
            ("limit=0", "limit"),
            ("offset=-1", "offset"),
            ("cursor=00000000000000000000000000000001&offset=5", "offset"),
            ("cursor=nope", "cursor"),
        ] {
            let p = Paging::parse(query).unwrap_err();
            assert_eq!(p.parameter, Some(name), "{query}: {}", p.detail);
        }
        let p = Paging::parse("session_id=x").unwrap_err();
        assert!(p.detail.contains("session_id"), "{}", p.detail);
        let p = Paging::parse("limit=7&offset=3").unwrap();
        assert_eq!((p.limit, p.offset, p.cursor), (7, 3, None));
    }
}
