//! The schema and its migrations, in one registry: the files in `sql/`, embedded
//! at build time and keyed by file name. A `.sql` file is run as it is; a
//! `.online` file declares the step in code it runs (`step: partition`), so
//! nothing here matches on a migration's number.
//!
//! Applied in version order, each file in its own transaction and recorded in
//! `schema_migrations` (version, name, checksum, time). A session advisory lock
//! serialises concurrent runners, so two processes migrating at once both succeed.
//! An applied file whose text changed is refused: history is not rewritten under a
//! running audit trail. It sits above `storage`, whose code the online steps run.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::db::DbError;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Key of the advisory lock held while migrating ("candystr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6361_6e64_7973_7472;

/// One migration: a file of `sql/` run in one transaction, or a step in code
/// that runs in many while the service keeps working (`online`).
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
    pub checksum: String,
    /// Runs in code, in many transactions; the running service works before,
    /// during and after it, so `serve` starts while it is pending (and says so).
    online: Option<OnlineStep>,
}

/// What an online migration runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OnlineStep {
    /// Partitioning `events` and `dead_letter` (`storage::migrate_online`).
    Partition,
    /// The live tail's `(txid, seq)` index (`storage::tail_index`).
    TailIndex,
    /// An index of `events` built partition by partition (`storage::online_index`).
    Index(crate::storage::online_index::OnlineIndex),
}

impl OnlineStep {
    /// Every step, by the name a `.online` file declares.
    const NAMED: &[(&str, OnlineStep)] = &[
        ("partition", OnlineStep::Partition),
        ("tail-index", OnlineStep::TailIndex),
        (
            "type-source-index",
            OnlineStep::Index(crate::storage::online_index::TYPE_SOURCE),
        ),
    ];

    /// The step a `.online` file declares in its one `step: NAME` line.
    fn declared(file: &str, text: &str) -> Result<OnlineStep, DbError> {
        let bad = |reason: String| DbError::BadFile {
            name: file.to_owned(),
            reason,
        };
        let mut names = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("step:"))
            .map(str::trim);
        let name = names
            .next()
            .ok_or_else(|| bad("it declares no `step: NAME` line".to_owned()))?;
        if names.next().is_some() {
            return Err(bad("it declares more than one step".to_owned()));
        }
        Self::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, step)| *step)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::NAMED.iter().map(|(n, _)| *n).collect();
                bad(format!(
                    "no online step is named {name:?} (known: {})",
                    known.join(", ")
                ))
            })
    }

    /// Its statements as text: their checksum is the migration's.
    fn text(self) -> String {
        match self {
            OnlineStep::Partition => format!(
                "{}{}",
                crate::storage::schema::EVENTS,
                crate::storage::schema::DEAD_LETTER
            ),
            OnlineStep::TailIndex => crate::storage::tail_index::DDL.to_owned(),
            OnlineStep::Index(index) => index.ddl(),
        }
    }

    async fn run(
        self,
        client: &mut Client,
        interval: crate::storage::PartitionInterval,
    ) -> Result<(), crate::storage::StorageError> {
        match self {
            OnlineStep::Partition => crate::storage::migrate_online::run(client, interval)
                .await
                .map(drop),
            OnlineStep::TailIndex => crate::storage::tail_index::run(client).await,
            OnlineStep::Index(index) => index.build(client).await,
        }
    }
}

/// The embedded migrations, in order.
pub fn migrations() -> Result<Vec<Migration>, DbError> {
    static REGISTRY: std::sync::OnceLock<Result<Vec<Migration>, String>> =
        std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(|| registry(MIGRATIONS).map_err(|e| e.to_string()))
        .clone()
        .map_err(DbError::Registry)
}

