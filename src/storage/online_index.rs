//! An index of `events` built while the service writes: the online migrations'
//! way to add one (the tail's `(txid, seq)`, the type-and-source index).
//!
//! `CREATE INDEX` on a partitioned table builds every partition's index in one
//! transaction that blocks writes for the whole build (hours on a production
//! table). Instead: each partition's index is built `CONCURRENTLY` (writes go on),
//! then the parent's index is created `ON ONLY` the parent and each partition's
//! attached to it; it is valid once all are. The maintenance lock is held
//! throughout, so no partition appears half-way (a partition made later takes the
//! parent's indexes). A run that failed leaves at most an invalid index behind,
//! which the next run drops and builds again.

use tokio_postgres::Client;

use super::StorageError;
use super::maintain::MAINTENANCE_LOCK;

/// One index of `events`: the parent's name, each partition's (`{partition}_{suffix}`)
/// and what it indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineIndex {
    pub parent: &'static str,
    pub suffix: &'static str,
    /// The column list, as `CREATE INDEX … ON t (…)` takes it.
    pub columns: &'static str,
}

impl OnlineIndex {
    /// The statements, as text (an online migration's checksum is its text).
    pub fn ddl(&self) -> String {
        let OnlineIndex {
            parent,
            suffix,
            columns,
        } = self;
        format!(
            "CREATE INDEX CONCURRENTLY {{partition}}_{suffix} ON {{partition}} ({columns}); \
             CREATE INDEX {parent} ON ONLY events ({columns}); \
             ALTER INDEX {parent} ATTACH PARTITION {{partition}}_{suffix}"
        )
    }

    /// Builds the index unless it is there and valid, under the maintenance lock.
    pub async fn build(&self, client: &mut Client) -> Result<(), StorageError> {
        client.batch_execute(&crate::db::worker_settings()).await?;
        // Index builds wait for writers' transactions; no lock wait is short here.
        client.batch_execute("SET lock_timeout = 0").await?;
        // Tried rather than waited for, for the reason `schema::migrate_with` gives.
        while !client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
            .await?
            .get::<_, bool>(0)
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let result = self.build_locked(client).await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
            .await;
        result
    }

    async fn build_locked(&self, client: &mut Client) -> Result<(), StorageError> {
        let partitions: Vec<String> = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'events'::regclass ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for p in &partitions {
            let index = format!("{p}_{}", self.suffix);
            match index_valid(client, &index).await? {
                Some(true) => continue,
                Some(false) => {
                    client
                        .batch_execute(&format!("DROP INDEX CONCURRENTLY {index}"))
                        .await?
                }
                None => {}
            }
            let started = std::time::Instant::now();
            client
                .batch_execute(&format!(
                    "CREATE INDEX CONCURRENTLY {index} ON {p} ({})",
                    self.columns
                ))
                .await?;
            tracing::info!(
                partition = %p,
                index = self.parent,
                seconds = started.elapsed().as_secs_f64(),
                "partition's index built"
            );
        }
        // The parent's index and the attachments lock `events`: each try waits a
        // second at most, so readers and writers queued behind it wait no longer,
        // and tries again.
        let mut attempt = 0;
        loop {
            match self.attach(client, &partitions).await {
                Ok(()) => break,
                Err(e) if attempt < 60 && is_busy(&e) => {
                    attempt += 1;
                    tracing::info!(
                        attempt,
                        index = self.parent,
                        "attaching: the table is busy; trying again"
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if index_valid(client, self.parent).await? != Some(true) {
            return Err(StorageError::Migration(format!(
                "{} is not valid after attaching every partition's index",
                self.parent
            )));
        }
        Ok(())
    }

    async fn attach(&self, client: &mut Client, partitions: &[String]) -> Result<(), StorageError> {
        let OnlineIndex {
            parent,
            suffix,
            columns,
        } = self;
        // The parent's index, then each partition's attached in a transaction of
        // its own: the step never holds one partition's lock while it waits for
        // another's. In one transaction it did, and a read planning over the
        // partitions in its own order could deadlock with it; PostgreSQL then
        // cancelled the read, and the API answered 503 during an online migration
        // (clean-clone run 22 of 2026-12-06). The parent stays invalid, unused by
        // the planner, until its last partition is attached.
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
        tx.batch_execute(&format!(
            "CREATE INDEX IF NOT EXISTS {parent} ON ONLY events ({columns})"
        ))
        .await?;
        tx.commit().await?;
        for p in partitions {
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
            let attached: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = $1::text::regclass \
                     AND inhparent = $2::text::regclass)",
                    &[&format!("{p}_{suffix}"), parent],
                )
                .await?
                .get(0);
            if !attached {
                tx.batch_execute(&format!(
                    "ALTER INDEX {parent} ATTACH PARTITION {p}_{suffix}"
                ))
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Whether a step failed on a lock it waited its `lock_timeout` for.
pub(super) fn is_busy(e: &StorageError) -> bool {
    matches!(e, StorageError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE))
}

/// Whether an index exists, and if so whether it is valid.
pub(super) async fn index_valid(client: &Client, name: &str) -> Result<Option<bool>, StorageError> {
    Ok(client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The type-and-source index (online migration 0021): a rare type with a source it
/// rarely meets is found by one descent per partition, where the type's index alone
/// walked every event of the type for the few from that source (docs/queries.md).
pub const TYPE_SOURCE: OnlineIndex = OnlineIndex {
    parent: "events_type_source_idx",
    suffix: "type_source_idx",
    columns: "event_type, source, \"timestamp\" DESC, seq DESC",
};
