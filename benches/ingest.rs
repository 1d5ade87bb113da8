//! Ingest benchmark against the real RabbitMQ and PostgreSQL on this machine.
//!
//! 1. Broker ceiling: a bare lapin consumer that only acks drains a pre-filled queue.
//! 2. Drain: Candystore (every safety on) drains a pre-filled queue of ~1 KB events.
//! 3. Steady: events published at a fixed rate; storage latency p50/p99/max.
//!
//! Writes `reports/ingest.md`. Knobs (environment, bench only): BENCH_EVENTS
//! (200000), BENCH_RATE (1000), BENCH_STEADY_SECS (30), BENCH_BATCH_SIZE (500),
//! BENCH_PREFETCH (2000), BENCH_WRITERS (2).

use std::time::{Duration, Instant};

use candystore::app::{self, AppOptions};
use candystore::config::Settings;
use candystore::db;
use candystore::source::publish::{LoadSpec, Publisher};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio_postgres::{Client, NoTls};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Env {
    name: String,
    db: Client,
    admin: Client,
    amqp: Connection,
}

impl Env {
    async fn new(tag: &str) -> Self {
        let name = format!("cs_bench_{tag}_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&format!("{PG}/postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut db = connect(&format!("{PG}/{name}")).await;
        db::migrate(&mut db).await.unwrap();
        let amqp = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .unwrap();
        let env = Env {
            name,
            db,
            admin,
            amqp,
        };
        // Declare and bind the queue first, so what is published before the
        // consumer starts is kept.
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
        env
    }

    fn exchange(&self) -> String {
        format!("{}_x", self.name)
    }

    fn queue(&self) -> String {
        format!("{}_q", self.name)
    }

    fn settings(&self, extra: &[(&str, String)]) -> Settings {
        let mut pairs = vec![
            ("DATABASE_URL", format!("{PG}/{}", self.name)),
            ("RABBIT_URL", AMQP.to_owned()),
            ("RABBIT_EXCHANGE", self.exchange()),
            ("RABBIT_QUEUE", self.queue()),
            ("API_HOST", "127.0.0.1".to_owned()),
            ("API_PORT", "0".to_owned()),
            ("METRICS_PORT", "0".to_owned()),
            ("LOG_LEVEL", "warn".to_owned()),
        ];
        pairs.extend(extra.iter().cloned());
        Settings::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    }

    async fn fill(&self, count: u64) -> Duration {
        let publisher = Publisher::connect(AMQP, &self.exchange()).await.unwrap();
        let spec = LoadSpec {
            count,
            size: 1024,
            rate: 0,
            generation: 0,
            run_id: self.name.clone(),
            shape: Default::default(),
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
        drop(self.db);
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

async fn connect(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// A consumer that acks every 500th delivery (multiple) and does nothing else.
async fn broker_ceiling(events: u64) -> f64 {
    let env = Env::new("ceiling").await;
    env.fill(events).await;
    let ch = env.amqp.create_channel().await.unwrap();
    ch.basic_qos(2000, BasicQosOptions::default())
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
        if n % 500 == 0 || n == events {
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

struct Drain {
    rate: f64,
    publish_rate: f64,
}

async fn drain(events: u64, tuning: &[(&str, String)]) -> Drain {
    let env = Env::new("drain").await;
    let published = env.fill(events).await;
    let running = app::start(env.settings(tuning), AppOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    while env.count().await < events as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    running.shutdown().await.unwrap();
    assert_eq!(
        env.count().await,
        events as i64,
        "every event stored exactly once"
    );
    env.drop_all().await;
    Drain {
        rate,
        publish_rate: events as f64 / published.as_secs_f64(),
    }
}

struct Steady {
    stored: i64,
    p50: f64,
    p99: f64,
    max: f64,
    hist_p99_bucket: String,
}

async fn steady(rate: u64, secs: u64, tuning: &[(&str, String)]) -> Steady {
    let env = Env::new("steady").await;
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
        run_id: env.name.clone(),
        shape: Default::default(),
    };
    publisher.publish_load(&spec).await.unwrap();
    while env.count().await < spec.count as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.unwrap();
    let row = env
        .db
        .query_one(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY storage_latency_ms), \
             percentile_cont(0.99) WITHIN GROUP (ORDER BY storage_latency_ms), max(storage_latency_ms) FROM events",
            &[],
        )
        .await
        .unwrap();
    let text = metrics.render();
    let total = spec.count as f64;
    let hist_p99_bucket = text
        .lines()
        .filter(|l| l.starts_with("candystore_storage_latency_seconds_bucket"))
        .find_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            (n >= 0.99 * total).then_some(le)
        })
        .unwrap_or_else(|| "?".into());
    let s = Steady {
        stored: row.get(0),
        p50: row.get(1),
        p99: row.get(2),
        max: row.get(3),
        hist_p99_bucket,
    };
    env.drop_all().await;
    s
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks for the bench names
    }
    let events = knob("BENCH_EVENTS", 200_000);
    let rate = knob("BENCH_RATE", 1_000);
    let secs = knob("BENCH_STEADY_SECS", 30);
    let tuning = [
        ("BATCH_SIZE", knob("BENCH_BATCH_SIZE", 500).to_string()),
        ("PREFETCH_COUNT", knob("BENCH_PREFETCH", 2_000).to_string()),
        ("WRITE_CONCURRENCY", knob("BENCH_WRITERS", 2).to_string()),
        ("FLUSH_INTERVAL", "50ms".to_owned()),
    ];

    println!("broker ceiling: draining {events} events with a consumer that only acks...");
    let ceiling = broker_ceiling(events).await;
    println!("  {ceiling:.0} events/s");
    println!("drain: Candystore draining {events} pre-published ~1 KB events...");
    let d = drain(events, &tuning).await;
    println!(
        "  {:.0} events/s (published at {:.0}/s)",
        d.rate, d.publish_rate
    );
    println!("steady: {rate} events/s for {secs}s with the default settings...");
    let s = steady(rate, secs, &[]).await;
    println!(
        "  stored {}, storage latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.stored, s.p50, s.p99, s.max
    );
    println!("steady: {rate} events/s for {secs}s with FLUSH_INTERVAL=10ms...");
    let fast = steady(rate, secs, &[("FLUSH_INTERVAL", "10ms".to_owned())]).await;
    println!(
        "  stored {}, storage latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fast.stored, fast.p50, fast.p99, fast.max
    );

    let tuning_text: Vec<String> = tuning.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let report = format!(
        "# Ingest benchmark\n\n\
         Measured by `make bench` (`cargo bench --bench ingest`) against the local RabbitMQ and PostgreSQL, \
         on {cores} cores, {date}.\n\n\
         | measure | result |\n|---|---|\n\
         | broker ceiling: bare lapin consumer, ack only, {events} events | {ceiling:.0} events/s |\n\
         | drain: Candystore, {events} pre-published ~1 KB events, {tuning} | **{drain:.0} events/s** |\n\
         | publisher (confirms) filling the queue | {publish:.0} events/s |\n\
         | steady {rate} events/s for {secs} s, default settings: storage latency p50 | **{p50:.1} ms** |\n\
         | same: p99 | **{p99:.1} ms** |\n\
         | same: max | {max:.1} ms |\n\
         | same: histogram bucket holding the p99 (`candystore_storage_latency_seconds`) | le={bucket} s |\n\
         | steady {rate} events/s, FLUSH_INTERVAL=10ms: storage latency p50 / p99 / max | {fp50:.1} / {fp99:.1} / {fmax:.1} ms |\n\n\
         Storage latency is delivery to the INSERT that stored the row, from the `storage_latency_ms` column; \
         the histogram measures delivery to COMMIT.\n",
        cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        date = chrono::Utc::now().format("%Y-%m-%d"),
        tuning = tuning_text.join(" "),
        drain = d.rate,
        publish = d.publish_rate,
        p50 = s.p50,
        p99 = s.p99,
        max = s.max,
        bucket = s.hist_p99_bucket,
        fp50 = fast.p50,
        fp99 = fast.p99,
        fmax = fast.max,
    );
    std::fs::create_dir_all("reports").unwrap();
    std::fs::write("reports/ingest.md", &report).unwrap();
    println!("\nwrote reports/ingest.md");
}
