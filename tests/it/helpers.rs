//! `spawn_app()`: the real service, in process, on port 0, with its own database,
//! exchange and queue, against the real PostgreSQL and RabbitMQ. Dropping the
//! handle removes the database, the exchange and the queue.

use std::time::Duration;

use candystore::app::{self, AppOptions, Running};
use candystore::config::Settings;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_postgres::Client;

pub use crate::support::proxy::{Mode, Proxy};
pub use crate::support::{AMQP, AMQP_ADDR, PG, PG_ADDR, TempDb, TempSqlite, connect};

/// The store a test runs the service on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Postgres,
    /// A file of the test's own (`DATABASE_URL=sqlite:PATH`).
    Sqlite,
}

/// `both_stores!(name)`: the async fn `name(On)` run as two tests,
/// `name::on_postgres` and `name::on_sqlite`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn on_postgres() {
                super::$name($crate::helpers::On::Postgres).await
            }
            #[tokio::test]
            async fn on_sqlite() {
                super::$name($crate::helpers::On::Sqlite).await
            }
        }
    )+};
}

pub struct TestApp {
    pub name: String,
    pub db_url: String,
    pub exchange: String,
    pub queue: String,
    pub db: Client,
    pub http: reqwest::Client,
    pub running: Option<Running>,
    pub publisher: candystore::source::publish::Publisher,
    /// The embedded store's file, when the service runs on one (`spawn_app_on`).
    pub sqlite: Option<TempSqlite>,
    extra: Vec<(String, String)>,
}

/// Starts the service with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[], AppOptions::default()).await
}

/// Starts the service with some settings changed.
pub async fn spawn_app_with(settings: &[(&str, &str)], opts: AppOptions) -> TestApp {
    spawn_app_prepared(settings, opts, i64::MAX, "").await
}

/// Starts the service on `on`, with some settings changed.
pub async fn spawn_app_on(on: On, settings: &[(&str, &str)], opts: AppOptions) -> TestApp {
    match on {
        On::Postgres => spawn_app_with(settings, opts).await,
        On::Sqlite => {
            let file = TempSqlite::new();
            let url = file.url();
            let mut all = settings.to_vec();
            all.push(("DATABASE_URL", &url));
            let mut app = spawn_app_prepared(&all, opts, i64::MAX, "").await;
            app.sqlite = Some(file);
            app
        }
    }
}

/// The deliveries a service losing its acks stores at most (see below).
pub const LOSING_ACKS_PREFETCH: u16 = candystore::source::prefetch::SLOW_START;

/// Starts the service with its broker link through a proxy that, once the
/// consumer is subscribed, swallows everything the service sends: it commits and
/// acks, and no ack reaches the broker, as when a process dies between the two.
/// After a crash, [`Proxy::reset`] closes its sockets, as a dead process's close.
///
/// Its prefetch is [`LOSING_ACKS_PREFETCH`] from the start: a change would need a
/// new subscription, which the proxy would swallow too, and the broker hands over
/// no more than that many deliveries without acks.
pub async fn spawn_app_losing_acks() -> (TestApp, Proxy) {
    let proxy = Proxy::start(AMQP_ADDR).await;
    let rabbit = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let prefetch = LOSING_ACKS_PREFETCH.to_string();
    let app = spawn_app_with(
        &[("RABBIT_URL", &rabbit), ("PREFETCH_COUNT", &prefetch)],
        AppOptions::default(),
    )
    .await;
    proxy.set(Mode::SwallowUpstream);
    (app, proxy)
}

