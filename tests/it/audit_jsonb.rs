//! `audit::jsonb::canonical` against the real server: generated documents (key
//! orders, duplicate keys, numbers in every syntax, escapes, Unicode, whitespace)
//! must come back from `jsonb::text` exactly as the writer predicted them.

use candystore::audit::jsonb::canonical;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use crate::helpers::TempDb;

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(""),
        Just(""),
        Just(" "),
        Just("\n  "),
        Just("\t"),
        Just("\r\n")
    ]
}

fn number() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(""), Just("-")],
        prop_oneof![Just("0".to_string()), "[1-9][0-9]{0,24}"],
        prop_oneof![Just(String::new()), "\\.[0-9]{1,24}"],
        prop_oneof![
            Just(String::new()),
            "[eE][+-]?[0-9]{1,3}",
            "[eE]-?(1[0-5][0-9]{3}|[0-9]{1,4})",
        ],
    )
        .prop_map(|(s, i, f, e)| format!("{s}{i}{f}{e}"))
}

/// One piece of a string literal's text, raw or escaped.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.:-]{1,6}",
        prop_oneof![
            Just("é"),
            Just("😀"),
            Just("中文"),
            Just("\u{7f}"),
            Just("\u{a0}"),
            Just("/"),
            Just("\u{2028}"),
            Just("\u{fffd}"),
        ]
        .prop_map(String::from),
        prop_oneof![
            Just("\\\""),
            Just("\\\\"),
            Just("\\/"),
            Just("\\b"),
            Just("\\f"),
            Just("\\n"),
            Just("\\r"),
            Just("\\t"),
        ]
        .prop_map(String::from),
        // Any BMP character but NUL and the surrogates, escaped in either case.
        (1u32..0xD800, any::<bool>()).prop_map(|(c, upper)| if upper {
            format!("\\u{c:04X}")
        } else {
            format!("\\u{c:04x}")
        }),
        (0xE000u32..0x10000).prop_map(|c| format!("\\u{c:04x}")),
        // An astral character as a surrogate pair.
        (0x10000u32..0x110000).prop_map(|c| {
            let v = c - 0x10000;
            format!(
                "\\u{:04x}\\u{:04X}",
                0xD800 + (v >> 10),
                0xDC00 + (v & 0x3ff)
            )
        }),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..5).prop_map(|p| format!("\"{}\"", p.concat()))
}

fn key() -> impl Strategy<Value = String> {
    // A small pool makes duplicates and equal lengths common.
    prop_oneof![
        prop_oneof![
            Just("\"a\""),
            Just("\"b\""),
            Just("\"aa\""),
            Just("\"ab\""),
            Just("\"B\""),
            Just("\"\\u0061\""),
            Just("\"é\""),
            Just("\"\""),
        ]
        .prop_map(String::from),
        string(),
    ]
}

fn document() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number(),
        string(),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..8).prop_map(|items| {
                let body: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", body.join(","))
            }),
            prop::collection::vec((ws(), key(), ws(), inner, ws()), 0..8).prop_map(|members| {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(a, k, b, v, c)| format!("{a}{k}{b}:{c}{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

#[tokio::test]
async fn generated_documents_are_stored_exactly_as_the_writer_predicts() {
    let db = TempDb::new(false).await;
    let client = db.client().await;
    let mut runner = TestRunner::default();
    let strategy = (ws(), document(), ws()).prop_map(|(a, d, b)| format!("{a}{d}{b}"));
    for _round in 0..4 {
        let docs: Vec<String> = (0..2_500)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect();
        let stored: Vec<String> = client
            .query_one(
                "SELECT array_agg(d::jsonb::text ORDER BY n) FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n)",
                &[&docs],
            )
            .await
            .unwrap()
            .get(0);
        for (doc, stored) in docs.iter().zip(&stored) {
            let ours = canonical(doc.as_bytes())
                .unwrap_or_else(|e| panic!("refused {doc:?}, which PostgreSQL stores: {e}"));
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                *stored,
                "the document {doc:?}"
            );
        }
    }
    db.drop_it().await;
}

#[tokio::test]
async fn documents_postgresql_refuses_are_refused_and_the_edges_it_takes_are_taken() {
    let db = TempDb::new(false).await;
    let client = db.client().await;
    for doc in [
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\udc00\\ud800\"",
        "1e131072",
        "1e131071",
        "0.0001e131075",
        "1e-16383",
        "1e-16384",
        "0.5e-16383",
        "0e200000",
        "-0e-16383",
        "1e1073741823",
        "0e1073741822",
        "01",
        "-",
        "1.",
        ".5",
        "[1,]",
        "{\"a\":1,}",
        "\"a\tb\"",
        "tru",
        "{} {}",
        "\u{feff}{}",
    ] {
        let pg = client
            .query_one("SELECT $1::text::jsonb::text", &[&doc])
            .await;
        let ours = canonical(doc.as_bytes());
        match (pg, ours) {
            (Ok(row), Ok(ours)) => assert_eq!(
                String::from_utf8(ours).unwrap(),
                row.get::<_, String>(0),
                "{doc:?}"
            ),
            (Err(_), Err(_)) => {}
            (pg, ours) => panic!(
                "{doc:?}: PostgreSQL {:?}, canonical {:?}",
                pg.map(|r| r.get::<_, String>(0)),
                ours.map(|_| ())
            ),
        }
    }
    db.drop_it().await;
}
