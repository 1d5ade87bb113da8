//! The embedded store: every table in one SQLite file (`DATABASE_URL=sqlite:PATH`),
//! for a laptop or a small installation without a database server.
//!
//! One process owns the file: [`Sqlite::own`] takes an exclusive lock on
//! `PATH.lock` (a second instance is refused, naming the first's pid), so there
//! is one writer, a thread of its own (`write`), and commit order is `seq` order.
//! Every connection runs in WAL mode with `synchronous = FULL`: a commit has
//! returned only once its transaction is on disk, so a batch is acked only after
//! that (the same promise as PostgreSQL's). Readers run beside the writer (WAL
//! lets them), each on a blocking thread.

pub mod archive;
pub mod catalog;
pub mod read;
pub mod redact;
pub mod replay;
pub mod retention;
pub mod schema;
pub mod tree;
pub mod verify;
pub mod write;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a statement waits for the file's lock (a checkpoint, another
/// process's read-only look) before the batch is retried.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error(
        "{path} is in use by another candystore process ({holder}): an embedded store has one owner; stop that process, or give this one another DATABASE_URL"
    )]
    InUse { path: String, holder: String },
    #[error("cannot lock {path}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the embedded store {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error(
        "{path} cannot run in WAL mode (journal_mode stays {mode}): put the file on a local filesystem"
    )]
    NotWal { path: String, mode: String },
    #[error("cannot start the embedded store's writer thread")]
    Thread(#[source] std::io::Error),
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one writer (and migrations, maintenance).
    Write,
    /// The API's reads: the connection refuses to write (`query_only`).
    Read,
}

/// The file, owned by this process for as long as this value (or a clone) lives.
#[derive(Clone, Debug)]
pub struct Sqlite {
    path: PathBuf,
    /// Held open: the lock lasts while the file handle does.
    _lock: Arc<File>,
    /// Migrations applied when this process took the file.
    migrated: usize,
}

impl Sqlite {
    /// Takes the file for this process, creating it (and its tables) when it is
    /// new, and applies the migrations it has not had. Refused while another
    /// process owns it.
    pub fn own(path: &Path) -> Result<Self, SqliteError> {
        let lock = lock(path)?;
        let mut store = Sqlite {
            path: path.to_owned(),
            _lock: Arc::new(lock),
            migrated: 0,
        };
        let mut conn = store.connect(Role::Write)?;
        store.migrated = schema::migrate(&mut conn)?;
        if store.migrated > 0 {
            tracing::info!(file = %path.display(), migrations = store.migrated, "embedded store prepared");
        }
        Ok(store)
    }

    /// How many migrations [`Sqlite::own`] applied.
    pub fn migrated(&self) -> usize {
        self.migrated
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A connection with the settings every connection of ours uses.
    pub fn connect(&self, role: Role) -> Result<Connection, SqliteError> {
        let failed = |source| SqliteError::Open {
            path: self.path.display().to_string(),
            source,
        };
        let flags = match role {
            Role::Write => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            Role::Read => OpenFlags::SQLITE_OPEN_READ_WRITE,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(failed)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
        // WAL: readers never wait for the writer, nor it for them. FULL: each
        // commit syncs the log, so a returned commit survives a power cut.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(failed)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::NotWal {
                path: self.path.display().to_string(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(failed)?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(failed)?;
        if role == Role::Read {
            conn.pragma_update(None, "query_only", true)
                .map_err(failed)?;
        }
        Ok(conn)
    }
}

/// A TEXT or BLOB column's bytes: the writer keeps text that is not UTF-8 as a
/// BLOB (`write::text`), so every reader of such a column takes either.
pub fn column_bytes(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(r.get_ref(i)?.as_bytes()?.to_vec())
}

/// The same column as text, bytes that are not UTF-8 replaced (for JSON and
/// the bundle's strings).
pub fn column_text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    Ok(String::from_utf8_lossy(r.get_ref(i)?.as_bytes()?).into_owned())
}

/// A connection of a command beside the file's owner, the file not taken:
/// read-only, or `writing` through SQLite's own lock (for what no order of the
/// owner's writer depends on). The file must exist.
pub fn beside(path: &Path, writing: bool) -> Result<Connection, SqliteError> {
    let failed = |source| SqliteError::Open {
        path: path.display().to_string(),
        source,
    };
    let access = if writing {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(path, access | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(failed)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    Ok(conn)
}

/// `PATH.lock`, locked for this process (its pid written in it for the
/// message a second process gets).
fn lock(path: &Path) -> Result<File, SqliteError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let shown = path.display().to_string();
    let io = |source| SqliteError::Lock {
        path: lock_path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(SqliteError::InUse {
                path: shown,
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_of_one_file_is_refused_and_the_first_keeps_it() {
        let dir = tempdir();
        let path = dir.join("store.db");
        let first = Sqlite::own(&path).unwrap();
        let e = Sqlite::own(&path).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SqliteError::InUse { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        // The first owner still writes.
        first
            .connect(Role::Write)
            .unwrap()
            .execute_batch("INSERT INTO event_keys VALUES ('a', 'b', 1)")
            .unwrap();
        drop(first);
        // Released with the last handle.
        Sqlite::own(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_reading_connection_refuses_to_write() {
        let dir = tempdir();
        let store = Sqlite::own(&dir.join("store.db")).unwrap();
        let reader = store.connect(Role::Read).unwrap();
        let e = reader
            .execute_batch("INSERT INTO event_keys VALUES ('a', 'b', 1)")
            .unwrap_err();
        assert!(e.to_string().contains("readonly"), "{e}");
        let n: i64 = reader
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        drop((reader, store));
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "candystore-sqlite-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
