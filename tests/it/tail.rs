//! The live tail when writers commit out of order: no event skipped, none sent
//! twice, with one stream and with a stream resumed by `Last-Event-ID`.

use std::collections::HashSet;
use std::time::Duration;

use candystore::app::AppOptions;
use serde_json::json;

use crate::helpers::{
    SSE_WAIT, ShortStream, SseId, TestApp, connect, read_sse, read_sse_within, spawn_app,
    spawn_app_with,
};

/// Inserts one event the way a writer does (the row's `txid` is its transaction).
async fn insert(c: &tokio_postgres::Client, id: &str) {
    c.execute(
        "INSERT INTO events (id, event_type, source, routing_key, exchange, \"timestamp\", received_at, \
         payload, generation, envelope, properties) \
         VALUES ($1, 'tail', 'svc', 'tail', 'x', now(), now(), '{}', 1, '{}', '{}')",
        &[&id],
    )
    .await
    .unwrap();
}

async fn open_stream(app: &TestApp, last_event_id: Option<SseId>) -> reqwest::Response {
    let mut req = app.http.get(app.api("/events/stream"));
    if let Some((txid, seq)) = last_event_id {
        req = req.header("last-event-id", format!("{txid}-{seq}"));
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res
}

/// What a stream sends within `wait` (ids of events), when nothing more is expected.
async fn nothing_within(res: &mut reqwest::Response, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, res.chunk()).await {
        let text = String::from_utf8_lossy(&chunk).into_owned();
        got.extend(
            text.lines()
                .filter(|l| l.starts_with("data: "))
                .map(str::to_owned),
        );
    }
    got
}

#[tokio::test]
async fn an_event_whose_transaction_commits_last_is_sent_and_nothing_after_it_is_skipped() {
    let app = spawn_app().await;
    let mut stream = open_stream(&app, None).await;
    // Let the stream take its place at the head before anything is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (early, late) = (connect(&app.db_url).await, connect(&app.db_url).await);
    // `early` begins first and takes the lower seq; `late` takes a higher seq and
    // commits first. Then one more event commits on its own.
    early.batch_execute("BEGIN").await.unwrap();
    insert(&early, "early").await;
    late.batch_execute("BEGIN").await.unwrap();
    insert(&late, "late").await;
    late.batch_execute("COMMIT").await.unwrap();
    insert(&app.db, "after").await;
    // Readers reading `seq > last` would send `late` and `after` now and never
    // `early`. The tail holds them back while `early`'s transaction runs.
    let sent = nothing_within(&mut stream, Duration::from_secs(1)).await;
    assert!(
        sent.is_empty(),
        "sent while an older transaction runs: {sent:?}"
    );
    early.batch_execute("COMMIT").await.unwrap();
    let got = read_sse(stream, 3).await;
    let ids: Vec<&str> = got.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["early", "late", "after"], "transaction order");

    // Resumed after `early`, a new stream sends exactly the other two.
    let resumed = open_stream(&app, Some(got[0].0)).await;
    let rest = read_sse(resumed, 2).await;
    let ids: Vec<&str> = rest
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["late", "after"]);
}

#[tokio::test]
async fn four_writers_committing_in_any_order_leave_no_gap_and_no_repeat_in_the_stream() {
    // Four writers and small batches: thousands of transactions that overlap and
    // commit out of `seq` order.
    let app = spawn_app_with(
        &[("WRITE_CONCURRENCY", "4"), ("BATCH_SIZE", "5")],
        AppOptions::default(),
    )
    .await;
    // Both clients start at the head before anything is published: a client
    // that opened its first stream while publishing ran would start past the
    // events already stored, and wait for them in vain (the failure seen once
    // in a clean-clone run: "events arrive in time: Elapsed").
    let stream = open_stream(&app, None).await;
    let first_hop = open_stream(&app, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    const N: usize = 3000;
    let publishing = async {
        for i in 0..N {
            let body =
                serde_json::to_vec(&json!({"id": format!("w-{i}"), "event_type": "w"})).unwrap();
            app.publish("w", &body).await;
        }
    };
    // Meanwhile a second client reconnects every 300 events with Last-Event-ID.
    let hopping = async {
        let mut seen = Vec::new();
        let mut last: Option<SseId> = None;
        let mut next = Some(first_hop);
        while seen.len() < N {
            let res = match next.take() {
                Some(res) => res,
                None => open_stream(&app, last).await,
            };
            let want = (N - seen.len()).min(300);
            let mut part = read_fully(&app, res, want, "a resumed stream", last).await;
            part.truncate(want);
            same_as_stored(&app, &part, last, "a resumed stream").await;
            last = part.last().map(|(id, _)| *id);
            seen.extend(part);
        }
        seen
    };
    let (_, got, hopped) = tokio::join!(
        publishing,
        read_fully(&app, stream, N, "one stream", None),
        hopping
    );
    same_as_stored(&app, &got, None, "one stream").await;
    for (name, events) in [("one stream", got), ("a resumed stream", hopped)] {
        let ids: Vec<&str> = events
            .iter()
            .map(|(_, e)| e["id"].as_str().unwrap())
            .collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), N, "{name}: {} events", ids.len());
        assert_eq!(unique.len(), N, "{name}: an event was sent twice");
        assert!(
            events.windows(2).all(|w| w[0].0 < w[1].0),
            "{name}: positions increase"
        );
    }
    let stored: i64 = app.count("events").await;
    assert_eq!(stored, N as i64);
    // The stream can have been correct only if writers really overlapped.
    assert!(app.metric("candystore_batches_committed_total").await > 100.0);
}

