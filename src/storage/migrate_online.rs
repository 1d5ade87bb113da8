//! Moving a plain `events` (or `dead_letter`) table to the partitioned layout
//! while the service keeps ingesting and answering.
//!
//! 1. Build `<table>_new`, partitioned, with every index, and a partition for each
//!    interval the old rows fall in (plus the intervals ahead).
//! 2. A statement trigger on the old table copies every row inserted from then on
//!    into the new one (`ON CONFLICT DO NOTHING`). Creating it waits for the
//!    writers' open transactions, so afterwards every row is either below the
//!    highest `seq` seen then, or mirrored.
//! 3. Copy the rows up to that `seq` in chunks of [`CHUNK`], each its own short
//!    transaction: ingest and the API go on, and an interrupted run resumes by
//!    starting again (rows already copied are skipped).
//! 4. Count both sides up to that `seq`: they must agree.
//! 5. The swap, one transaction: lock the old table (ingest and readers wait),
//!    check the mirrored tail agrees, carry over the grants, drop the old table,
//!    rename the new one and its indexes, continue the sequence. The wait is the
//!    lock plus a few catalog updates: milliseconds, or as long as the longest
//!    statement already running on the table (the API's are bounded at 5 s).
//!
//! Writers use `ON CONFLICT DO NOTHING` without naming a key, so the same
//! statement works on either layout and ingest needs no restart.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::partition::{self, PartitionInterval};
use super::{StorageError, Table, schema};

/// Rows per copy transaction: a few hundred milliseconds of work each.
pub const CHUNK: i64 = 20_000;

/// What the migration of one table did.
#[derive(Debug, Default)]
pub struct Migrated {
    pub table: &'static str,
    pub rows: i64,
    pub partitions: usize,
    pub swap_ms: f64,
    pub seconds: f64,
}

/// Partitions `events` and `dead_letter`, each unless it already is.
pub async fn run(
    client: &mut Client,
    interval: PartitionInterval,
) -> Result<Vec<Migrated>, StorageError> {
    client.batch_execute(&crate::db::worker_settings()).await?;
    let mut out = Vec::new();
    for table in Table::ALL {
        if super::is_partitioned(client, table).await? {
            continue;
        }
        out.push(partition_table(client, table, interval).await?);
    }
    Ok(out)
}