/// Starts the service on a database migrated up to version `upto` only, after
/// running `prepare` (SQL) in it: an older schema, holding older rows.
pub async fn spawn_app_prepared(
    settings: &[(&str, &str)],
    opts: AppOptions,
    upto: i64,
    prepare: &str,
) -> TestApp {
    if let Ok(level) = std::env::var("TEST_LOG") {
        candystore::telemetry::init(&level, candystore::config::LogFormat::Console, true);
    }
    let name = crate::support::unique_name("cs_test");
    let db_url = format!("{PG}/{name}");
    let db = crate::support::create_database(&name, Some(upto)).await;
    if !prepare.is_empty() {
        db.batch_execute(prepare)
            .await
            .expect("prepare the database");
    }
    let exchange = format!("{name}_x");
    let queue = format!("{name}_q");
    let publisher = candystore::source::publish::Publisher::connect(AMQP, &exchange)
        .await
        .expect("connect publisher");
    let mut app = TestApp {
        name,
        db_url,
        exchange,
        queue,
        db,
        http: reqwest::Client::new(),
        running: None,
        publisher,
        sqlite: None,
        extra: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    app.start(opts).await;
    app
}

impl TestApp {
    /// This app's checkpoint signing key (its own, created on first start).
    pub fn key_file(&self) -> std::path::PathBuf {
        std::env::temp_dir()
            .join("candystore-test-keys")
            .join(format!("{}.key", self.name))
    }

    /// Changes a setting for the next `start`.
    pub fn set(&mut self, key: &str, value: &str) {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.to_string(), value.to_string()));
    }

    /// A counter or gauge's value for one label set (`{reason="rollback"}`
    /// matches lines holding `reason="rollback"`).
    pub async fn metric_labelled(&self, name: &str, label: &str) -> f64 {
        let body = self.metrics_text().await;
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The settings this app runs with; `extra` overrides the test defaults.
    pub fn settings(&self) -> Settings {
        let mut pairs: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.db_url.clone()),
            ("RABBIT_URL".into(), AMQP.into()),
            ("RABBIT_EXCHANGE".into(), self.exchange.clone()),
            ("RABBIT_QUEUE".into(), self.queue.clone()),
            ("API_HOST".into(), "127.0.0.1".into()),
            ("API_PORT".into(), "0".into()),
            ("METRICS_PORT".into(), "0".into()),
            ("FLUSH_INTERVAL".into(), "20ms".into()),
            ("RETRY_MAX_BACKOFF".into(), "500ms".into()),
            ("SHUTDOWN_TIMEOUT".into(), "20s".into()),
            (
                "SIGNING_KEY_FILE".into(),
                self.key_file().display().to_string(),
            ),
        ];
        // `{db}` in an override stands for this test's database name.
        pairs.extend(
            self.extra
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{db}", &self.name))),
        );
        Settings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Starts (or restarts) the service and waits until it consumes.
    pub async fn start(&mut self, opts: AppOptions) {
        assert!(self.running.is_none(), "already running");
        let running = app::start(self.settings(), opts)
            .await
            .expect("start candystore");
        self.running = Some(running);
        if self.running().metrics_addr.is_some() {
            self.wait_until(Duration::from_secs(10), || async {
                self.metric("candystore_consumer_connected").await == 1.0
            })
            .await;
        } else {
            self.wait_until(Duration::from_secs(10), || async {
                let r = self.http.get(self.api("/health")).send().await;
                r.is_ok_and(|r| r.status() == 200)
            })
            .await;
        }
    }

    /// The operators' handle on the service's store (the embedded file read
    /// beside the service).
    pub async fn ops_store(&self) -> candystore::ops::store::Store {
        use candystore::ops::store::Store;
        match &self.sqlite {
            Some(file) => Store::sqlite(&file.path, false).expect("open the file"),
            None => Store::Postgres(connect(&self.db_url).await),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("the app is running")
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://{}{}", self.running().api_addr, path)
    }

    /// The JSON body of `GET path` (whatever its status).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.api(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("the app is running");
        running.shutdown().await.expect("clean shutdown");
    }

    /// Abrupt stop, as on a crash: nothing flushed, nothing acked.
    pub async fn crash(&mut self) {
        let running = self.running.take().expect("the app is running");
        running.abort().await;
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.publish_with(routing_key, body, BasicProperties::default())
            .await;
    }

    pub async fn publish_with(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.publisher
            .publish(routing_key, body, props)
            .await
            .expect("publish");
    }

    /// A live-tail ticket (with `token` as the bearer, if given), and the status
    /// of the stream it opens.
    pub async fn open_stream_by_ticket(&self, token: Option<&str>) -> (String, u16) {
        let mut req = self.http.post(self.api("/events/stream/tickets"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let ticket: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        let t = ticket["ticket"].as_str().unwrap().to_owned();
        let stream = self
            .http
            .get(self.api(&format!("/events/stream?ticket={t}")))
            .send()
            .await
            .unwrap();
        (t, stream.status().as_u16())
    }

    /// Rows in `table` of the service's store.
    pub async fn count(&self, table: &str) -> i64 {
        if let Some(file) = &self.sqlite {
            return file
                .look()
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .expect("count rows");
        }
        self.db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count rows")
            .get(0)
    }

    /// The one text value `sql` selects from the service's store.
    pub async fn text(&self, sql: &str) -> String {
        if let Some(file) = &self.sqlite {
            return file
                .look()
                .query_row(sql, [], |r| r.get(0))
                .expect("one text value");
        }
        self.db.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// The one integer `sql` selects from the service's store.
    pub async fn int(&self, sql: &str) -> i64 {
        if let Some(file) = &self.sqlite {
            return file
                .look()
                .query_row(sql, [], |r| r.get(0))
                .expect("one integer");
        }
        self.db.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Waits until `table` holds at least `n` rows; returns the count.
    pub async fn wait_for_rows(&self, table: &str, n: i64) -> i64 {
        let mut last = 0;
        for _ in 0..600 {
            last = self.count(table).await;
            if last >= n {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{table} holds {last} rows after 30s, expected {n}");
    }

    pub async fn wait_until<F, Fut>(&self, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The value of an unlabelled metric, or the sum of a labelled one's series.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = self.metrics_text().await;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn metrics_text(&self) -> String {
        let addr = self.running().metrics_addr.expect("metrics enabled");
        let mut request = self.http.get(format!("http://{addr}/metrics"));
        if let Some((_, token)) = self.extra.iter().find(|(k, _)| k == "METRICS_TOKEN") {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics body")
    }

    /// Messages ready in the queue and consumers on it (a passive declare).
    pub async fn queue_state(&self) -> (u32, u32) {
        let conn = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let state = (q.message_count(), q.consumer_count());
        let _ = conn.close(200, "bye".into()).await;
        state
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let name = self.name.clone();
        let exchange = self.exchange.clone();
        let queue = self.queue.clone();
        if let Some(running) = self.running.take() {
            running.abort_now();
        }
        let _ = std::fs::remove_file(self.key_file());
        crate::support::remove_everything(&name, &exchange, &queue);
    }
}

/// A generation-1 envelope with the given id.
pub fn gen1(id: &str, event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "event_type": event_type,
        "source": "whisperlivekit",
        "target": "candybar",
        "timestamp": "2026-11-20T14:03:11.482Z",
        "session_id": "abc-123",
        "correlation_id": "7c4d58ac-4a34-4261-b7a7-a99cdf62813a",
        "data": { "text": "hello", "confidence": 0.93 }
    }))
    .unwrap()
}

/// An SSE id, `{txid}-{seq}`, as a pair that orders like the stream.
pub type SseId = (i64, i64);

pub fn sse_id(v: &str) -> SseId {
    let (txid, seq) = v.split_once('-').expect("an id of the form txid-seq");
    (txid.parse().unwrap(), seq.parse().unwrap())
}

/// Reads SSE events (id, data) from a streaming response until `n` arrived.
pub async fn read_sse(res: reqwest::Response, n: usize) -> Vec<(SseId, serde_json::Value)> {
    match read_sse_within(res, n, SSE_WAIT).await {
        Ok(events) => events,
        Err(short) => panic!("events arrive in time: {short}"),
    }
}

/// How long [`read_sse`] waits for its events. Generous: the tests run in
/// parallel on two cores, some writing a million rows.
pub const SSE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a stream had sent when it fell short of the events awaited.
#[derive(Debug)]
pub struct ShortStream {
    pub got: Vec<(SseId, serde_json::Value)>,
    pub wanted: usize,
    /// Why it stopped: the wait ran out, or the stream ended.
    pub reason: &'static str,
    /// Comment lines (`: keep-alive`, ...) the stream sent meanwhile.
    pub comments: usize,
}

impl std::fmt::Display for ShortStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of {} events, the last {:?}, {} comment lines",
            self.reason,
            self.got.len(),
            self.wanted,
            self.got.last().map(|(id, _)| *id),
            self.comments
        )
    }
}