/// Checks that `part`, events a stream sent after `from` (`None`: from the
/// start), are every stored row from there to its last event, in order: all of
/// them were final when sent, so the store holds no other. If not, says which
/// rows the stream left out or sent that are not there.
async fn same_as_stored(
    app: &TestApp,
    part: &[(SseId, serde_json::Value)],
    from: Option<SseId>,
    name: &str,
) {
    let Some(((to_txid, to_seq), _)) = part.last() else {
        return;
    };
    let (from_txid, from_seq) = from.unwrap_or((0, 0));
    let rows = app
        .db
        .query(
            "SELECT txid, seq, stored_at::text, tableoid::regclass::text, xmin::text FROM events \
             WHERE (txid, seq) > ($1, $2) AND (txid, seq) <= ($3, $4) ORDER BY txid, seq",
            &[&from_txid, &from_seq, to_txid, to_seq],
        )
        .await
        .unwrap();
    let stored: Vec<SseId> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let sent: Vec<SseId> = part.iter().map(|(id, _)| *id).collect();
    if stored != sent {
        let sent_set: HashSet<SseId> = sent.iter().copied().collect();
        let stored_set: HashSet<SseId> = stored.iter().copied().collect();
        let left_out: Vec<String> = rows
            .iter()
            .filter(|r| !sent_set.contains(&(r.get(0), r.get(1))))
            .map(|r| {
                format!(
                    "({}, {}) stored at {} in {} by xmin {}",
                    r.get::<_, i64>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                    r.get::<_, String>(4)
                )
            })
            .collect();
        let not_stored: Vec<&SseId> = sent.iter().filter(|id| !stored_set.contains(id)).collect();
        panic!(
            "{name} from {from:?} sent {} events up to {:?}, the store holds {} there; \
             left out: {left_out:?}; sent and not stored: {not_stored:?}; sent: {sent:?}",
            sent.len(),
            (to_txid, to_seq),
            stored.len()
        );
    }
}

/// `n` events of a stream opened at `from` (`Last-Event-ID`; `None` for the
/// head); if they do not come, the failure says what the store held meanwhile,
/// so a stall is told from slow ingest.
async fn read_fully(
    app: &TestApp,
    res: reqwest::Response,
    n: usize,
    name: &str,
    from: Option<SseId>,
) -> Vec<(SseId, serde_json::Value)> {
    match read_sse_within(res, n, SSE_WAIT).await {
        Ok(events) => events,
        Err(short) => panic!(
            "{name} from {from:?}: {short}; {}",
            store_state(app, &short, from).await
        ),
    }
}

/// What the store holds past the last event a short stream sent (or past where
/// it resumed, if it sent none): all rows, and those the tail may read (below
/// its horizon).
async fn store_state(app: &TestApp, short: &ShortStream, from: Option<SseId>) -> String {
    let (txid, seq) = short
        .got
        .last()
        .map(|(id, _)| *id)
        .or(from)
        .unwrap_or((0, 0));
    let row = app
        .db
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE (txid, seq) > ($1, $2)), \
                   count(*) FILTER (WHERE (txid, seq) > ($1, $2) AND txid < {horizon}), \
                   max(txid), {horizon} FROM events",
                horizon = candystore::db::HORIZON
            ),
            &[&txid, &seq],
        )
        .await
        .unwrap();
    let running = app
        .db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND backend_xid IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    format!(
        "the store holds {} events, {} past the last sent ({} of them below the horizon), \
         the newest txid {:?}, the horizon {:?}, {} transactions of this database running",
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
        row.get::<_, Option<i64>>(3),
        row.get::<_, Option<i64>>(4),
        running.get::<_, i64>(0),
    )
}

