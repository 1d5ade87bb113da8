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
