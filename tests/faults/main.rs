//! The fault suite (`make test-faults`): the real `candystore serve` binary, the
//! real broker and database, and one fault injected mid-stream. Each test
//! publishes a known set of events with publisher confirms, injects its fault,
//! and checks the books: every confirmed event stored exactly once (lost 0,
//! duplicated 0), no dead letters, the queue drained.
//!
//! The tests restart the broker's app and close its connections, so they run one
//! at a time (`--test-threads=1`), apart from `make test`. docs/RELIABILITY.md
//! lists each fault and its result.

#[path = "../support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candystore::source::publish::{LoadSpec, Publisher};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio_postgres::{Client, NoTls};

use support::proxy::{Mode, Proxy};
use support::{AMQP, AMQP_ADDR, PG, PG_ADDR, connect};

/// One test's database, exchange and queue, and the instances it runs.
struct Bench {
    name: String,
    db: Client,
    instances: Vec<Child>,
    /// Every instance's log (warnings and errors), to show the fault was met.
    log: std::path::PathBuf,
}

impl Bench {
    async fn new() -> Bench {
        let name = support::unique_name("cs_fault");
        let db = support::create_database(&name, Some(i64::MAX)).await;
        let log = std::env::temp_dir().join(format!("{name}.log"));
        Bench {
            name,
            db,
            instances: Vec::new(),
            log,
        }
    }

    fn exchange(&self) -> String {
        format!("{}_x", self.name)
    }

    fn queue(&self) -> String {
        format!("{}_q", self.name)
    }

