//! The migrations runner against a real PostgreSQL.

use crate::helpers::TempDb;
use candystore::db;

#[tokio::test]
async fn two_processes_migrating_at_once_both_succeed() {
    let db = TempDb::new(false).await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(db::migrate(&mut a), db::migrate(&mut b));
    let (ra, rb) = (ra.expect("first runner"), rb.expect("second runner"));
    let total = db::migrations().unwrap().len();
    assert_eq!(
        ra.len() + rb.len(),
        total,
        "each migration is applied exactly once"
    );
    let n: i64 = a
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, total);
    db::check_schema(&a).await.expect("schema is current");
    // A second run is a no-op.
    assert!(db::migrate(&mut a).await.unwrap().is_empty());
    db.drop_it().await;
}

#[tokio::test]
async fn an_applied_migration_that_was_edited_is_refused() {
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    db::migrate(&mut c).await.unwrap();
    c.batch_execute("UPDATE schema_migrations SET checksum = 'abc' WHERE version = 1")
        .await
        .unwrap();
    let err = db::migrate(&mut c).await.unwrap_err().to_string();
    assert!(
        err.contains("0001_events.sql") && err.contains("edited"),
        "{err}"
    );
    assert!(db::check_schema(&c).await.is_err());
    db.drop_it().await;
}

#[tokio::test]
async fn the_schema_has_the_indexes_the_query_api_needs() {
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    db::migrate(&mut c).await.unwrap();
    let rows = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'events'",
            &[],
        )
        .await
        .unwrap();
    let defs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for leading in [
        "(session_id, \"timestamp\" DESC",
        "(event_type, \"timestamp\" DESC",
        "(source, \"timestamp\" DESC",
        "(correlation_id, \"timestamp\" DESC",
        "(\"timestamp\" DESC, seq DESC)",
        // The identity, with the partition key (ARCHITECTURE.md, "Identity").
        "(id, source, \"timestamp\")",
    ] {
        assert!(
            defs.iter().any(|d| d.contains(leading)),
            "no index on {leading}: {defs:#?}"
        );
    }
    db.drop_it().await;
}

#[tokio::test]
async fn a_migration_that_deadlocks_with_the_running_service_is_tried_again() {
    // What the seal job does while `migrate` runs 0016 on a serving instance:
    // write audit_checkpoints, then audit_seals, where 0016 alters audit_seals,
    // then audit_checkpoints. PostgreSQL rolls one of the two back.
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    db::migrate_with(&mut c, candystore::storage::PartitionInterval::Day, 15)
        .await
        .unwrap();
    let mut service = db.client().await;
    let tx = service.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE audit_checkpoints IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let migrating = tokio::spawn(async move {
        let r = db::migrate(&mut c).await.map_err(|e| e.to_string());
        (c, r)
    });
    // Let the migration take audit_seals and wait for audit_checkpoints.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let seals = tx
        .batch_execute("LOCK TABLE audit_seals IN ROW EXCLUSIVE MODE")
        .await;
    match seals {
        // The service's transaction was the one rolled back: it would retry.
        Err(e) => {
            assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
            );
            drop(tx);
        }
        // The migration was: it waits for us, then tries again.
        Ok(()) => tx.commit().await.unwrap(),
    }
    let (c, applied) = migrating.await.unwrap();
    let applied = applied.expect("the migration is tried again and applied");
    assert!(
        applied.contains(&"0016_seal_event_times.sql"),
        "{applied:?}"
    );
    db::check_schema(&c).await.expect("schema is current");
    drop((c, service));
    db.drop_it().await;
}
