//! The event filters and the SQL they become, shared by the API's routes and the
//! operators' tools (`ops::replay`): a page position ([`Cursor`]), paging, the
//! filters of `GET /events` ([`EventQuery`]) and their WHERE clause, the
//! parameters of a statement being built ([`SqlParams`]), and a JSON column read
//! as its text ([`JsonText`]). Reading them from a query string, with a problem
//! naming each bad parameter, is `api::query::params`.

use chrono::{DateTime, Utc};
use postgres_types::{FromSql, Type, accepts};
use tokio_postgres::types::ToSql;

use crate::model::hex;

/// Events a page holds when the request does not say.
pub const DEFAULT_LIMIT: i64 = 100;

/// A position in the (timestamp DESC, seq DESC) order, opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp_micros: i64,
    pub seq: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.timestamp_micros.to_be_bytes());
        bytes[8..].copy_from_slice(&self.seq.to_be_bytes());
        hex::encode(&bytes)
    }

    /// The cursor's timestamp. Stored times lie in years 1 to 9999 (decode's
    /// rule), so a time outside them is in a cursor this service did not make.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        use chrono::Datelike;
        DateTime::<Utc>::from_timestamp_micros(self.timestamp_micros)
            .filter(|t| (1..=9999).contains(&t.year()))
    }

    pub fn decode(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Cursor {
            timestamp_micros: i64::from_be_bytes(bytes[..8].try_into().ok()?),
            seq: i64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// `limit`, `offset` and `cursor`: where a page starts and how long it is.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub limit: i64,
    pub offset: i64,
    pub cursor: Option<Cursor>,
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            limit: DEFAULT_LIMIT,
            offset: 0,
            cursor: None,
        }
    }
}

impl Paging {
    pub const PARAMETERS: [&'static str; 3] = ["limit", "offset", "cursor"];
}

/// The validated parameters of `GET /events` (and, without paging, of the live tail).
#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    pub filters: Vec<(&'static str, String)>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub paging: Paging,
    /// A JSON object the payload must contain (jsonb `@>`).
    pub payload_contains: Option<serde_json::Value>,
}

/// A filter value no stored event could match: which filter, and why. The API
/// answers it as a problem naming the parameter; the CLI names its option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct InvalidFilter {
    pub name: &'static str,
    pub reason: String,
}

impl InvalidFilter {
    fn new(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            reason: reason.into(),
        }
    }
}

/// A time bound (`start_time`, `end_time`, and the command line's `--since`,
/// `--until`, `--before`): an RFC 3339 time (any offset; none is UTC), or a date
/// `YYYY-MM-DD`, which is that day's midnight UTC. One rule for the API and the CLI.
pub fn time_bound(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    crate::model::envelope::parse_time(value)
}

/// An equality filter's value: what a stored identifier could be.
pub fn identifier(name: &'static str, value: &str) -> Result<String, InvalidFilter> {
    if value.is_empty() || value.contains('\0') {
        return Err(InvalidFilter::new(name, "must be non-empty text"));
    }
    if value.len() > crate::model::envelope::MAX_IDENT_BYTES {
        return Err(InvalidFilter::new(
            name,
            "is longer than 1024 bytes, which no stored value is",
        ));
    }
    Ok(value.to_owned())
}

/// `payload_contains`: a JSON object, matched by jsonb containment. PostgreSQL's
/// jsonb cannot hold `\u0000`, so a document with one could match nothing: it is
/// refused here rather than failing in the database.
pub fn containment(value: &str) -> Result<serde_json::Value, InvalidFilter> {
    const NAME: &str = "payload_contains";
    let doc: serde_json::Value = serde_json::from_str(value)
        .map_err(|e| InvalidFilter::new(NAME, format!("is not JSON: {e}")))?;
    if !doc.is_object() {
        return Err(InvalidFilter::new(NAME, "must be a JSON object"));
    }
    if crate::model::envelope::json_has_nul(&doc) {
        return Err(InvalidFilter::new(
            NAME,
            "contains \\u0000, which no stored payload can hold",
        ));
    }
    Ok(doc)
}

/// The equality filters, each on a column that leads an index.
pub const FILTERS: [&str; 5] = [
    "session_id",
    "event_type",
    "source",
    "target",
    "correlation_id",
];

impl EventQuery {
    /// The WHERE clause (without paging), its parameters pushed onto `params`.
    pub fn conditions(&self, params: &mut SqlParams) -> String {
        let mut clauses = Vec::new();
        for (name, value) in &self.filters {
            clauses.push(format!("{name} = {}", params.push(value.clone())));
        }
        if let Some(doc) = &self.payload_contains {
            clauses.push(format!("payload @> {}", params.push(doc.clone())));
        }
        if let Some(t) = self.start_time {
            clauses.push(format!("\"timestamp\" >= {}", params.push(t)));
        }
        if let Some(t) = self.end_time {
            clauses.push(format!("\"timestamp\" <= {}", params.push(t)));
        }
        if clauses.is_empty() {
            "TRUE".to_owned()
        } else {
            clauses.join(" AND ")
        }
    }
}

/// The parameters of a statement being built, numbered as they are pushed.
#[derive(Default)]
pub struct SqlParams(Vec<Box<dyn ToSql + Sync + Send>>);

impl SqlParams {
    /// Adds a parameter; returns its placeholder (`$n`).
    pub fn push(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(value));
        format!("${}", self.0.len())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first `n` parameters, as a query takes them.
    pub fn refs(&self, n: usize) -> Vec<&(dyn ToSql + Sync)> {
        self.0[..n]
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    pub fn all(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.refs(self.0.len())
    }
}

/// A `json` or `jsonb` column as its JSON text, borrowed from the row.
pub struct JsonText<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary form is a version byte (1) and the text.
            match raw.split_first() {
                Some((1, text)) => Ok(JsonText(text)),
                _ => Err("unsupported jsonb version".into()),
            }
        } else {
            Ok(JsonText(raw))
        }
    }

    accepts!(JSON, JSONB);
}
