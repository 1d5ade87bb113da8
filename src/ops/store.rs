//! The operators' handle on either store: PostgreSQL's client, or the embedded
//! file opened beside its service (each step on it run on a blocking thread).

use std::sync::{Arc, Mutex};

use tokio_postgres::Client;

use crate::store::sqlite::SqliteError;

/// Where a command reads (and, for the dead-letter commands, writes).
pub enum Store {
    Postgres(Client),
    /// The embedded file, opened beside its service: read-only, or writing
    /// through SQLite's own lock rows that the service's one writer does not
    /// order (dead letters).
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

impl Store {
    /// The embedded file at `path`, which must exist.
    pub fn sqlite(path: &std::path::Path, writing: bool) -> Result<Store, SqliteError> {
        let conn = crate::store::sqlite::beside(path, writing)?;
        // `payload_contains` in a selection (replay's filters) is a SQL function.
        crate::store::sqlite::read::with_functions(&conn).map_err(|source| SqliteError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Store::Sqlite(Arc::new(Mutex::new(conn))))
    }
}

/// Runs `f` on the embedded file's connection, on a blocking thread.
pub(crate) async fn on_file<R, E>(
    conn: &Arc<Mutex<rusqlite::Connection>>,
    f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
) -> Result<R, E>
where
    R: Send + 'static,
    E: From<rusqlite::Error> + From<tokio::task::JoinError>,
{
    let conn = conn.clone();
    Ok(tokio::task::spawn_blocking(move || {
        let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    })
    .await??)
}
