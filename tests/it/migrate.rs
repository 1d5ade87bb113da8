//! The migrations runner against a real PostgreSQL.

use crate::helpers::TempDb;
use candystore::schema;
use candystore::storage::{PartitionInterval, Range, Table, partition};
use chrono::Utc;

#[tokio::test]
async fn two_processes_migrating_at_once_both_succeed() {
    let db = TempDb::new(false).await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(schema::migrate(&mut a), schema::migrate(&mut b));
    let (ra, rb) = (ra.expect("first runner"), rb.expect("second runner"));
    let total = schema::migrations().unwrap().len();
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
    schema::check_schema(&a).await.expect("schema is current");
    // A second run is a no-op.
    assert!(schema::migrate(&mut a).await.unwrap().is_empty());
    db.drop_it().await;
}

#[tokio::test]
async fn an_applied_migration_that_was_edited_is_refused() {
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    schema::migrate(&mut c).await.unwrap();
    c.batch_execute("UPDATE schema_migrations SET checksum = 'abc' WHERE version = 1")
        .await
        .unwrap();
    let err = schema::migrate(&mut c).await.unwrap_err().to_string();
    assert!(
        err.contains("0001_events.sql") && err.contains("edited"),
        "{err}"
    );
    assert!(schema::check_schema(&c).await.is_err());
    db.drop_it().await;
}

#[tokio::test]
async fn the_schema_has_the_indexes_the_query_api_needs() {
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    schema::migrate(&mut c).await.unwrap();
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
        "(event_type, source, \"timestamp\" DESC",
        "(source, \"timestamp\" DESC",
        "(correlation_id, \"timestamp\" DESC",
        "(\"timestamp\" DESC, seq DESC)",
        // The identity, with the partition key (docs/identity.md).
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
async fn the_type_and_source_index_is_built_online_on_every_partition_and_on_those_made_later() {
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    // Partitioned (0009) and up to the migration before the index.
    schema::migrate_with(&mut c, PartitionInterval::Day, 20)
        .await
        .unwrap();
    let day = |d: i64| {
        let start = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            - chrono::Duration::days(d);
        Range {
            start,
            end: start + chrono::Duration::days(1),
        }
    };
    for d in [3, 2] {
        partition::create(&mut c, Table::Events, day(d))
            .await
            .unwrap()
            .expect("a new partition");
    }
    c.batch_execute(
        "INSERT INTO events (id, event_type, source, routing_key, exchange, \"timestamp\", received_at, \
         payload, generation, envelope, properties) \
         SELECT 'e' || g, 'evt.' || (g % 3), 'svc-' || (g % 2), 'r', 'x', now() - interval '2 days', now(), \
         '{}', 3, '{}', '{}' FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();
    let applied = schema::migrate(&mut c).await.unwrap();
    assert!(
        applied.contains(&"0021_events_type_source (online)"),
        "{applied:?}"
    );
    // A partition made after the migration takes the parent's index.
    partition::create(&mut c, Table::Events, day(1))
        .await
        .unwrap()
        .expect("a new partition");
    let (valid, attached, partitions): (bool, i64, i64) = {
        let r = c
            .query_one(
                "SELECT i.indisvalid, \
                   (SELECT count(*) FROM pg_inherits h JOIN pg_index x ON x.indexrelid = h.inhrelid \
                     WHERE h.inhparent = 'events_type_source_idx'::regclass AND x.indisvalid), \
                   (SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass) \
                 FROM pg_index i WHERE i.indexrelid = 'events_type_source_idx'::regclass",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(valid, "the parent's index is valid");
    // The default partition, the three days made here and those the partitioning made.
    assert!(partitions >= 4, "{partitions}");
    assert_eq!(
        attached, partitions,
        "every partition has a valid index attached"
    );
    // The planner takes it for a type with a source (over the type's index, once
    // tables this small are not simply read whole).
    c.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    let plan: String = c
        .query("EXPLAIN (COSTS OFF) SELECT seq FROM events WHERE event_type = 'evt.1' AND source = 'svc-1' \
                ORDER BY \"timestamp\" DESC, seq DESC LIMIT 5", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("type_source_idx"), "{plan}");
    db.drop_it().await;
}

#[tokio::test]
async fn a_migration_that_deadlocks_with_the_running_service_is_tried_again() {
    // What the seal job does while `migrate` runs 0016 on a serving instance:
    // write audit_checkpoints, then audit_seals, where 0016 alters audit_seals,
    // then audit_checkpoints. PostgreSQL rolls one of the two back.
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    schema::migrate_with(&mut c, candystore::storage::PartitionInterval::Day, 15)
        .await
        .unwrap();
    let mut service = db.client().await;
    let tx = service.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE audit_checkpoints IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let migrating = tokio::spawn(async move {
        let r = schema::migrate(&mut c).await.map_err(|e| e.to_string());
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
    schema::check_schema(&c).await.expect("schema is current");
    drop((c, service));
    db.drop_it().await;
}

#[tokio::test]
async fn reads_planning_over_every_partition_never_deadlock_with_the_online_index_step() {
    // Clean-clone run 22: the API's read planned over the partitions while the
    // online step attached their indexes in one transaction; PostgreSQL found a
    // deadlock, cancelled the read, and the API answered 503.
    let db = TempDb::new(false).await;
    let mut c = db.client().await;
    schema::migrate_with(&mut c, PartitionInterval::Day, 20)
        .await
        .unwrap();
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    for d in 1..=40 {
        let start = today - chrono::Duration::days(d);
        let range = Range {
            start,
            end: start + chrono::Duration::days(1),
        };
        partition::create(&mut c, Table::Events, range)
            .await
            .unwrap();
    }
    c.batch_execute(
        "INSERT INTO events (id, event_type, source, routing_key, exchange, \"timestamp\", received_at, \
         payload, generation, envelope, properties) \
         SELECT 'e' || g, 'evt.' || (g % 3), 'svc-' || (g % 2), 'r', 'x', \
         now() - (g % 40 + 1) * interval '1 day', now(), '{}', 3, '{}', '{}' FROM generate_series(1, 400) g",
    )
    .await
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let reader = db.client().await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let (mut reads, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // What `/events?event_type=…&source=…` plans: every partition and its indexes.
                match reader
                    .query(
                        "SELECT seq FROM events WHERE event_type = 'evt.1' AND source = 'svc-1' \
                         ORDER BY \"timestamp\" DESC, seq DESC LIMIT 5",
                        &[],
                    )
                    .await
                {
                    Ok(_) => reads += 1,
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            (reads, failures)
        }));
    }
    use candystore::storage::online_index::OnlineIndex;
    let probe = |parent, suffix| OnlineIndex {
        parent,
        suffix,
        columns: "source, \"timestamp\" DESC",
    };
    for step in [
        probe("events_probe_a_idx", "probe_a_idx"),
        probe("events_probe_b_idx", "probe_b_idx"),
        probe("events_probe_c_idx", "probe_c_idx"),
    ] {
        step.build(&mut c).await.expect("the online step");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        let (reads, failures) = reader.await.unwrap();
        assert!(reads > 0, "the reader ran");
        assert!(failures.is_empty(), "reads failed: {failures:#?}");
    }
    db.drop_it().await;
}