async fn partition_table(
    client: &mut Client,
    table: Table,
    interval: PartitionInterval,
) -> Result<Migrated, StorageError> {
    let started = Instant::now();
    let name = table.name();
    let new = format!("{name}_new");
    let columns = table.columns();
    let time = table.time_column();
    tracing::info!(table = name, "partitioning: building the new table");

    // 1. The new table, unless an interrupted run left it.
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&new])
        .await?
        .get(0);
    if !exists {
        let tx = client.transaction().await?;
        tx.batch_execute(match table {
            Table::Events => schema::EVENTS,
            Table::DeadLetter => schema::DEAD_LETTER,
        })
        .await?;
        tx.batch_execute(&schema::lz4(table)).await?;
        tx.commit().await?;
    }
    let days = client
        .query(
            &format!(
                "SELECT DISTINCT date_trunc('day', {time} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' FROM {name}"
            ),
            &[],
        )
        .await?;
    let now = Utc::now();
    let mut times: Vec<DateTime<Utc>> = days.iter().map(|r| r.get(0)).collect();
    times.extend(super::maintain::ahead(now, interval));
    times.sort();
    let mut created = 0;
    let mut existing = partition::ranges_in(client, &new).await?;
    for t in times {
        if let Some(range) = partition::range_for(t, interval, &existing) {
            partition::create_in(client, table, &new, range).await?;
            existing.push(range);
            created += 1;
        }
    }

    // 2. The mirror.
    client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION candystore_mirror_{name}() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
             BEGIN INSERT INTO {new} ({columns}) SELECT {columns} FROM mirrored ON CONFLICT DO NOTHING; RETURN NULL; END $fn$; \
             DROP TRIGGER IF EXISTS candystore_mirror ON {name}; \
             CREATE TRIGGER candystore_mirror AFTER INSERT ON {name} REFERENCING NEW TABLE AS mirrored \
             FOR EACH STATEMENT EXECUTE FUNCTION candystore_mirror_{name}()"
        ))
        .await?;
    let upto: i64 = client
        .query_one(&format!("SELECT coalesce(max(seq), 0) FROM {name}"), &[])
        .await?
        .get(0);

    // 3. The copy, in chunks.
    tracing::info!(table = name, upto, "partitioning: copying rows");
    let copy = client
        .prepare(&format!(
            "INSERT INTO {new} ({columns}) SELECT {columns} FROM {name} WHERE seq > $1 AND seq <= $2 ON CONFLICT DO NOTHING"
        ))
        .await?;
    let mut from = 0i64;
    let mut last_log = Instant::now();
    while from < upto {
        let to = (from + CHUNK).min(upto);
        client.execute(&copy, &[&from, &to]).await?;
        from = to;
        if last_log.elapsed().as_secs() >= 5 {
            tracing::info!(
                table = name,
                copied_up_to_seq = from,
                of = upto,
                "partitioning: copying"
            );
            last_log = Instant::now();
        }
    }

    // 4. Both sides agree below `upto`.
    let count = |t: &str| format!("SELECT count(*) FROM {t} WHERE seq <= $1");
    let old: i64 = client.query_one(&count(name), &[&upto]).await?.get(0);
    let copied: i64 = client.query_one(&count(&new), &[&upto]).await?.get(0);
    if old != copied {
        return Err(StorageError::Migration(format!(
            "{name}: {old} rows up to seq {upto}, but {copied} in {new}; nothing was swapped, run `candystore migrate` again"
        )));
    }

    // The new partitions were filled in bulk: analysed before they serve, so no
    // plan over them is blind (ANALYZE of the parent covers every partition). Not
    // when empty (a new database): statistics of nothing would read as current
    // while the first rows arrive (`api::sizes`).
    if old > 0 {
        super::statistics::analyze(client, &new).await?;
    }

    // 5. The swap, retried while a lock is not granted in time.
    let mut attempt = 0;
    let swap_ms = loop {
        attempt += 1;
        match swap(client, table, upto).await {
            Ok(ms) => break ms,
            Err(e) if e.is_retryable() && attempt < 10 => {
                tracing::warn!(table = name, attempt, error = %e, "partitioning: the swap waited too long for a lock; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let m = Migrated {
        table: name,
        rows: old,
        partitions: created,
        swap_ms,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        table = name,
        rows = m.rows,
        partitions = m.partitions,
        swap_ms = m.swap_ms,
        seconds = m.seconds,
        "partitioned"
    );
    Ok(m)
}

async fn swap(client: &mut Client, table: Table, upto: i64) -> Result<f64, StorageError> {
    let name = table.name();
    let new = format!("{name}_new");
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
        .await?;
    let locked = Instant::now();
    let tail = |t: &str| format!("SELECT count(*) FROM {t} WHERE seq > $1");
    let old: i64 = tx.query_one(&tail(name), &[&upto]).await?.get(0);
    let mirrored: i64 = tx.query_one(&tail(&new), &[&upto]).await?.get(0);
    if old != mirrored {
        return Err(StorageError::Migration(format!(
            "{name}: {old} rows above seq {upto}, but {mirrored} mirrored into {new}"
        )));
    }
    // The grants of the old table (a read-only role's SELECT, say).
    let grants = tx
        .query(
            "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
             FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner",
            &[&name],
        )
        .await?;
    for g in grants {
        let (privilege, grantee): (String, String) = (g.get(0), g.get(1));
        tx.batch_execute(&format!("GRANT {privilege} ON {new} TO {grantee}"))
            .await?;
    }
    let next: i64 = tx
        .query_one(
            &format!(
                "SELECT greatest((SELECT coalesce(max(seq), 0) FROM {name}), \
                 (SELECT last_value FROM pg_sequences WHERE schemaname || '.' || sequencename = pg_get_serial_sequence($1, 'seq'))) + 1"
            ),
            &[&name],
        )
        .await?
        .get(0);
    tx.batch_execute(&format!(
        "DROP TABLE {name}; DROP FUNCTION candystore_mirror_{name}(); ALTER TABLE {new} RENAME TO {name}"
    ))
    .await?;
    let renames = match table {
        Table::Events => schema::EVENTS_RENAMES,
        Table::DeadLetter => schema::DEAD_LETTER_RENAMES,
    };
    for (kind, from, to) in renames {
        let sql = if *kind == "CONSTRAINT" {
            format!("ALTER TABLE {name} RENAME CONSTRAINT {from} TO {to}")
        } else {
            format!("ALTER INDEX {from} RENAME TO {to}")
        };
        tx.batch_execute(&sql).await?;
    }
    tx.execute(
        &format!("SELECT setval(pg_get_serial_sequence('{name}', 'seq'), $1, false)"),
        &[&next],
    )
    .await?;
    tx.commit().await?;
    Ok(locked.elapsed().as_secs_f64() * 1e3)
}