/// A read up to a position known final (a head, or a position an earlier read
/// returned) gets every row up to it even while the horizon is held below it.
/// The horizon can dip for a moment below a position read before (a transaction
/// of another database that ended between a statement's snapshot and its look at
/// `pg_locks` is counted), and a catch-up that the dip cut short went on from its
/// bound: clean-clone run 7, a resumed stream skipped two events. Here a
/// transaction of the tail's database that holds an id and writes nothing holds
/// the horizon below the bound, as the dip does.
#[tokio::test]
async fn a_catch_up_to_a_final_position_reads_every_row_up_to_it_whatever_the_horizon_says_now() {
    use candystore::api::tail::{Position, TailSource, read_after};
    let app = spawn_app().await;
    insert(&app.db, "before").await;
    let open = connect(&app.db_url).await;
    open.batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    insert(&app.db, "after").await;
    let (before, after) = (
        position_of(&app, "before").await,
        position_of(&app, "after").await,
    );
    let pool = TailSource::Postgres(
        candystore::db::read_pool(candystore::db::pg_config(&app.db_url).unwrap(), 1).unwrap(),
    );
    let (events, cut_short) = read_after(&pool, Position::default(), Some(after), None)
        .await
        .unwrap();
    let read: Vec<Position> = events.iter().map(|e| e.pos).collect();
    assert_eq!(read, [before, after]);
    assert!(!cut_short);
    // Unbounded, the horizon decides: "after" is not final while that
    // transaction runs (it may still write below it).
    let (events, _) = read_after(&pool, Position::default(), None, None)
        .await
        .unwrap();
    let read: Vec<Position> = events.iter().map(|e| e.pos).collect();
    assert_eq!(read, [before]);
    open.batch_execute("ROLLBACK").await.unwrap();
}

/// The tail position of the stored event `id`.
async fn position_of(app: &TestApp, id: &str) -> candystore::api::tail::Position {
    let row = app
        .db
        .query_one("SELECT txid, seq FROM events WHERE id = $1", &[&id])
        .await
        .unwrap();
    candystore::api::tail::Position {
        txid: row.get(0),
        seq: row.get(1),
    }
}

/// Opens a transaction in another database of the server with `begin`, and
/// checks an event stored meanwhile is sent while it still runs.
async fn not_held_back_by_another_database_running(begin: &str) {
    let app = spawn_app().await;
    let mut stream = open_stream(&app, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = crate::helpers::TempDb::new(false).await;
    let elsewhere = other.client().await;
    elsewhere.batch_execute(begin).await.unwrap();
    insert(&app.db, "meanwhile").await;
    // Sent while the other database's transaction still runs.
    let sent = nothing_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        sent.iter().any(|l| l.contains("\"meanwhile\"")),
        "held back by another database's transaction: {sent:?}"
    );
    elsewhere.batch_execute("ROLLBACK").await.unwrap();
    drop(elsewhere);
    other.drop_it().await;
}

#[tokio::test]
async fn a_long_write_in_another_database_of_the_server_does_not_hold_the_tail_back() {
    not_held_back_by_another_database_running(
        "BEGIN; CREATE TABLE t (a int); INSERT INTO t VALUES (1)",
    )
    .await;
}

/// CREATE and DROP DATABASE hold a transaction id and no relation lock of the
/// database they are connected to; tests (and operators) run them at any time.
#[tokio::test]
async fn a_transaction_of_another_database_holding_no_table_lock_does_not_hold_the_tail_back() {
    // A transaction id, and no lock on any table.
    not_held_back_by_another_database_running("BEGIN; SELECT pg_current_xact_id()").await;
}

/// The same transaction in the tail's own database may still write rows below
/// the ones sent next: it holds the tail back until it ends.
#[tokio::test]
async fn a_transaction_of_the_same_database_holds_the_tail_back_until_it_ends() {
    let app = spawn_app().await;
    let mut stream = open_stream(&app, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = crate::helpers::connect(&app.db_url).await;
    open.batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    insert(&app.db, "meanwhile").await;
    let sent = nothing_within(&mut stream, Duration::from_secs(2)).await;
    assert!(
        !sent.iter().any(|l| l.contains("\"meanwhile\"")),
        "sent past a transaction of this database still running: {sent:?}"
    );
    open.batch_execute("ROLLBACK").await.unwrap();
    let sent = nothing_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        sent.iter().any(|l| l.contains("\"meanwhile\"")),
        "not sent once the transaction ended: {sent:?}"
    );
}

#[tokio::test]
async fn a_last_event_id_past_the_newest_event_is_a_bad_request_naming_it() {
    let app = spawn_app().await;
    insert(&app.db, "only").await;
    let head: (i64, i64) = {
        let r = app
            .db
            .query_one("SELECT txid, seq FROM events", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    for (header, param, name) in [
        (
            Some(format!("{}-{}", head.0 + 1_000_000, 1)),
            None,
            "Last-Event-ID",
        ),
        (
            Some(format!("{}-{}", head.0, head.1 + 1)),
            None,
            "Last-Event-ID",
        ),
        (
            None,
            Some(format!("{}-{}", i64::MAX, i64::MAX)),
            "last_event_id",
        ),
    ] {
        let mut req = app.http.get(app.api(&match &param {
            Some(p) => format!("/events/stream?last_event_id={p}"),
            None => "/events/stream".to_owned(),
        }));
        if let Some(h) = &header {
            req = req.header("last-event-id", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400, "{header:?} {param:?}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{header:?} {param:?}"
        );
        let problem: serde_json::Value = res.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(name),
            "{problem}"
        );
    }
    // The newest position itself resumes (nothing after it yet).
    let res = open_stream(&app, Some(head)).await;
    assert_eq!(res.status(), 200);
}