    /// Starts one more `candystore serve`; `rabbit_url` and `database_url` may go
    /// through a proxy.
    fn spawn(&mut self, rabbit_url: &str, database_url: &str) -> usize {
        let child = Command::new(env!("CARGO_BIN_EXE_candystore"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // Every instance of one store signs with the same key.
            .env(
                "SIGNING_KEY_FILE",
                std::env::temp_dir().join(format!("{}.key", self.name)),
            )
            .env("DATABASE_URL", database_url)
            .env("RABBIT_URL", rabbit_url)
            .env("RABBIT_EXCHANGE", self.exchange())
            .env("RABBIT_QUEUE", self.queue())
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", "0")
            .env("METRICS_PORT", "0")
            .env("FLUSH_INTERVAL", "20ms")
            .env("RETRY_MAX_BACKOFF", "1s")
            .env("SHUTDOWN_TIMEOUT", "10s")
            .env("LOG_FORMAT", "json")
            .env(
                "LOG_LEVEL",
                std::env::var("FAULT_LOG_LEVEL").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("open the instance log"),
            )
            .spawn()
            .expect("start candystore serve");
        self.instances.push(child);
        self.instances.len() - 1
    }

    /// Asserts that some instance logged one of `messages` (the fault was met, and handled).
    fn logged(&self, messages: &[&str]) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            messages.iter().any(|m| log.contains(m)),
            "none of {messages:?} in the instances' log:\n{}",
            log.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }

    fn db_url(&self) -> String {
        format!("{PG}/{}", self.name)
    }

    fn pid(&self, i: usize) -> String {
        self.instances[i].id().to_string()
    }

    fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid(i)])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGKILL, and reap it.
    fn kill9(&mut self, i: usize) {
        self.instances[i].kill().unwrap();
        self.instances[i].wait().unwrap();
    }

    /// Waits until `n` consumers are on the queue.
    async fn consumers(&self, n: u32) {
        wait(Duration::from_secs(30), "consumers", || async {
            queue_state(&self.queue())
                .await
                .is_some_and(|(_, c)| c >= n)
        })
        .await;
    }

    async fn stored(&self, run_id: &str) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM events WHERE id LIKE $1",
                &[&format!("{run_id}-%")],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn wait_stored(&self, run_id: &str, n: i64, within: Duration) {
        wait(within, "events stored", || async {
            self.stored(run_id).await >= n
        })
        .await;
    }

    /// Publishes `count` events at `rate`/s (0: as fast as confirms allow), each
    /// confirmed by the broker. Returns the run id.
    fn publish(&self, count: u64, rate: u64) -> tokio::task::JoinHandle<String> {
        let exchange = self.exchange();
        tokio::spawn(async move {
            let run_id = uuid::Uuid::new_v4().simple().to_string();
            let publisher = Publisher::connect(AMQP, &exchange).await.unwrap();
            publisher
                .publish_load(&LoadSpec {
                    count,
                    size: 512,
                    rate,
                    generation: 0,
                    run_id: run_id.clone(),
                    shape: Default::default(),
                    without_time: false,
                    days_back: 0,
                })
                .await
                .unwrap();
            run_id
        })
    }

    /// The books, after every instance stopped cleanly: each of the `count`
    /// confirmed events stored once, nothing dead-lettered, the queue empty.
    async fn check(&mut self, run_id: &str, count: i64) {
        self.wait_stored(run_id, count, Duration::from_secs(90))
            .await;
        for i in 0..self.instances.len() {
            if self.instances[i].try_wait().unwrap().is_none() {
                self.signal(i, "-TERM");
                let started = Instant::now();
                while self.instances[i].try_wait().unwrap().is_none() {
                    assert!(
                        started.elapsed() < Duration::from_secs(20),
                        "clean shutdown"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let row = self
            .db
            .query_one(
                "SELECT count(*), count(DISTINCT (id, source)) FROM events WHERE id LIKE $1",
                &[&format!("{run_id}-%")],
            )
            .await
            .unwrap();
        let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
        let dead: i64 = self
            .db
            .query_one("SELECT count(*) FROM dead_letter", &[])
            .await
            .unwrap()
            .get(0);
        let (ready, _) = queue_state(&self.queue()).await.expect("the queue exists");
        println!(
            "books: published {count}, stored {rows} ({distinct} distinct), dead letters {dead}, left in queue {ready}"
        );
        assert_eq!(rows, count, "lost 0");
        assert_eq!(distinct, rows, "duplicated 0");
        assert_eq!(dead, 0, "nothing dead-lettered");
        assert_eq!(ready, 0, "queue drained");
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{}.key", self.name)));
        for child in &mut self.instances {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var("FAULT_KEEP_LOGS").is_err() {
            let _ = std::fs::remove_file(&self.log);
        }
        support::remove_everything(&self.name, &self.exchange(), &self.queue());
    }
}

async fn queue_state(queue: &str) -> Option<(u32, u32)> {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok();
    let _ = conn.close(200, "bye".into()).await;
    q.map(|q| (q.message_count(), q.consumer_count()))
}

async fn wait<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const N: u64 = 6_000;
const RATE: u64 = 1_000;

#[tokio::test]
async fn kill_9_mid_batch_then_restart() {
    let mut b = Bench::new().await;
    let i = b.spawn(AMQP, &b.db_url());
    b.consumers(1).await;
    let run = b.publish(N, RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill9(i);
    b.spawn(AMQP, &b.db_url());
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
}

#[tokio::test]
async fn sigstop_past_the_broker_heartbeat_then_sigcont() {
    let mut b = Bench::new().await;
    let i = b.spawn(&format!("{AMQP}?heartbeat=2"), &b.db_url());
    b.consumers(1).await;
    let run = b.publish(N, RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.signal(i, "-STOP");
    // The broker drops a client that missed two heartbeats (4 s here).
    tokio::time::sleep(Duration::from_secs(8)).await;
    b.signal(i, "-CONT");
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
    b.logged(&["broker connection lost"]);
}

#[tokio::test]
async fn broker_connections_closed() {
    let mut b = Bench::new().await;
    b.spawn(AMQP, &b.db_url());
    b.consumers(1).await;
    let run = b.publish(N, RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every connection named candystore (the publisher's is not).
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in list.lines().filter(|l| l.contains("candystore")) {
        let pid = line.split_whitespace().next().unwrap();
        rabbitmqctl(&["close_connection", pid, "fault suite"]);
        closed += 1;
    }
    assert!(closed >= 1, "found the service's connection: {list}");
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
    b.logged(&["broker connection lost"]);
}

#[tokio::test]
async fn broker_restart() {
    let mut b = Bench::new().await;
    b.spawn(AMQP, &b.db_url());
    b.consumers(1).await;
    // Publish all first (confirmed = persisted), then restart the broker mid-ingest.
    let run_id = b.publish(N, 0).await.unwrap();
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    b.check(&run_id, N as i64).await;
    b.logged(&["broker connection lost"]);
}

#[tokio::test]
async fn queue_deleted_under_the_consumer() {
    let mut b = Bench::new().await;
    b.spawn(AMQP, &b.db_url());
    b.consumers(1).await;
    let first = b.publish(1_000, 0).await.unwrap();
    b.wait_stored(&first, 1_000, Duration::from_secs(30)).await;
    rabbitmqctl(&["delete_queue", &b.queue()]);
    // The service declares and binds its queue again, and consumes.
    b.consumers(1).await;
    let run_id = b.publish(N, RATE).await.unwrap();
    b.check(&run_id, N as i64).await;
    assert_eq!(b.stored(&first).await, 1_000);
    b.logged(&["broker connection lost"]);
}

#[tokio::test]
async fn postgresql_backends_terminated() {
    let mut b = Bench::new().await;
    b.spawn(AMQP, &b.db_url());
    b.consumers(1).await;
    let run = b.publish(N, RATE);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    }
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
    b.logged(&[
        "writer connection closed by the server",
        "batch write failed; retrying",
    ]);
}

#[tokio::test]
async fn a_lock_held_on_events_for_30_seconds() {
    let mut b = Bench::new().await;
    b.spawn(AMQP, &b.db_url());
    b.consumers(1).await;
    let run = b.publish(N, RATE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let locker = connect(&b.db_url()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    locker.batch_execute("COMMIT").await.unwrap();
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
    b.logged(&["lock_timeout"]);
}

/// Runs one proxy fault on the link to `upstream` (the broker or the database).
async fn proxy_fault(to_broker: bool, mode: Mode, hold: Duration) {
    let mut b = Bench::new().await;
    let upstream = if to_broker { AMQP_ADDR } else { PG_ADDR };
    let proxy = Proxy::start(upstream).await;
    let (rabbit, db) = if to_broker {
        (
            format!("amqp://guest:guest@{}/%2f?heartbeat=2", proxy.addr),
            b.db_url(),
        )
    } else {
        (
            AMQP.to_owned(),
            format!("postgres://postgres@{}/{}", proxy.addr, b.name),
        )
    };
    b.spawn(&rabbit, &db);
    b.consumers(1).await;
    let run = b.publish(N, RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(mode);
    tokio::time::sleep(hold).await;
    proxy.set(Mode::Pass);
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
    b.logged(if to_broker {
        &["broker connection lost"]
    } else {
        &[
            "batch write failed; retrying",
            "writer connection closed by the server",
        ]
    });
}

#[tokio::test]
async fn proxy_stalls_the_broker_link() {
    proxy_fault(true, Mode::Stall, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn proxy_half_closes_the_broker_link_towards_the_broker() {
    proxy_fault(true, Mode::HalfCloseUpstream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn proxy_half_closes_the_broker_link_towards_candystore() {
    proxy_fault(true, Mode::HalfCloseDownstream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn proxy_stalls_the_database_link() {
    proxy_fault(false, Mode::Stall, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn proxy_half_closes_the_database_link_towards_postgresql() {
    proxy_fault(false, Mode::HalfCloseUpstream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn proxy_half_closes_the_database_link_towards_candystore() {
    proxy_fault(false, Mode::HalfCloseDownstream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn three_instances_with_one_killed() {
    let mut b = Bench::new().await;
    for _ in 0..3 {
        b.spawn(AMQP, &b.db_url());
    }
    b.consumers(3).await;
    let run = b.publish(N, RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill9(1);
    let run_id = run.await.unwrap();
    b.check(&run_id, N as i64).await;
}