/// The migrations of `files` (file name, text), in version order.
fn registry(files: &[(&'static str, &'static str)]) -> Result<Vec<Migration>, DbError> {
    let mut all = Vec::with_capacity(files.len());
    for (file, text) in files {
        let digits: String = file.chars().take_while(char::is_ascii_digit).collect();
        let version = digits
            .parse()
            .map_err(|_| DbError::BadName((*file).to_owned()))?;
        all.push(match file.strip_suffix(".online") {
            // The ledger names an online migration as it always has.
            Some(stem) => {
                let step = OnlineStep::declared(file, text)?;
                Migration {
                    version,
                    name: String::leak(format!("{stem} (online)")),
                    sql: "",
                    checksum: checksum(&step.text()),
                    online: Some(step),
                }
            }
            None => Migration {
                version,
                name: file,
                sql: text,
                checksum: checksum(text),
                online: None,
            },
        });
    }
    all.sort_by_key(|m| m.version);
    if let Some(w) = all.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(DbError::BadFile {
            name: w[1].name.to_owned(),
            reason: format!("its number is also {}'s", w[0].name),
        });
    }
    Ok(all)
}

fn checksum(sql: &str) -> String {
    crate::model::hex::encode(&Sha256::digest(sql.as_bytes()))
}

const LEDGER: &str = r#"
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    bigint PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"#;

/// Applies pending migrations, with partitions of a day. Returns the names
/// applied by this call.
pub async fn migrate(client: &mut Client) -> Result<Vec<&'static str>, DbError> {
    migrate_with(client, crate::storage::PartitionInterval::Day, i64::MAX).await
}

/// Applies pending migrations up to version `upto`, cutting partitions by
/// `interval` when the online partitioning runs.
pub async fn migrate_with(
    client: &mut Client,
    interval: crate::storage::PartitionInterval,
    upto: i64,
) -> Result<Vec<&'static str>, DbError> {
    // Waiting in `pg_advisory_lock` would be a transaction that the other
    // runner's `CREATE INDEX CONCURRENTLY` (migration 0010) waits for in turn: a
    // deadlock. Trying again every 100 ms leaves no such transaction open.
    while !client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?
        .get::<_, bool>(0)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let all: Vec<Migration> = migrations()?
        .into_iter()
        .filter(|m| m.version <= upto)
        .collect();
    let result = migrate_locked(client, &all, interval).await;
    // The lock also ends with the session; unlocking keeps a shared connection clean.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(
    client: &mut Client,
    all: &[Migration],
    interval: crate::storage::PartitionInterval,
) -> Result<Vec<&'static str>, DbError> {
    client.batch_execute(LEDGER).await?;
    let applied = applied(client).await?;
    verify_checksums(all, &applied)?;
    let mut done = Vec::new();
    for m in all
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
    {
        if let Some(step) = m.online {
            step.run(client, interval)
                .await
                .map_err(|e| DbError::Online {
                    name: m.name.to_owned(),
                    reason: crate::telemetry::error_chain(&e),
                })?;
            client
                .execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &m.checksum],
                )
                .await?;
            tracing::info!(migration = m.name, "migration applied");
            done.push(m.name);
            continue;
        }
        // A migration run while the service serves can deadlock with it (an
        // ALTER of two tables the seal job writes in the other order): PostgreSQL
        // rolls one side back, and a migration is one transaction, so it is
        // simply tried again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match apply(client, m).await {
                Err(DbError::Migration { source, .. })
                    if attempt < MIGRATION_ATTEMPTS
                        && source.code()
                            == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    tracing::warn!(
                        migration = m.name,
                        attempt,
                        "migration deadlocked with the running service; trying again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt as u64))
                        .await;
                }
                other => break other?,
            }
        }
        tracing::info!(migration = m.name, "migration applied");
        done.push(m.name);
    }
    Ok(done)
}

/// Times a plain migration is tried when it deadlocks with the running service.
const MIGRATION_ATTEMPTS: u32 = 5;

