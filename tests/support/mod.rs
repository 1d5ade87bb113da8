//! What every test crate shares (`tests/it`, `tests/faults`, the benches): where
//! the servers are, a connection, a database of one's own, the teardown that
//! leaves nothing behind, and the link-fault proxy. Each crate includes it with
//! `#[path]` and uses part of it.
#![allow(dead_code)]

pub mod proxy;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use tokio_postgres::{Client, NoTls};

/// The machine's PostgreSQL (trust auth) and RabbitMQ.
pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The same servers as socket addresses, for the proxy.
pub const PG_ADDR: &str = "127.0.0.1:5432";
pub const AMQP_ADDR: &str = "127.0.0.1:5672";

/// A name no other test uses: its database, and its exchange and queue
/// (`{name}_x`, `{name}_q`).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Creates database `name` and connects to it, migrated up to version `upto`
/// (`None`: not migrated).
pub async fn create_database(name: &str, upto: Option<i64>) -> Client {
    connect(&format!("{PG}/postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let mut db = connect(&format!("{PG}/{name}")).await;
    if let Some(upto) = upto {
        candystore::schema::migrate_with(
            &mut db,
            candystore::storage::PartitionInterval::Day,
            upto,
        )
        .await
        .expect("migrate test database");
    }
    db
}

/// Removes a test's queue (and its `.parked` queue), exchange and database,
/// whatever state they are in. Blocking: it runs on a thread of its own, since
/// a `Drop` may run on a runtime thread, or while unwinding.
pub fn remove_everything(database: &str, exchange: &str, queue: &str) {
    let (database, exchange, queue) = (database.to_owned(), exchange.to_owned(), queue.to_owned());
    on_a_thread_of_its_own(async move {
        remove_from_the_broker(&exchange, &queue).await;
        if let Ok((admin, conn)) = tokio_postgres::connect(&format!("{PG}/postgres"), NoTls).await {
            tokio::spawn(conn);
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .await;
        }
    });
}

/// Removes a queue (and its `.parked` queue) and an exchange a test declared,
/// whatever state they are in; blocking, like [`remove_everything`].
pub fn remove_queue_and_exchange(exchange: &str, queue: &str) {
    let (exchange, queue) = (exchange.to_owned(), queue.to_owned());
    on_a_thread_of_its_own(async move { remove_from_the_broker(&exchange, &queue).await });
}

async fn remove_from_the_broker(exchange: &str, queue: &str) {
    if let Ok(conn) = Connection::connect(AMQP, ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in [queue.to_owned(), format!("{queue}.parked")] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// Runs `work` to its end on a runtime of its own, on a thread of its own.
fn on_a_thread_of_its_own(work: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
    .join()
    .ok();
}

/// A database of its own for a test that does not need the whole service.
pub struct TempDb {
    pub name: String,
    pub url: String,
    admin: Client,
}

impl TempDb {
    /// Creates the database; migrates it when `migrated`.
    pub async fn new(migrated: bool) -> Self {
        let name = unique_name("cs_test");
        create_database(&name, migrated.then_some(i64::MAX)).await;
        let admin = connect(&format!("{PG}/postgres")).await;
        let url = format!("{PG}/{name}");
        Self { name, url, admin }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    pub async fn drop_it(self) {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .expect("drop test database");
    }
}

/// A directory of its own for an embedded store's file, removed on drop.
pub struct TempSqlite {
    dir: std::path::PathBuf,
    pub path: std::path::PathBuf,
}

impl TempSqlite {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("cs_test_sqlite"));
        std::fs::create_dir_all(&dir).expect("create the store's directory");
        let path = dir.join("candystore.db");
        Self { dir, path }
    }

    /// `DATABASE_URL` for the file.
    pub fn url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    /// A connection of the test's own to look at the file.
    pub fn look(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the store's file")
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `candystore ARGS` with nothing of the test's own environment but PATH, and
/// the settings in `env`.
pub fn candystore(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_candystore"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied());
    command
}

/// [`candystore`] run to its end: (exit code, stdout, stderr).
pub async fn run_candystore(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::from(candystore(args, env))
        .output()
        .await
        .expect("run candystore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
