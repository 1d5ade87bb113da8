//! The embedded store's `payload_contains` (`store::contains`) against
//! PostgreSQL's `@>` on the real server: generated pairs of documents from a
//! small vocabulary (so that about half contain each other), numbers in several
//! spellings, nested arrays and objects, repeated keys, escapes.

use candystore::store::contains::{Pattern, contains_text};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use crate::helpers::TempDb;

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_owned()),
        Just("1.0".to_owned()),
        Just("1e0".to_owned()),
        Just("10E-1".to_owned()),
        Just("-0".to_owned()),
        Just("0.00".to_owned()),
        Just("2".to_owned()),
        Just("2.50".to_owned()),
        Just("\"1\"".to_owned()),
        Just("\"a\"".to_owned()),
        Just("\"\\u0061\"".to_owned()),
        Just("\"é\"".to_owned()),
        Just("\"\\u00e9\"".to_owned()),
        Just("\"\\n\"".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"a\"".to_owned()),
        Just("\"b\"".to_owned()),
        Just("\"\\u0061\"".to_owned()),
        Just("\"ab\"".to_owned()),
        Just("\"é\"".to_owned()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|m| {
                let members: Vec<String> =
                    m.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn object() -> impl Strategy<Value = String> {
    prop::collection::vec((key(), value()), 0..4).prop_map(|m| {
        let members: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", members.join(", "))
    })
}

#[tokio::test]
async fn containment_agrees_with_postgresql_on_generated_documents() {
    let db = TempDb::new(false).await;
    let client = db.client().await;
    let statement = client
        .prepare("SELECT $1::text::jsonb @> $2::text::jsonb")
        .await
        .unwrap();
    let mut runner = TestRunner::deterministic();
    let pair = (prop_oneof![object(), value()], object());
    let mut held = 0;
    let cases = 3000;
    for _ in 0..cases {
        let (doc, pattern) = pair.new_tree(&mut runner).unwrap().current();
        for (a, b) in [(&doc, &pattern), (&pattern, &doc)] {
            let pg: bool = client.query_one(&statement, &[a, b]).await.unwrap().get(0);
            let ours = contains_text(a.as_bytes(), b.as_bytes()).unwrap();
            assert_eq!(ours, pg, "{a} @> {b}");
            // As the store tests a stored (canonical) payload: its texts looked
            // for first, then parsed.
            let stored = candystore::audit::jsonb::canonical(a.as_bytes()).unwrap();
            let prefiltered = Pattern::new(b.as_bytes()).unwrap().matches(&stored);
            assert_eq!(prefiltered, pg, "{a} @> {b}, prefiltered");
            held += usize::from(pg);
        }
    }
    drop(client);
    db.drop_it().await;
    // The vocabulary makes containment common enough to test both answers.
    assert!(
        held > cases / 5 && held < cases * 2 - cases / 5,
        "{held} of {} pairs contain",
        cases * 2
    );
}

/// A `payload_contains` page examines at most `CONTAINS_SCAN_ROWS` rows: past
/// them it ends early with a cursor where the next page goes on, so a rare
/// match far back is reached by following cursors, each request bounded; a
/// total past what was examined says it is an estimate.
#[test]
fn a_containment_page_is_a_bounded_scan_and_its_cursor_goes_on_where_it_stopped() {
    use candystore::api::query::EventQuery;
    use candystore::store::sqlite::read::{CONTAINS_SCAN_ROWS, PageBounds, page};
    let file = crate::support::TempSqlite::new();
    let store = candystore::store::sqlite::Sqlite::own(&file.path).unwrap();
    let mut conn = store
        .connect(candystore::store::sqlite::Role::Write)
        .unwrap();
    let n = CONTAINS_SCAN_ROWS as i64 + 5_000;
    let tx = conn.transaction().unwrap();
    for i in 0..n {
        // The oldest row holds the rare document; one row in ten the common one.
        let payload = match i {
            0 => r#"{"rare": true}"#.to_owned(),
            i if i % 10 == 0 => format!(r#"{{"i": {i}, "k": "common"}}"#),
            i => format!(r#"{{"i": {i}, "k": "other"}}"#),
        };
        tx.execute(
            "INSERT INTO events (id, event_type, source, routing_key, exchange, \"timestamp\", \
             received_at, stored_at, payload, generation, envelope, properties) \
             VALUES (?1, 't', 's', 'k', 'x', ?2, ?2, ?2, ?3, 1, '{}', '{}')",
            rusqlite::params![
                format!("e{i}"),
                1_700_000_000_000_000i64 + i * 1_000_000,
                payload
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let bounds = PageBounds {
        exact_up_to: 1000,
        max_bytes: 8 << 20,
        overhead_bytes: 0,
    };
    let ask = |query: &str| page(&conn, &EventQuery::parse(query).unwrap(), bounds).unwrap();

    let first = ask("payload_contains={\"rare\":true}&limit=10");
    assert!(first.events.is_empty());
    assert!(first.has_more, "more rows than one scan examines");
    let cursor = first.next_cursor.expect("a cursor past the rows examined");
    let next = ask(&format!(
        "payload_contains={{\"rare\":true}}&limit=10&cursor={}",
        cursor.encode()
    ));
    let ids: Vec<&str> = next.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e0"], "found where the first page stopped");
    assert!(!next.has_more);

    let common = ask("payload_contains={\"k\":\"common\"}&limit=10");
    assert_eq!(common.events.len(), 10);
    assert!(common.has_more);
    assert_eq!(common.events[0].id, format!("e{}", (n - 1) / 10 * 10));
    assert!(common.total_is_estimate);
    let want = n / 10;
    assert!(
        (want * 8 / 10..=want * 12 / 10).contains(&common.total),
        "{} estimated, {want} held",
        common.total
    );
}
