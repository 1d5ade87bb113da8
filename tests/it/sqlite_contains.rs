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
