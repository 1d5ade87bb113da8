//! Ingest benchmark against the real RabbitMQ and PostgreSQL on this machine.
//!
//! 1. Broker ceiling: a bare lapin consumer that only acks drains a pre-filled queue.
//! 2. Drains: Candystore (every safety on) drains a pre-filled queue of ~1 KB
//!    events, with the defaults and with `config/high-throughput.toml`; the CPU
//!    each process used meanwhile; bytes on disk per event afterwards.
//!    Both again with events without a time (stored at their receive time, each
//!    claiming its (id, source)).
//! 3. The same drain into a table already holding BENCH_BIG_ROWS events (random
//!    UUID ids over 90 daily partitions, kept in `cs_bench_big_90d` between runs:
//!    filling it takes minutes), timed and time-less, and the steady load into it.
//! 4. Steady: events published at a fixed rate with the defaults; storage latency
//!    (delivery → commit) p50/p99, then the curve up to saturation (`reports/ingest-latency.svg`).
//! 5. Peak RSS draining a 1,000,000-event backlog and 1,000 events of 1 MB.
//! 6. The drains of 2. into the embedded store (a SQLite file), beside PostgreSQL's.
//! 7. `defaults`: the drain on both stores for each PREFETCH_COUNT × BATCH_SIZE
//!    of a grid, the rest as configured by default, beside
//!    `config/high-throughput.toml`'s: what the built-in pipeline defaults are
//!    chosen from.
//!
//! Writes `reports/ingest.md`. Knobs (environment, bench only): BENCH_EVENTS
//! (200000), BENCH_RATE (1000), BENCH_STEADY_SECS (30), BENCH_BIG_ROWS (10000000),
//! BENCH_BACKLOG (1000000), BENCH_ONLY (comma-separated: ceiling, drain, sqlite,
//! big, steady, curve, rss, defaults).

#[path = "../tests/support/mod.rs"]
mod support;
use support::{AMQP, PG, connect};

use std::time::{Duration, Instant};

use candystore::app::{self, AppOptions};
use candystore::config::Settings;
use candystore::schema;
use candystore::source::publish::{LoadSpec, Publisher};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio_postgres::Client;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Env {
    /// the database
    name: String,
    /// names this run's exchange, queue and event ids
    tag: String,
    db: Client,
    admin: Client,
    amqp: Connection,
}

impl Env {
    async fn new(tag: &str) -> Self {
        let name = format!("cs_bench_{tag}_{}", uuid::Uuid::new_v4().simple());
        let (admin, db) = migrated_db(&name).await;
        Self::with_tag(name.clone(), db, admin, name).await
    }

