//! `candystore dead-letters list|show|replay|purge`: what an operator does with
//! deliveries that could not be stored as events.
//!
//! Replay publishes a dead letter's exact bytes again, with its routing key and
//! properties, to its exchange (or another), with publisher confirms, and records
//! when and how often. Purge deletes dead letters (and their fingerprints, so a
//! later identical delivery is kept again); it never touches `events`.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use tokio_postgres::types::ToSql;

pub use super::store::Store;
use super::store::on_file;
use crate::source::publish::{RepublishError, Republisher};

/// Which dead letters a command acts on. Empty selects all.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ids: Vec<i64>,
    pub reason: Option<String>,
    pub routing_key: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.reason.is_none()
            && self.routing_key.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// The WHERE clause and its parameters, for the embedded store (times in
    /// microseconds, ids as a JSON array).
    fn sqlite_clause(&self) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        let mut clauses = vec!["1".to_owned()];
        let mut params: Vec<Value> = Vec::new();
        let mut push = |sql: &str, v: Value| {
            params.push(v);
            clauses.push(sql.replace('?', &format!("?{}", params.len())));
        };
        if !self.ids.is_empty() {
            let ids = serde_json::to_string(&self.ids).expect("numbers serialize");
            push("seq IN (SELECT value FROM json_each(?))", Value::Text(ids));
        }
        if let Some(r) = &self.reason {
            push("reason = ?", Value::Text(r.clone()));
        }
        if let Some(k) = &self.routing_key {
            push("routing_key = ?", Value::Text(k.clone()));
        }
        if let Some(t) = self.since {
            push("received_at >= ?", Value::Integer(t.timestamp_micros()));
        }
        if let Some(t) = self.until {
            push("received_at <= ?", Value::Integer(t.timestamp_micros()));
        }
        (clauses.join(" AND "), params)
    }

    /// The WHERE clause and its parameters.
    fn clause(&self) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut clauses = vec!["TRUE".to_owned()];
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut push = |sql: &str, v: Box<dyn ToSql + Sync + Send>| {
            params.push(v);
            clauses.push(sql.replace('?', &format!("${}", params.len())));
        };
        if !self.ids.is_empty() {
            push("seq = ANY(?)", Box::new(self.ids.clone()));
        }
        if let Some(r) = &self.reason {
            push("reason = ?", Box::new(r.clone()));
        }
        if let Some(k) = &self.routing_key {
            push("routing_key = ?", Box::new(k.clone()));
        }
        if let Some(t) = self.since {
            push("received_at >= ?", Box::new(t));
        }
        if let Some(t) = self.until {
            push("received_at <= ?", Box::new(t));
        }
        (clauses.join(" AND "), params)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("database")]
    Database(#[from] tokio_postgres::Error),
    #[error("embedded store")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Open(#[from] crate::store::sqlite::SqliteError),
    #[error("embedded store: its thread failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("dead letter {id}")]
    Publish {
        id: i64,
        #[source]
        source: RepublishError,
    },
    #[error("no dead letter with id {0}")]
    NotFound(i64),
}

/// A dead letter as a command lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub exchange: String,
    pub routing_key: String,
    pub reason: String,
    pub detail: String,
    pub body_bytes: i32,
    pub replay_count: i32,
    pub replayed_at: Option<DateTime<Utc>>,
}

const LISTED: &str = "seq, received_at, exchange, routing_key, reason, detail, \
                      octet_length(body) AS body_bytes, replay_count, replayed_at";

fn listed(row: &tokio_postgres::Row) -> Listed {
    Listed {
        id: row.get("seq"),
        received_at: row.get("received_at"),
        exchange: row.get("exchange"),
        routing_key: row.get("routing_key"),
        reason: row.get("reason"),
        detail: row.get("detail"),
        body_bytes: row.get("body_bytes"),
        replay_count: row.get("replay_count"),
        replayed_at: row.get("replayed_at"),
    }
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// The dead letters matching `filter`, newest first, at most `limit`.
pub async fn list(store: &Store, filter: &Filter, limit: i64) -> Result<Vec<Listed>, OpsError> {
    let client = match store {
        Store::Postgres(c) => c,
        Store::Sqlite(conn) => {
            let (clause, params) = filter.sqlite_clause();
            return on_file(conn, move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {LISTED_SQLITE} FROM dead_letter WHERE {clause} \
                     ORDER BY received_at DESC, seq DESC LIMIT {limit}"
                ))?;
                st.query_map(rusqlite::params_from_iter(params), listed_sqlite)?
                    .collect()
            })
            .await;
        }
    };
    let (clause, params) = filter.clause();
    let rows = client
        .query(
            &format!(
                "SELECT {LISTED} FROM dead_letter WHERE {clause} \
                 ORDER BY received_at DESC, seq DESC LIMIT {limit}"
            ),
            &refs(&params),
        )
        .await?;
    Ok(rows.iter().map(listed).collect())
}