/// Reads SSE events (id, data) until `n` arrived, or says what had arrived when
/// `wait` ran out or the stream ended.
pub async fn read_sse_within(
    res: reqwest::Response,
    n: usize,
    wait: std::time::Duration,
) -> Result<Vec<(SseId, serde_json::Value)>, ShortStream> {
    use futures::StreamExt;
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let mut comments = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < n {
        let short = |reason, got, comments| ShortStream {
            got,
            wanted: n,
            reason,
            comments,
        };
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
            Ok(None) => return Err(short("the stream ended", out, comments)),
            Err(_) => return Err(short("the wait ran out", out, comments)),
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            comments += block.lines().filter(|l| l.starts_with(':')).count();
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(sse_id);
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(|v| serde_json::from_str(v).unwrap());
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    Ok(out)
}

/// A rule in the database that decode cannot know about: events of `event_type`
/// are refused (SQLSTATE 22023, a data exception) until `DROP TRIGGER refuse ON events`.
pub async fn refuse_event_type(app: &TestApp, event_type: &str) {
    app.db
        .batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.event_type = '{event_type}' THEN RAISE EXCEPTION 'refused by test' USING ERRCODE = '22023'; END IF; \
               RETURN NEW; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();"
        ))
        .await
        .unwrap();
}