/// One plain migration and its ledger row, in one transaction.
async fn apply(client: &mut Client, m: &Migration) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    tx.batch_execute(m.sql)
        .await
        .map_err(|source| DbError::Migration {
            name: m.name.to_owned(),
            source,
        })?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[&m.version, &m.name, &m.checksum],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn applied(client: &Client) -> Result<Vec<(i64, String, String)>, DbError> {
    let rows = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

fn verify_checksums(all: &[Migration], applied: &[(i64, String, String)]) -> Result<(), DbError> {
    for (version, name, sum) in applied {
        if let Some(m) = all.iter().find(|m| m.version == *version)
            && m.checksum != *sum
        {
            return Err(DbError::Edited {
                name: name.clone(),
                applied: sum.clone(),
                file: m.checksum.clone(),
            });
        }
    }
    Ok(())
}

/// Checks, without changing anything, that every migration is applied unedited.
pub async fn check_schema(client: &Client) -> Result<(), DbError> {
    let all = migrations()?;
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Err(DbError::Pending(all.len()));
    }
    let applied = applied(client).await?;
    verify_checksums(&all, &applied)?;
    let pending: Vec<&Migration> = all
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
        .collect();
    // The service runs on either side of an online migration, so only the others
    // stop it, and only those before the first pending online one: the ones after
    // it are applied by the same `migrate`, once the online step is through, and
    // add nothing `serve` needs (docs/storage.md, "Migrations").
    let first_online = pending
        .iter()
        .position(|m| m.online.is_some())
        .unwrap_or(pending.len());
    let blocking = pending[..first_online]
        .iter()
        .filter(|m| m.online.is_none())
        .count();
    if blocking > 0 {
        return Err(DbError::Pending(pending.len()));
    }
    for m in pending {
        tracing::warn!(
            migration = m.name,
            "an online migration is pending: run `candystore migrate` (the service keeps working meanwhile)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_and_in_order() {
        let all = migrations().unwrap();
        assert!(all.len() >= 2);
        assert!(all.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(all[0].name, "0001_events.sql");
    }

    #[test]
    fn each_online_file_runs_the_step_it_declares() {
        let all = migrations().unwrap();
        let step = |name: &str| all.iter().find(|m| m.name == name).unwrap().online;
        assert_eq!(
            step("0009_partition_by_time (online)"),
            Some(OnlineStep::Partition)
        );
        assert_eq!(
            step("0010_events_txid (online)"),
            Some(OnlineStep::TailIndex)
        );
        assert_eq!(
            step("0021_events_type_source (online)"),
            Some(OnlineStep::Index(crate::storage::online_index::TYPE_SOURCE))
        );
        assert_eq!(step("0011_dead_letter_replays.sql"), None);
        // Every step is declared by exactly one file.
        for (name, s) in OnlineStep::NAMED {
            let n = all.iter().filter(|m| m.online == Some(*s)).count();
            assert_eq!(n, 1, "step {name} is declared by {n} files");
        }
    }

    #[test]
    fn an_online_file_naming_no_known_step_is_refused_naming_the_file() {
        for (text, says) in [
            (
                "-- comment\nstep: reindex-everything\n",
                "no online step is named \"reindex-everything\"",
            ),
            ("-- no step here\n", "declares no `step: NAME` line"),
            ("step: partition\nstep: tail-index\n", "more than one step"),
        ] {
            let err = registry(&[("0023_new.online", text)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("0023_new.online") && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn two_files_with_one_number_are_refused() {
        let err = registry(&[
            ("0005_a.sql", "SELECT 1"),
            ("0005_b.online", "step: partition"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("0005_b (online)") && err.contains("0005_a.sql"),
            "{err}"
        );
    }

    #[test]
    fn an_edited_migration_is_refused() {
        let all = migrations().unwrap();
        let applied = vec![(all[0].version, all[0].name.to_owned(), "0000".to_owned())];
        let err = verify_checksums(&all, &applied).unwrap_err();
        assert!(
            err.to_string().contains("was edited after it was applied"),
            "{err}"
        );
    }
}