/// One dead letter whole: its listing, properties and body.
#[derive(Debug, Clone)]
pub struct Shown {
    pub listed: Listed,
    pub properties: serde_json::Value,
    pub body: Vec<u8>,
}

pub async fn show(store: &Store, id: i64) -> Result<Shown, OpsError> {
    let client = match store {
        Store::Postgres(c) => c,
        Store::Sqlite(conn) => {
            let shown = on_file::<_, OpsError>(conn, move |c| {
                c.query_row(
                    &format!(
                        "SELECT {LISTED_SQLITE}, properties, body FROM dead_letter WHERE seq = ?1"
                    ),
                    [id],
                    |r| {
                        let properties: String = r.get(9)?;
                        Ok(Shown {
                            listed: listed_sqlite(r)?,
                            properties: serde_json::from_str(&properties)
                                .unwrap_or(serde_json::Value::String(properties)),
                            body: r.get(10)?,
                        })
                    },
                )
                .optional()
            })
            .await?;
            return shown.ok_or(OpsError::NotFound(id));
        }
    };
    let row = client
        .query_opt(
            &format!("SELECT {LISTED}, properties, body FROM dead_letter WHERE seq = $1"),
            &[&id],
        )
        .await?
        .ok_or(OpsError::NotFound(id))?;
    Ok(Shown {
        listed: listed(&row),
        properties: row.get("properties"),
        body: row.get("body"),
    })
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Published and recorded.
    pub replayed: Vec<i64>,
    /// Replayed before, left alone (without `force`).
    pub skipped: Vec<i64>,
}

/// Publishes each selected dead letter again, oldest first: the exact body, its
/// routing key and properties, to `exchange` or the one it came from; waits for
/// each confirm, then records the replay. Dead letters replayed before are skipped
/// unless `force`. Stops at the first failure; what was replayed stays recorded.
/// Holds one body at a time: the selection is read without bodies, and each body
/// is read just before it is published.
pub async fn replay(
    store: &Store,
    publisher: &Republisher,
    filter: &Filter,
    exchange: Option<&str>,
    force: bool,
) -> Result<Replayed, OpsError> {
    let client = match store {
        Store::Postgres(c) => c,
        Store::Sqlite(conn) => {
            return replay_sqlite(conn, publisher, filter, exchange, force).await;
        }
    };
    let (clause, params) = filter.clause();
    let rows = client
        .query(
            &format!(
                "SELECT seq, received_at, exchange, routing_key, properties, replay_count \
                 FROM dead_letter WHERE {clause} ORDER BY received_at, seq"
            ),
            &refs(&params),
        )
        .await?;
    for id in &filter.ids {
        if !rows.iter().any(|r| r.get::<_, i64>("seq") == *id) {
            return Err(OpsError::NotFound(*id));
        }
    }
    let mut done = Replayed::default();
    for row in rows {
        let id: i64 = row.get("seq");
        if row.get::<_, i32>("replay_count") > 0 && !force {
            done.skipped.push(id);
            continue;
        }
        let properties: serde_json::Value = row.get("properties");
        let to = exchange.map_or_else(|| row.get::<_, String>("exchange"), str::to_owned);
        let routing_key: String = row.get("routing_key");
        let received_at: DateTime<Utc> = row.get("received_at");
        let body: Vec<u8> = client
            .query_one(
                "SELECT body FROM dead_letter WHERE seq = $1 AND received_at = $2",
                &[&id, &received_at],
            )
            .await?
            .get(0);
        publisher
            .publish(&to, &routing_key, &body, &properties, None)
            .await
            .map_err(|source| OpsError::Publish { id, source })?;
        drop(body);
        client
            .execute(
                "UPDATE dead_letter SET replay_count = replay_count + 1, replayed_at = now() \
                 WHERE seq = $1 AND received_at = $2",
                &[&id, &received_at],
            )
            .await?;
        done.replayed.push(id);
    }
    Ok(done)
}