    /// Declares and binds the queue first, so what is published before the
    /// consumer starts is kept.
    async fn declare(&self) {
        let env = self;
        let ch = env.amqp.create_channel().await.unwrap();
        Publisher::connect(AMQP, &env.exchange()).await.unwrap();
        ch.queue_declare(
            env.queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            env.queue().as_str().into(),
            env.exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }

    fn exchange(&self) -> String {
        format!("{}_x", self.tag)
    }

    fn queue(&self) -> String {
        format!("{}_q", self.tag)
    }

    /// The prefix of this run's event ids.
    fn run_id(&self) -> String {
        self.tag.clone()
    }

    /// An existing database, with a queue and an exchange of this run's own.
    async fn on(name: String, db: Client, admin: Client, tag: &str) -> Self {
        let tag = format!("cs_bench_{tag}_{}", uuid::Uuid::new_v4().simple());
        Self::with_tag(name, db, admin, tag).await
    }

    async fn with_tag(name: String, db: Client, admin: Client, tag: String) -> Self {
        let amqp = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .unwrap();
        let env = Env {
            tag,
            name,
            db,
            admin,
            amqp,
        };
        env.declare().await;
        env
    }

    async fn drop_queue(&self) {
        let ch = self.amqp.create_channel().await.unwrap();
        let _ = ch
            .queue_delete(self.queue().as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete(
                self.exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }

    fn settings(&self, extra: &[(&str, String)]) -> Settings {
        let pairs = self.pairs(extra);
        Settings::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// The settings of a service on this run's database, exchange and queue.
    fn pairs<'a>(&self, extra: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
        let mut pairs = vec![
            ("DATABASE_URL", format!("{PG}/{}", self.name)),
            ("RABBIT_URL", AMQP.to_owned()),
            ("RABBIT_EXCHANGE", self.exchange()),
            ("RABBIT_QUEUE", self.queue()),
            ("API_HOST", "127.0.0.1".to_owned()),
            ("API_PORT", "0".to_owned()),
            ("METRICS_PORT", "0".to_owned()),
            ("LOG_LEVEL", "warn".to_owned()),
            // The database's own checkpoint signing key (its name is the origin).
            ("SIGNING_KEY_FILE", self.key_file()),
        ];
        pairs.extend(extra.iter().cloned());
        pairs
    }

    fn key_file(&self) -> String {
        std::env::temp_dir()
            .join(format!("{}.key", self.name))
            .display()
            .to_string()
    }

    async fn fill(&self, count: u64, without_time: bool) -> Duration {
        let publisher = Publisher::connect(AMQP, &self.exchange()).await.unwrap();
        let spec = LoadSpec {
            count,
            size: 1024,
            rate: 0,
            generation: 0,
            run_id: self.run_id(),
            shape: Default::default(),
            without_time,
            days_back: 0,
        };
        publisher.publish_load(&spec).await.unwrap()
    }

    async fn count(&self) -> i64 {
        self.db
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn drop_all(self) {
        let _ = std::fs::remove_file(self.key_file());
        self.drop_queue().await;
        drop(self.db);
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

/// The database `name`, created unless it exists, migrated; and a connection to
/// `postgres` for dropping it.
async fn migrated_db(name: &str) -> (Client, Client) {
    let admin = connect(&format!("{PG}/postgres")).await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    }
    let mut db = connect(&format!("{PG}/{name}")).await;
    schema::migrate(&mut db).await.unwrap();
    (admin, db)
}

/// A consumer with `prefetch` that acks every `ack_every`th delivery (multiple)
/// and does nothing else.
async fn broker_ceiling(events: u64, prefetch: u16, ack_every: u64) -> f64 {
    let env = Env::new("ceiling").await;
    env.fill(events, false).await;
    let ch = env.amqp.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            env.queue().as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut n = 0;
    while let Some(Ok(d)) = consumer.next().await {
        n += 1;
        if n % ack_every == 0 || n == events {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
        if n == events {
            break;
        }
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    drop(consumer);
    env.drop_all().await;
    rate
}

/// CPU seconds used so far, by process group: PostgreSQL, RabbitMQ, this process
/// (Candystore and the bench's own polling), everything else.
fn cpu_by_group() -> Vec<(&'static str, f64)> {
    let me = std::process::id().to_string();
    let mut groups = vec![
        ("PostgreSQL", 0.0),
        ("RabbitMQ", 0.0),
        ("Candystore (bench process)", 0.0),
        ("other", 0.0),
    ];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces; the fields follow it.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or("");
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        let group = if name == me {
            2
        } else if comm.starts_with("postgres") || cmdline.starts_with("postgres") {
            0
        } else if comm.starts_with("beam") || comm.starts_with("erl") || cmdline.contains("rabbit")
        {
            1
        } else {
            3
        };
        groups[group].1 += ticks / 100.0;
    }
    groups
}

fn cores_used(before: &[(&'static str, f64)], after: &[(&'static str, f64)], secs: f64) -> String {
    before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| format!("{name} {:.2}", (a - b) / secs))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Drain {
    rate: f64,
    publish_rate: f64,
    /// cores used by each process group while draining
    cpu: String,
    /// mean rows per committed batch
    batch_rows: f64,
}

/// The settings of a TOML file of flat `key = value` lines, as variables.
fn settings_file(path: &str) -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.trim_start().starts_with('#'))
        // The bench names its own store.
        .filter(|(k, _)| !k.trim().eq_ignore_ascii_case("database_url"))
        .map(|(k, v)| {
            let key: &'static str = Box::leak(k.trim().to_uppercase().into_boxed_str());
            (key, v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// The drain on both stores for each PREFETCH_COUNT × BATCH_SIZE of a grid
/// (everything else as configured by default) and with `high`: a table of
/// rates, each beside `high`'s on the same store.
async fn pipeline_defaults(events: u64, high: &[(&'static str, String)]) -> String {
    let mut grid: Vec<(String, Vec<(&'static str, String)>)> =
        vec![("config/high-throughput.toml".into(), high.to_vec())];
    for (prefetch, batch) in [
        (100, 50),
        (500, 50),
        (1000, 100),
        (1000, 250),
        (2000, 250),
        (2000, 500),
    ] {
        grid.push((
            format!("PREFETCH_COUNT={prefetch} BATCH_SIZE={batch}"),
            vec![
                ("PREFETCH_COUNT", prefetch.to_string()),
                ("BATCH_SIZE", batch.to_string()),
            ],
        ));
    }
    let mut out = format!(
        "\n## Pipeline defaults: PREFETCH_COUNT × BATCH_SIZE ({events} events, each drain once)\n\n\
         | settings | PostgreSQL | of high-throughput | SQLite | of high-throughput |\n|---|---|---|---|---|\n"
    );
    let mut high_rates = (f64::NAN, f64::NAN);
    for (label, tuning) in &grid {
        println!("defaults grid, {label}: PostgreSQL...");
        let env = Env::new("grid").await;
        let pg = drain_into(&env, events, tuning, 0, false).await.rate;
        env.drop_all().await;
        println!("  {pg:.0} events/s; SQLite...");
        let env = Env::new("gridlite").await;
        let (lite, _) = drain_into_sqlite(&env, events, tuning).await;
        env.drop_all().await;
        println!("  {:.0} events/s", lite.rate);
        if high_rates.0.is_nan() {
            high_rates = (pg, lite.rate);
        }
        out += &format!(
            "| {label} | {pg:.0} events/s | {:.2} | {:.0} events/s | {:.2} |\n",
            pg / high_rates.0,
            lite.rate,
            lite.rate / high_rates.1
        );
    }
    out
}

async fn drain_into(
    env: &Env,
    events: u64,
    tuning: &[(&str, String)],
    before: i64,
    without_time: bool,
) -> Drain {
    let published = env.fill(events, without_time).await;
    let (running, secs, cpu, text) = timed_drain(env.settings(tuning), events).await;
    let batch_rows = mean_batch_rows(&text);
    let steps: Vec<String> = ["copy", "insert", "commit"]
        .iter()
        .map(|step| {
            let sum = metric(
                &text,
                &format!("candystore_batch_duration_seconds_sum{{step=\"{step}\"}}"),
            );
            let n = metric(
                &text,
                &format!("candystore_batch_duration_seconds_count{{step=\"{step}\"}}"),
            );
            format!("{step} {:.1} ms", sum / n.max(1.0) * 1e3)
        })
        .collect();
    println!(
        "  per batch: {}; delivery → commit mean {:.1} ms; oldest delivery's wait for its batch mean {:.1} ms",
        steps.join(", "),
        metric(&text, "candystore_storage_latency_seconds_sum")
            / metric(&text, "candystore_storage_latency_seconds_count").max(1.0)
            * 1e3,
        metric(&text, "candystore_batch_age_seconds_sum")
            / metric(&text, "candystore_batch_age_seconds_count").max(1.0)
            * 1e3
    );
    running.shutdown().await.unwrap();
    assert_eq!(
        env.count().await,
        before + events as i64,
        "every event stored exactly once"
    );
    Drain {
        rate: events as f64 / secs,
        publish_rate: events as f64 / published.as_secs_f64(),
        cpu,
        batch_rows,
    }
}

/// Starts a service with `settings` on a queue already holding `events` and
/// times its drain: the running service, the seconds, the cores each process
/// group used meanwhile, and the service's metrics at the end.
async fn timed_drain(settings: Settings, events: u64) -> (app::Running, f64, String, String) {
    let running = app::start(settings, AppOptions::default()).await.unwrap();
    let cpu_before = cpu_by_group();
    let start = Instant::now();
    wait_stored(&running, events).await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cores_used(&cpu_before, &cpu_by_group(), secs);
    let text = running.metrics.render();
    (running, secs, cpu, text)
}

/// Rows per committed batch, on average, from the metrics' text.
fn mean_batch_rows(text: &str) -> f64 {
    metric(text, "candystore_batch_rows_sum") / metric(text, "candystore_batch_rows_count").max(1.0)
}

/// A drain into the embedded store: the same events and settings as
/// [`drain_into`], into a SQLite file of its own. Returns the rate and the
/// file's bytes per event (after a checkpoint folds the log into it).
async fn drain_into_sqlite(env: &Env, events: u64, tuning: &[(&str, String)]) -> (Drain, f64) {
    let dir = std::env::temp_dir().join(format!("{}_sqlite", env.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("candystore.db");
    let published = env.fill(events, false).await;
    let mut pairs = env.pairs(tuning);
    pairs.push(("DATABASE_URL", format!("sqlite:{}", file.display())));
    let settings = Settings::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    let (running, secs, cpu, text) = timed_drain(settings, events).await;
    let batch_rows = mean_batch_rows(&text);
    running.shutdown().await.unwrap();
    let conn = rusqlite::Connection::open(&file).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, events as i64, "every event stored exactly once");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(conn);
    let bytes = std::fs::metadata(&file).unwrap().len() as f64 / rows as f64;
    std::fs::remove_dir_all(&dir).unwrap();
    (
        Drain {
            rate: events as f64 / secs,
            publish_rate: events as f64 / published.as_secs_f64(),
            cpu,
            batch_rows,
        },
        bytes,
    )
}

/// Events the running service has stored, from its own metrics: polling
/// `count(*)` every few milliseconds would make PostgreSQL scan the table it is
/// being measured writing to.
fn stored(running: &app::Running) -> u64 {
    running
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("candystore_events_stored_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn wait_stored(running: &app::Running, n: u64) {
    while stored(running) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Bytes on disk per event: heap, TOAST and each index, summed over partitions.
async fn bytes_per_event(db: &Client) -> Vec<(String, f64)> {
    let rows: f64 = db
        .query_one("SELECT count(*)::float8 FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let mut out = Vec::new();
    let json: f64 = db
        .query_one(
            "SELECT avg(octet_length(envelope::text) + octet_length(payload::text) + octet_length(properties::text))::float8 FROM events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.push((
        "JSON text (envelope + payload + properties)".to_owned(),
        json,
    ));
    let parts = db
        .query(
            "SELECT sum(pg_relation_size(c.oid))::float8, sum(coalesce(pg_total_relation_size(c.reltoastrelid), 0))::float8 \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await
        .unwrap();
    out.push(("heap".to_owned(), parts[0].get::<_, f64>(0) / rows));
    out.push(("TOAST".to_owned(), parts[0].get::<_, f64>(1) / rows));
    for r in db
        .query(
            "SELECT p.relname::text, sum(pg_relation_size(c.oid))::float8 FROM pg_class p \
             JOIN pg_index x ON x.indrelid = 'events'::regclass AND x.indexrelid = p.oid \
             JOIN pg_inherits i ON i.inhparent = p.oid JOIN pg_class c ON c.oid = i.inhrelid \
             GROUP BY 1 ORDER BY 2 DESC",
            &[],
        )
        .await
        .unwrap()
    {
        out.push((
            format!("index {}", r.get::<_, String>(0)),
            r.get::<_, f64>(1) / rows,
        ));
    }
    out
}

/// Days the big table's events span, one partition each.
const BIG_DAYS: i64 = 90;

/// A database kept between runs (`cs_bench_big_90d`) holding `rows` events: random
/// UUID ids over [`BIG_DAYS`] daily partitions. Returns its clients.
async fn big_db(rows: i64) -> (Client, Client) {
    let name = BIG_DB;
    let (admin, db) = migrated_db(name).await;
    let mut have: i64 = db
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    if have < rows {
        println!("  filling {name} to {rows} events (once; kept for later runs)...");
        let mut c = storage_client(name).await;
        let now = chrono::Utc::now();
        for day in 0..BIG_DAYS + 2 {
            let existing: Vec<candystore::storage::partition::Range> =
                candystore::storage::partition::list(&c, candystore::storage::Table::Events)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter_map(|p| p.range)
                    .collect();
            if let Some(range) = candystore::storage::partition::range_for(
                now - chrono::Duration::days(day),
                candystore::storage::PartitionInterval::Day,
                &existing,
            ) {
                candystore::storage::partition::create(
                    &mut c,
                    candystore::storage::Table::Events,
                    range,
                )
                .await
                .unwrap();
            }
        }
        // A day at a time, in time order, as production fills it: each day's
        // partition and its indexes are written while they are in memory (in random
        // order the fill thrashes: hours instead of minutes). Ids are random UUIDs.
        let per_day = rows / BIG_DAYS + 1;
        let mut day = BIG_DAYS;
        while have < rows && day > 0 {
            let n = (rows - have).min(per_day);
            db.execute(
                "INSERT INTO events (id, event_type, source, target, routing_key, exchange, \"timestamp\", received_at, \
                 payload, session_id, correlation_id, generation, envelope, properties) \
                 SELECT gen_random_uuid()::text, 'bench.type.' || (g % 40), 'svc-' || (g % 20), \
                        CASE WHEN g % 4 = 0 THEN 'candybar' END, 'bench', 'events', \
                        date_trunc('day', now()) - $2::bigint * interval '1 day' + g * (interval '1 day' / $1::bigint), now(), \
                        jsonb_build_object('text', repeat('lorem ipsum ', 60), 'seq', g, 'n', g % 97), \
                        'session-' || (g % 1000), 'corr-' || (g / 10), 1, '{}', '{}' \
                 FROM generate_series(1, $1::bigint) g",
                &[&n, &day],
            )
            .await
            .unwrap();
            have += n;
            day -= 1;
            println!("  {have} rows");
        }
        db.batch_execute("VACUUM (ANALYZE) events").await.unwrap();
    }
    // The background jobs (the audit chain's seal, the catalog) catch up first, as
    // on a database that has been serving: the drain measures ingest, not their
    // first pass over 10M rows (which costs PostgreSQL a core meanwhile).
    let mut c = storage_client(name).await;
    let started = Instant::now();
    let mut caught_up = 0i64;
    loop {
        let s = candystore::audit::legacy::seal::step(&mut c, None)
            .await
            .unwrap();
        caught_up += s.events;
        if s.events == 0 {
            break;
        }
    }
    while candystore::storage::catalog::step(&mut c).await.unwrap() > 0 {}
    if caught_up > 0 {
        println!(
            "  sealed and catalogued {caught_up} existing events first ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    (admin, db)
}

const BIG_DB: &str = "cs_bench_big_90d";

/// Takes this run's events out of the big table again, so the next run starts alike.
async fn big_restore(env: &Env) {
    let run = format!("{}-%", env.run_id());
    env.db
        .execute("DELETE FROM events WHERE id LIKE $1", &[&run])
        .await
        .unwrap();
    env.db
        .execute("DELETE FROM event_keys WHERE id LIKE $1", &[&run])
        .await
        .unwrap();
    // One statement each: a multi-statement string runs as one transaction block,
    // where VACUUM is refused.
    for table in ["events", "event_keys"] {
        env.db
            .batch_execute(&format!("VACUUM {table}"))
            .await
            .unwrap();
    }
    env.drop_queue().await;
}

/// The drain into the big table (a queue and exchange of this run's own).
async fn drain_big(
    rows: i64,
    events: u64,
    tuning: &[(&str, String)],
    without_time: bool,
) -> (Drain, f64) {
    let (admin, db) = big_db(rows).await;
    let env = Env::on(BIG_DB.to_owned(), db, admin, "big").await;
    let before = env.count().await;
    let d = drain_into(&env, events, tuning, before, without_time).await;
    big_restore(&env).await;
    (d, before as f64)
}

/// Steady load into the big table.
async fn steady_big(rows: i64, rate: u64, secs: u64, without_time: bool) -> Steady {
    let (admin, db) = big_db(rows).await;
    let env = Env::on(BIG_DB.to_owned(), db, admin, "bigsteady").await;
    let s = steady_on(&env, rate, secs, &[], without_time).await;
    big_restore(&env).await;
    s
}

async fn storage_client(db: &str) -> tokio_postgres::Client {
    let c = connect(&format!("{PG}/{db}")).await;
    c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    c
}

struct Steady {
    offered: f64,
    stored: i64,
    /// delivery → commit, from the histogram (interpolated within a bucket)
    p50: f64,
    p99: f64,
    /// delivery → INSERT, exact, from the stored rows
    insert_p50: f64,
    insert_p99: f64,
}

/// A quantile of a Prometheus histogram as `histogram_quantile` computes it
/// (linear within the bucket), in milliseconds.
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev.0 * 1e3;
            }
            let within = if n > prev.1 {
                (rank - prev.1) / (n - prev.1)
            } else {
                0.0
            };
            return (prev.0 + (le - prev.0) * within) * 1e3;
        }
        prev = (le, n);
    }
    f64::NAN
}

async fn steady(rate: u64, secs: u64, tuning: &[(&str, String)], without_time: bool) -> Steady {
    let env = Env::new("steady").await;
    let s = steady_on(&env, rate, secs, tuning, without_time).await;
    env.drop_all().await;
    s
}

/// Publishes `rate` events a second for `secs` seconds to a service on `env`;
/// latencies from its histogram and from this run's rows.
async fn steady_on(
    env: &Env,
    rate: u64,
    secs: u64,
    tuning: &[(&str, String)],
    without_time: bool,
) -> Steady {
    let running = app::start(env.settings(tuning), AppOptions::default())
        .await
        .unwrap();
    let metrics = running.metrics.clone();
    let publisher = Publisher::connect(AMQP, &env.exchange()).await.unwrap();
    let spec = LoadSpec {
        count: rate * secs,
        size: 1024,
        rate,
        generation: 0,
        run_id: env.run_id(),
        shape: Default::default(),
        without_time,
        days_back: 0,
    };
    let took = publisher.publish_load(&spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored(&running) < spec.count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.unwrap();
    let row = env
        .db
        .query_one(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY storage_latency_ms), \
             percentile_cont(0.99) WITHIN GROUP (ORDER BY storage_latency_ms) FROM events WHERE id LIKE $1",
            &[&format!("{}-%", env.run_id())],
        )
        .await
        .unwrap();
    let text = metrics.render();
    Steady {
        offered: spec.count as f64 / took.as_secs_f64(),
        stored: row.get(0),
        p50: histogram_quantile(&text, "candystore_storage_latency_seconds", 0.5),
        p99: histogram_quantile(&text, "candystore_storage_latency_seconds", 0.99),
        insert_p50: row.get(1),
        insert_p99: row.get(2),
    }
}

/// p50 and p99 against the offered rate, as an SVG line chart.
fn latency_svg(points: &[(f64, f64, f64)]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 30.0, 20.0);
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_y = points.iter().map(|p| p.2).fold(1.0, f64::max).max(30.0) * 1.1;
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - bottom - top);
    let line = |f: &dyn Fn(&(f64, f64, f64)) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{tx}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Storage latency (delivery → commit) against offered load, default settings</text>\n",
        tx = w / 2.0
    );
    for i in 0..=5 {
        let v = max_y * i as f64 / 5.0;
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v:.0} ms</text>\n",
            x2 = w - right,
            yy = y(v),
            tx = left - 6.0,
            ty = y(v) + 4.0
        );
    }
    for p in points {
        svg += &format!(
            "<text x=\"{xx:.1}\" y=\"{ty}\" text-anchor=\"middle\">{r:.0}</text>\n",
            xx = x(p.0),
            ty = h - bottom + 16.0,
            r = p.0
        );
    }
    svg += &format!(
        "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">offered events/s</text>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{p50}\"/>\n\
         <polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{p99}\"/>\n\
         <text x=\"{lx}\" y=\"{ly1}\" fill=\"#1f77b4\">p50</text><text x=\"{lx}\" y=\"{ly2}\" fill=\"#d62728\">p99</text>\n</svg>\n",
        tx = w / 2.0,
        ty = h - 12.0,
        p50 = line(&|p| p.1),
        p99 = line(&|p| p.2),
        lx = left + 10.0,
        ly1 = top + 14.0,
        ly2 = top + 30.0,
    );
    svg
}

/// Peak RSS of a `candystore serve` of its own (the release binary, as operators
/// run it) while it drains `count` events of `size` bytes published before it
/// started; also its drain rate. The bench process's own heap (publisher, earlier
/// steps) is not in the figure.
async fn drain_rss(count: u64, size: usize) -> (f64, f64) {
    let env = Env::new("rss").await;
    let publisher = Publisher::connect(AMQP, &env.exchange()).await.unwrap();
    let spec = LoadSpec {
        count,
        size,
        rate: 0,
        generation: 1,
        run_id: env.run_id(),
        shape: Default::default(),
        without_time: false,
        days_back: 0,
    };
    publisher.publish_load(&spec).await.unwrap();
    drop(publisher);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
        .arg("serve")
        .envs(env.pairs(&[]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let start = Instant::now();
    // The sequence is cheap to read while the drain runs; the count confirms the end.
    let progress = "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'seq')::regclass), 0)";
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let issued: i64 = env.db.query_one(progress, &[]).await.unwrap().get(0);
        if issued as u64 >= count {
            let rows: i64 = env
                .db
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .unwrap()
                .get(0);
            if rows as u64 >= count {
                break;
            }
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    let hwm_kb: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    env.drop_all().await;
    (hwm_kb / 1024.0, rate)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks for the bench names
    }
    let events = knob("BENCH_EVENTS", 200_000);
    let rate = knob("BENCH_RATE", 1_000);
    let secs = knob("BENCH_STEADY_SECS", 30);
    let big_rows = knob("BENCH_BIG_ROWS", 10_000_000) as i64;
    let backlog = knob("BENCH_BACKLOG", 1_000_000);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    let high = settings_file("config/high-throughput.toml");
    let high_text: Vec<String> = high.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut report = format!(
        "# Ingest benchmark\n\n\
         Measured by `make bench` (`cargo bench --bench ingest`) against the local RabbitMQ and PostgreSQL \
         ({cores} cores, PostgreSQL and RabbitMQ with stock settings, Candystore in the bench process), {date}. \
         Events of ~1 KB (`candystore publish` bodies, the three envelope generations in turn).\n\n\
         | measure | result | beside |\n|---|---|---|\n",
        cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );
    let mut ceiling = f64::NAN;
    if run("ceiling") || run("drain") || run("big") {
        println!("broker ceiling: draining {events} events with a consumer that only acks...");
        ceiling = broker_ceiling(events, 2000, 500).await;
        println!("  {ceiling:.0} events/s");
        report += &format!(
            "| broker ceiling: bare lapin consumer, ack only, {events} events, prefetch 2,000, an ack per 500 | **{ceiling:.0} events/s** | |\n"
        );
        println!("broker ceiling at the default prefetch (100), an ack per 28 deliveries...");
        let at_100 = broker_ceiling(events, 100, 28).await;
        println!("  {at_100:.0} events/s");
        report += &format!(
            "| the same at prefetch 100, an ack per 28 (the defaults' batch before 2026-12-07) | **{at_100:.0} events/s** | the most the old defaults could drain |\n"
        );
    }
    let mut cpu_notes = Vec::new();
    let mut empty_high = f64::NAN;
    let mut timed = std::collections::HashMap::new();
    if run("drain") {
        for (label, tuning, without_time) in [
            ("defaults", Vec::new(), false),
            ("config/high-throughput.toml", high.clone(), false),
            ("defaults, events without a time", Vec::new(), true),
            (
                "config/high-throughput.toml, events without a time",
                high.clone(),
                true,
            ),
        ] {
            println!("drain ({label}): Candystore draining {events} pre-published events...");
            let env = Env::new("drain").await;
            let d = drain_into(&env, events, &tuning, 0, without_time).await;
            println!(
                "  {:.0} events/s, {:.0} rows per batch; cores: {}",
                d.rate, d.batch_rows, d.cpu
            );
            let beside = match timed.get(&tuning.is_empty()) {
                Some(t) if without_time => {
                    format!("{:.2} of the same drain of timed events", d.rate / t)
                }
                _ => format!("{:.2} of the ceiling", d.rate / ceiling),
            };
            report += &format!(
                "| drain of {events} events, {label} | **{:.0} events/s** ({:.0} rows per batch) | {beside}; the queue was filled at {:.0}/s |\n",
                d.rate, d.batch_rows, d.publish_rate
            );
            cpu_notes.push(format!("- drain, {label}: {}", d.cpu));
            if without_time {
                env.drop_all().await;
                continue;
            }
            timed.insert(tuning.is_empty(), d.rate);
            if tuning.is_empty() {
                let bytes = bytes_per_event(&env.db).await;
                let text: Vec<String> = bytes.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
                cpu_notes.push(format!(
                    "- bytes per event after that drain: {}",
                    text.join(", ")
                ));
            } else {
                empty_high = d.rate;
            }
            env.drop_all().await;
        }
    }
    if run("sqlite") {
        for (label, tuning) in [
            ("defaults", Vec::new()),
            ("config/high-throughput.toml", high.clone()),
        ] {
            println!("drain into the embedded store ({label}): {events} pre-published events...");
            let env = Env::new("sqlite").await;
            let (d, bytes) = drain_into_sqlite(&env, events, &tuning).await;
            println!(
                "  {:.0} events/s, {:.0} rows per batch, {bytes:.0} bytes per event; cores: {}",
                d.rate, d.batch_rows, d.cpu
            );
            let beside = match timed.get(&tuning.is_empty()) {
                Some(pg) => format!("{:.2} of PostgreSQL's drain above", d.rate / pg),
                None => "(PostgreSQL's drain not run: BENCH_ONLY)".to_owned(),
            };
            report += &format!(
                "| drain of {events} events into the embedded store (SQLite, WAL, synchronous=FULL), {label} | **{:.0} events/s** ({:.0} rows per batch; the file {bytes:.0} bytes per event) | {beside} |\n",
                d.rate, d.batch_rows
            );
            cpu_notes.push(format!("- drain into SQLite, {label}: {}", d.cpu));
            env.drop_all().await;
        }
    }
    if only.split(',').any(|p| p.trim() == "defaults") {
        report += &pipeline_defaults(events, &high).await;
    }
    if run("big") {
        println!("drain into a table of {big_rows} events (config/high-throughput.toml)...");
        let (d, before) = drain_big(big_rows, events, &high, false).await;
        println!(
            "  {:.0} events/s into {before} rows; cores: {}",
            d.rate, d.cpu
        );
        report += &format!(
            "| the same drain into a table already holding {before:.0} events (random UUID ids, {BIG_DAYS} daily partitions), high-throughput | **{:.0} events/s** | {:.2} of the empty-table drain |\n",
            d.rate,
            d.rate / empty_high
        );
        cpu_notes.push(format!("- drain into {before:.0} rows: {}", d.cpu));
        println!("the same with events without a time...");
        let (t, _) = drain_big(big_rows, events, &high, true).await;
        println!("  {:.0} events/s; cores: {}", t.rate, t.cpu);
        report += &format!(
            "| the same drain into {before:.0} events, events without a time | **{:.0} events/s** | {:.2} of the timed drain into the same table |\n",
            t.rate,
            t.rate / d.rate
        );
        cpu_notes.push(format!(
            "- drain of events without a time into {before:.0} rows: {}",
            t.cpu
        ));
        for without_time in [false, true] {
            let kind = if without_time {
                "events without a time"
            } else {
                "timed events"
            };
            println!("steady into {before} rows: {rate} {kind}/s for {secs}s, defaults...");
            let s = steady_big(big_rows, rate, secs, without_time).await;
            println!(
                "  stored {}, delivery → commit p50 {:.1} ms, p99 {:.1} ms",
                s.stored, s.p50, s.p99
            );
            report += &format!(
                "| storage latency at a steady {rate} {kind}/s for {secs} s into {before:.0} events, defaults: delivery → commit p50 / p99 | **{:.1} / {:.1} ms** | delivery → INSERT {:.1} / {:.1} ms |\n",
                s.p50, s.p99, s.insert_p50, s.insert_p99
            );
        }
    }
    if run("steady") {
        for (kind, without_time) in [("events", false), ("events without a time", true)] {
            println!("steady: {rate} {kind}/s for {secs}s with the default settings...");
            let s = steady(rate, secs, &[], without_time).await;
            println!(
                "  stored {}, delivery → commit p50 {:.1} ms, p99 {:.1} ms (delivery → INSERT {:.1} / {:.1})",
                s.stored, s.p50, s.p99, s.insert_p50, s.insert_p99
            );
            report += &format!(
                "| storage latency at a steady {rate} {kind}/s for {secs} s, defaults: delivery → commit p50 / p99 | **{:.1} / {:.1} ms** | delivery → INSERT (exact, from the rows) {:.1} / {:.1} ms |\n",
                s.p50, s.p99, s.insert_p50, s.insert_p99
            );
        }
    }
    if run("rss") {
        println!("RSS: draining a backlog of {backlog} ~1 KB events with the defaults...");
        let (mb, r) = drain_rss(backlog, 1024).await;
        println!("  peak {mb:.0} MB at {r:.0} events/s");
        report += &format!(
            "| peak RSS of a separate `candystore serve` draining a backlog of {backlog} ~1 KB events, defaults | **{mb:.0} MB** | drained at {r:.0} events/s |\n"
        );
        println!("RSS: draining 1000 events of 1 MB with the defaults...");
        let (mb, r) = drain_rss(1000, 1 << 20).await;
        println!("  peak {mb:.0} MB at {r:.0} events/s");
        report += &format!(
            "| peak RSS of a separate `candystore serve` draining 1,000 events of 1 MB, defaults | **{mb:.0} MB** | drained at {r:.0} events/s |\n"
        );
    }
    if run("curve") {
        let mut points = Vec::new();
        let mut table = String::from(
            "\n## Storage latency against load (defaults)\n\n![p50 and p99 against offered load](ingest-latency.svg)\n\n| offered events/s | published at | delivery → commit p50 | p99 |\n|---|---|---|---|\n",
        );
        for r in [1_000u64, 2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 15_000] {
            println!("curve: {r} events/s for 10 s...");
            let s = steady(r, 10, &[], false).await;
            println!(
                "  published at {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
                s.offered, s.p50, s.p99
            );
            table += &format!(
                "| {r} | {:.0} | {:.1} ms | {:.1} ms |\n",
                s.offered, s.p50, s.p99
            );
            points.push((r as f64, s.p50, s.p99));
            if s.p99 > 1_000.0 || s.offered < 0.9 * r as f64 {
                table += "\nStopped: saturated (p99 over a second, or the publisher could not offer the rate).\n";
                break;
            }
        }
        std::fs::write("reports/ingest-latency.svg", latency_svg(&points)).unwrap();
        report += &table;
    }
    if !cpu_notes.is_empty() {
        report += &format!(
            "\n## Where the time goes\n\nCores used by each process while draining (CPU seconds ÷ wall seconds, from /proc):\n\n{}\n\nWhat each step and each index costs PostgreSQL per event, Candystore's own profile, and why each drain stops where it does: `reports/write-cost.md` (`make loadtest-write-cost`).\n",
            cpu_notes.join("\n")
        );
    }
    report += &format!(
        "\nconfig/high-throughput.toml: {}. Defaults: the README's table (PREFETCH_COUNT=2000 BATCH_SIZE=500 since 2026-12-07; earlier reports: 100 and 50). \
         Storage latency from the histogram `candystore_storage_latency_seconds` (delivery → commit) is \
         interpolated within its bucket, as `histogram_quantile` does.\n",
        high_text.join(" ")
    );
    std::fs::create_dir_all("reports").unwrap();
    let path = if only.is_empty() {
        "reports/ingest.md".to_owned()
    } else {
        format!("reports/ingest-{}.md", only.replace(',', "-"))
    };
    std::fs::write(&path, &report).unwrap();
    println!("\nwrote {path}");
}