/// Peak RSS of a process, polled from /proc until it exits (VmHWM only grows).
pub async fn peak_rss_kb(
    mut child: tokio::process::Child,
) -> (std::process::ExitStatus, u64, String) {
    let pid = child.id().unwrap();
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            return (status, peak, err);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// `candystore serve` as a process of its own, on the test's database, exchange
/// and queue (the in-process service stopped first), so its peak RSS is its own.
pub struct ServedBinary {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pid: u32,
    watch: tokio::task::JoinHandle<(std::process::ExitStatus, u64, String)>,
}

impl ServedBinary {
    /// Starts it and waits until `/ready` answers.
    pub async fn start(app: &TestApp) -> Self {
        let settings = app.settings();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_candystore"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &settings.database_url)
            .env("RABBIT_URL", AMQP)
            .env("RABBIT_EXCHANGE", &app.exchange)
            .env("RABBIT_QUEUE", &app.queue)
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", port.to_string())
            .env("METRICS_PORT", "0")
            .env("SIGNING_KEY_FILE", app.key_file())
            .env("LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the candystore binary");
        let pid = child.id().unwrap();
        let watch = tokio::spawn(peak_rss_kb(child));
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{base}/ready")).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the service did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { base, pid, watch }
    }

    /// Stops it (SIGTERM) and returns its peak RSS in kB.
    pub async fn stop(self) -> u64 {
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let (_, peak_kb, _) = self.watch.await.unwrap();
        peak_kb
    }
}

/// Follows `path` (which has a query string) through its `next_cursor`s and returns
/// the ids of every page, in order.
pub async fn walk_cursors(app: &TestApp, path: &str) -> Vec<String> {
    let mut walked = Vec::new();
    let mut next = path.to_owned();
    loop {
        let res = app.http.get(app.api(&next)).send().await.unwrap();
        let status = res.status().as_u16();
        let page: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(status, 200, "{next}: {page}");
        walked.extend(event_ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => next = format!("{path}&cursor={c}"),
            None => return walked,
        }
    }
}

/// The ids of a page's events, in order.
pub fn event_ids(page: &serde_json::Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}