/// Deletes the selected dead letters and their fingerprints in one transaction
/// (or, with `dry_run`, only lists them). Returns what was (or would be) deleted.
pub async fn purge(
    store: &mut Store,
    filter: &Filter,
    dry_run: bool,
) -> Result<Vec<Listed>, OpsError> {
    let client = match store {
        Store::Postgres(c) => c,
        Store::Sqlite(conn) => {
            let (clause, params) = filter.sqlite_clause();
            return on_file(conn, move |c| {
                let tx = c.transaction()?;
                let listed: Vec<Listed> = tx
                    .prepare(&format!(
                        "SELECT {LISTED_SQLITE} FROM dead_letter WHERE {clause} ORDER BY received_at, seq"
                    ))?
                    .query_map(rusqlite::params_from_iter(params.iter()), listed_sqlite)?
                    .collect::<rusqlite::Result<_>>()?;
                if !dry_run {
                    // The fingerprint is the row's own column here: it goes with it.
                    tx.execute(
                        &format!("DELETE FROM dead_letter WHERE {clause}"),
                        rusqlite::params_from_iter(params.iter()),
                    )?;
                }
                tx.commit()?;
                Ok(listed)
            })
            .await;
        }
    };
    let (clause, params) = filter.clause();
    if dry_run {
        let rows = client
            .query(
                &format!(
                    "SELECT {LISTED} FROM dead_letter WHERE {clause} ORDER BY received_at, seq"
                ),
                &refs(&params),
            )
            .await?;
        return Ok(rows.iter().map(listed).collect());
    }
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "WITH gone AS (DELETE FROM dead_letter WHERE {clause} RETURNING *), \
                 keys AS (DELETE FROM dead_letter_keys k USING gone \
                          WHERE k.fingerprint = gone.fingerprint AND k.received_at = gone.received_at) \
                 SELECT {LISTED} FROM gone ORDER BY received_at, seq"
            ),
            &refs(&params),
        )
        .await?;
    tx.commit().await?;
    Ok(rows.iter().map(listed).collect())
}

const LISTED_SQLITE: &str = "seq, received_at, exchange, routing_key, reason, detail, \
                             length(body), replay_count, replayed_at";

fn micros(t: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t).ok_or(rusqlite::Error::IntegralValueOutOfRange(1, t))
}

/// A row of [`LISTED_SQLITE`].
fn listed_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Listed> {
    Ok(Listed {
        id: r.get(0)?,
        received_at: micros(r.get(1)?)?,
        exchange: r.get(2)?,
        routing_key: r.get(3)?,
        reason: r.get(4)?,
        detail: r.get(5)?,
        body_bytes: r.get(6)?,
        replay_count: r.get(7)?,
        replayed_at: r.get::<_, Option<i64>>(8)?.map(micros).transpose()?,
    })
}

/// [`replay`] on the embedded store: the same steps, each read and record on
/// the file's connection off the runtime.
async fn replay_sqlite(
    conn: &Arc<Mutex<rusqlite::Connection>>,
    publisher: &Republisher,
    filter: &Filter,
    exchange: Option<&str>,
    force: bool,
) -> Result<Replayed, OpsError> {
    let (clause, params) = filter.sqlite_clause();
    let rows: Vec<(i64, String, String, String, i32)> = on_file::<_, OpsError>(conn, move |c| {
        c.prepare(&format!(
            "SELECT seq, exchange, routing_key, properties, replay_count \
             FROM dead_letter WHERE {clause} ORDER BY received_at, seq"
        ))?
        .query_map(rusqlite::params_from_iter(params), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect()
    })
    .await?;
    for id in &filter.ids {
        if !rows.iter().any(|r| r.0 == *id) {
            return Err(OpsError::NotFound(*id));
        }
    }
    let mut done = Replayed::default();
    for (id, from, routing_key, properties, count) in rows {
        if count > 0 && !force {
            done.skipped.push(id);
            continue;
        }
        let properties: serde_json::Value =
            serde_json::from_str(&properties).unwrap_or(serde_json::Value::Null);
        let to = exchange.map_or(from, str::to_owned);
        let body: Vec<u8> = on_file::<_, OpsError>(conn, move |c| {
            c.query_row("SELECT body FROM dead_letter WHERE seq = ?1", [id], |r| {
                r.get(0)
            })
        })
        .await?;
        publisher
            .publish(&to, &routing_key, &body, &properties, None)
            .await
            .map_err(|source| OpsError::Publish { id, source })?;
        drop(body);
        on_file::<_, OpsError>(conn, move |c| {
            c.execute(
                "UPDATE dead_letter SET replay_count = replay_count + 1, replayed_at = ?2 WHERE seq = ?1",
                rusqlite::params![id, Utc::now().timestamp_micros()],
            )
        })
        .await?;
        done.replayed.push(id);
    }
    Ok(done)
}
