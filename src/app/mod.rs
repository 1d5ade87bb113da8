//! Wiring and start-up order: schema check, pools, metrics, the bounded channel,
//! the sink, the source, the HTTP servers. And the shutdown order, intake first:
//! not ready → cancel the consumer → the sink flushes, commits, acks → close the
//! broker connection → stop the HTTP servers → stop the live tail and the jobs (each after
//! the step it is in), all within SHUTDOWN_TIMEOUT.

pub mod supervise;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::supervise::Supervisor;
use crate::api::{self, ApiState, Lifecycle};
use crate::config::{Database, Settings, redact_url};
use crate::db;
use crate::jobs;
use crate::metrics::Metrics;
use crate::model::replay_mark;
use crate::schema;
use crate::sink::batch::Limits;
use crate::sink::{self, SinkOptions};
use crate::source::amqp::{self, BrokerLink, BrokerStatus, SourceConfig};
use crate::store::{self, Writer};

/// Connections of the probes' own pool (`/health`, `/ready`).
const PROBE_POOL_SIZE: usize = 2;

/// Start-up choices that are not settings. A release build has none; the tests
/// build with the `fault-injection` feature, which adds the faults they inject.
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// A fault to inject, for the tests of supervision.
    #[cfg(feature = "fault-injection")]
    pub fault: Option<Fault>,
}

impl AppOptions {
    /// Whether `fault` is to be injected (never, without the feature).
    #[allow(unused_variables)]
    fn injects(&self, fault: Fault) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.fault == Some(fault);
        #[cfg(not(feature = "fault-injection"))]
        false
    }
}

/// Faults the tests inject into a running pipeline (`fault-injection` builds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The sink panics when its first record arrives (that record stays unacked).
    SinkPanics,
    /// The audit tree's job panics at its first step.
    AuditTreePanics,
}

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("shutdown took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("a pipeline task failed: {0}")]
    Task(String),
}

/// A started service.
pub struct Running {
    pub api_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    supervisor: Arc<Supervisor>,
    stop_intake: CancellationToken,
    /// Stops the live tail's poller.
    tail_stop: CancellationToken,
    /// Stops the background jobs, each after the step it is in.
    jobs_stop: CancellationToken,
    /// The background jobs (maintenance, audit tree, catalog), each supervised.
    jobs: Vec<JoinHandle<Option<()>>>,
    source: JoinHandle<Option<Option<BrokerLink>>>,
    sink: JoinHandle<Option<()>>,
    servers: Vec<(ServerHandle, JoinHandle<std::io::Result<()>>)>,
}

/// The checkpoint signing key (SIGNING_KEY_FILE), created on first start; its
/// public key is logged.
pub fn signing_key(
    settings: &Settings,
) -> Result<crate::audit::note::SigningKey, crate::config::ConfigError> {
    let origin = settings
        .checkpoint_origin
        .clone()
        .unwrap_or_else(|| format!("candystore/{}", store_name(settings)));
    let path = &settings.signing_key_file;
    let (key, created) = crate::audit::note::load_or_create(path, &origin).map_err(|e| {
        crate::config::ConfigError::Refused {
            name: "SIGNING_KEY_FILE",
            reason: crate::telemetry::error_chain(&e),
        }
    })?;
    tracing::info!(
        public_key = %key.verifier().encode(),
        file = %path.display(),
        created,
        "checkpoints are signed with this key (keep the file out of the database's reach; give verifiers the public key)"
    );
    Ok(key)
}

/// The store's name in the default checkpoint origin: the PostgreSQL database,
/// or the embedded file's name without its extension.
fn store_name(settings: &Settings) -> String {
    match settings.database() {
        Database::Postgres(url) => db::pg_config(url)
            .ok()
            .and_then(|pg| pg.config.get_dbname().map(str::to_owned))
            .unwrap_or_else(|| "candystore".to_owned()),
        Database::Sqlite(path) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "candystore".to_owned()),
    }
}

/// What start-up prepared of the store (one value, for the start-up only).
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Postgres {
        pg: db::PgTarget,
        pool: deadpool_postgres::Pool,
        probe_pool: deadpool_postgres::Pool,
    },
    Sqlite(store::sqlite::Sqlite),
}

/// The URL a person on this machine opens for a listening address (an
/// unspecified address, 0.0.0.0 or ::, is reached on the loopback).
fn local_url(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

/// Starts every part of `candystore serve` and returns once it is consuming.
pub async fn start(settings: Settings, opts: AppOptions) -> anyhow::Result<Running> {
    for (name, value) in settings.redacted() {
        tracing::debug!(setting = name, value = %value, "setting");
    }
    let changed: Vec<String> = settings
        .redacted_changes()
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    tracing::info!(
        settings = %changed.join(" "),
        "candystore starting; settings not at their default listed (all of them at LOG_LEVEL=debug)"
    );
    let keyring = crate::audit::attest::Keyring::new(&settings.audit_keys).map(Arc::new);
    // The signing key is read once the store answers (a store that cannot be
    // reached is the first thing to say).
    let (prepared, replay_key, signer) = match settings.database() {
        Database::Postgres(url) => {
            let pg = db::pg_config(url)?;
            let client = db::connect(&pg)
                .await
                .context("cannot connect to DATABASE_URL")?;
            schema::check_schema(&client).await?;
            let signer = Arc::new(signing_key(&settings)?);
            if let Err(e) =
                crate::audit::trail::check_start(&client, &signer, keyring.is_some()).await
            {
                return Err(match e.variable() {
                    Some(name) => crate::config::ConfigError::Refused {
                        name,
                        reason: crate::telemetry::error_chain(&e),
                    }
                    .into(),
                    None => anyhow::Error::new(e),
                });
            }
            let replay_key = replay_mark::load(&client)
                .await
                .context("cannot read the replay secret")?;
            // The API may read as another (read-only) role, or from a replica.
            let read_pg = match &settings.read_database_url {
                Some(url) => db::pg_config(url)?,
                None => pg.clone(),
            };
            let pool = db::read_pool(read_pg.clone(), settings.database_read_pool_size)?;
            let probe_pool = db::read_pool(read_pg, PROBE_POOL_SIZE)?;
            (
                Prepared::Postgres {
                    pg,
                    pool,
                    probe_pool,
                },
                replay_key,
                signer,
            )
        }
        Database::Sqlite(path) => {
            let file = store::sqlite::Sqlite::own(path)
                .with_context(|| format!("cannot use the embedded store {}", path.display()))?;
            let secret = store::sqlite::replay::secret(&file.connect(store::sqlite::Role::Read)?)
                .context("cannot read the replay secret")?;
            let signer = Arc::new(signing_key(&settings)?);
            (
                Prepared::Sqlite(file),
                secret.map(|s| replay_mark::ReplayKey::new(&s)),
                signer,
            )
        }
    };
    // Every instance derives the same ticket key from the installation's secret;
    // without one yet (migration 0017 pending), a key of this process.
    let tickets = Arc::new(api::tickets::Tickets::new(&match &replay_key {
        Some(k) => k.derive(b"stream tickets"),
        None => rand::random(),
    }));
    if replay_key.is_none() && matches!(prepared, Prepared::Postgres { .. }) {
        tracing::warn!(
            "no replay secret yet (migration 0017 pending): replayed deliveries are stored and absorbed as duplicates"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let broker = Arc::new(BrokerStatus::default());
    let lifecycle = Arc::new(Lifecycle::default());

    if settings.batch_size > settings.batch_rows() {
        tracing::warn!(
            batch_size = settings.batch_size,
            prefetch_count = settings.prefetch_count,
            "BATCH_SIZE is above PREFETCH_COUNT; batches are capped at PREFETCH_COUNT rows"
        );
    }
    // The channel never needs more room than the broker may have unacked with us.
    let (tx, rx) = mpsc::channel(usize::from(settings.prefetch_count));
    let sink_opts = SinkOptions {
        limits: Limits {
            rows: settings.batch_rows(),
            bytes: settings.max_batch_bytes,
            age: settings.flush_interval,
        },
        retry_max_backoff: settings.retry_max_backoff,
    };
    // Writers wake the maintenance job when they leave rows in the default partition.
    let maintenance_wake = crate::jobs::Wake::default();
    // The embedded store's writer thread, for its catalog job too.
    let mut embedded_writer = None;
    let writers: Vec<Writer> = match &prepared {
        Prepared::Postgres { pg, .. } => (0..settings.write_concurrency)
            .map(|_| {
                Writer::Postgres(Box::new(
                    store::postgres::write::Writer::new(pg.clone())
                        .attesting(keyring.clone())
                        .making_partitions(settings.partition_layout(), maintenance_wake.clone()),
                ))
            })
            .collect(),
        // One writer thread; each handle queues a batch at it, so the next
        // batch is prepared while one commits.
        Prepared::Sqlite(file) => {
            let handle =
                store::sqlite::write::Handle::start_counted(file, Some(&metrics.writers_connected))
                    .context("cannot start the embedded store's writer")?
                    .attesting(keyring.clone());
            embedded_writer = Some(handle.clone());
            (0..settings.write_concurrency)
                .map(|_| Writer::Sqlite(handle.clone()))
                .collect()
        }
    };
    let supervisor = Arc::new(Supervisor::default());
    let sink = {
        let supervisor = supervisor.clone();
        let metrics = metrics.clone();
        let panics = opts.injects(Fault::SinkPanics);
        tokio::spawn(async move {
            supervisor
                .watch("sink", async move {
                    let mut rx = rx;
                    if panics {
                        let _ = rx.recv().await;
                        panic!("injected fault: the sink panicked");
                    }
                    sink::run(rx, writers, sink_opts, metrics).await
                })
                .await
        })
    };
    {
        // A failed pipeline makes this instance unready at once.
        let (supervisor, lifecycle) = (supervisor.clone(), lifecycle.clone());
        let failures = metrics.task_failures.clone();
        tokio::spawn(async move {
            supervisor.failed().await;
            lifecycle.set_failed();
            if let Some(task) = supervisor.failed_task() {
                failures.with_label_values(&[task]).inc();
            }
        });
    }

    let stop_intake = CancellationToken::new();
    let source_cfg = SourceConfig {
        url: settings.rabbit_url.clone(),
        exchange: settings.rabbit_exchange.clone(),
        queue: settings.rabbit_queue.clone(),
        bindings: settings.rabbit_bindings.clone(),
        queue_type: settings.rabbit_queue_type,
        delivery_limit: settings.rabbit_delivery_limit,
        prefetch_count: settings.prefetch_count,
        retry_max_backoff: settings.retry_max_backoff,
        queue_depth_interval: settings.queue_depth_interval,
        max_inflight_bytes: settings.max_inflight_bytes,
        replay_key,
    };
    let source = {
        let supervisor = supervisor.clone();
        let run = amqp::run(
            source_cfg,
            tx,
            metrics.clone(),
            broker.clone(),
            stop_intake.clone(),
        );
        tokio::spawn(async move { supervisor.watch("source", run).await })
    };

    let mut servers = Vec::new();
    let tail_stop = CancellationToken::new();
    // The background jobs: each supervised like the pipeline (one that panics or
    // ends turns /ready 503 and the process exits for its supervisor to restart
    // it: every job is vital, see docs/lifecycle.md), each awaited at shutdown.
    let jobs_stop = CancellationToken::new();
    let mut jobs = Vec::new();
    let mut supervise_job = |name: &'static str, run| {
        let supervisor = supervisor.clone();
        jobs.push(tokio::spawn(
            async move { supervisor.watch(name, run).await },
        ));
    };
    let after_tree_step = || crate::audit::job::AfterStep {
        every: settings.seal_interval,
        publisher: crate::audit::publish::Publisher::new(
            settings.checkpoint_dir.clone(),
            settings.witness_urls.clone(),
        ),
        metrics: metrics.clone(),
    };
    // The embedded store's catalog, retention and audit tree, each in steps on
    // its writer thread between batches.
    if let (Some(handle), Prepared::Sqlite(file)) = (embedded_writer, &prepared) {
        supervise_job(
            "catalog",
            Box::pin(store::sqlite::write::catalog_job(
                handle.clone(),
                jobs_stop.clone(),
            )) as JobRun,
        );
        supervise_job(
            "maintenance",
            Box::pin(store::sqlite::retention::retention_job(
                handle.clone(),
                store::sqlite::retention::Options {
                    path: file.path().to_owned(),
                    retention: settings.retention,
                    archive_dir: settings.archive_dir.clone(),
                    keyring: keyring.clone(),
                },
                settings.maintenance_interval,
                jobs_stop.clone(),
            )),
        );
        supervise_job(
            "audit-tree",
            Box::pin(store::sqlite::write::tree_job(
                handle,
                crate::store::sqlite::read::Reader::new(file.clone(), 1),
                crate::audit::job::Tree::new(signer.clone(), keyring.clone()),
                after_tree_step(),
                jobs_stop.clone(),
            )),
        );
    }
    // The background jobs of PostgreSQL.
    if let Prepared::Postgres { pg, .. } = &prepared {
        // Partitions ahead, the default partition drained, RETENTION: now and on schedule.
        let maintenance = jobs::run_forever(
            pg.clone(),
            jobs_stop.clone(),
            crate::storage::maintain::MaintenanceJob {
                opts: crate::storage::maintain::Options {
                    layout: settings.partition_layout(),
                    retention: settings.retention,
                    archive_dir: settings.archive_dir.clone(),
                    keyring: keyring.clone(),
                },
                every: settings.maintenance_interval,
                metrics: metrics.clone(),
                wake: maintenance_wake,
            },
        );
        supervise_job("maintenance", Box::pin(maintenance) as JobRun);
        // The audit tree, appended behind ingest and signed every SEAL_INTERVAL.
        {
            let run = jobs::run_forever(
                pg.clone(),
                jobs_stop.clone(),
                crate::audit::job::TreeJob {
                    #[cfg(feature = "fault-injection")]
                    panic_at_first_step: opts.injects(Fault::AuditTreePanics),
                    tree: crate::audit::job::Tree::new(signer.clone(), keyring.clone()),
                    after: after_tree_step(),
                },
            );
            supervise_job("audit-tree", Box::pin(run));
        }
        // The catalog of event types and sources, counted behind ingest.
        supervise_job(
            "catalog",
            Box::pin(jobs::run_forever(
                pg.clone(),
                jobs_stop.clone(),
                crate::storage::catalog::CatalogJob,
            )),
        );
    }
    let store = match &prepared {
        Prepared::Postgres {
            pool, probe_pool, ..
        } => api::Store::Postgres(api::Postgres {
            pool: pool.clone(),
            probe_pool: probe_pool.clone(),
            table_sizes: Arc::default(),
            partitions: Arc::default(),
        }),
        Prepared::Sqlite(file) => api::Store::Sqlite(crate::store::sqlite::read::Reader::new(
            file.clone(),
            settings.database_read_pool_size,
        )),
    };
    let state = ApiState {
        tail: api::tail::TailHub::start(store.tail_source(), tail_stop.clone()),
        store: store.clone(),
        streams: Arc::new(api::stream::Streams::new(
            api::stream::StreamLimits {
                max_clients: settings.stream_max_clients,
                write_timeout: settings.stream_write_timeout,
                max_lifetime: settings.stream_max_lifetime,
            },
            metrics.streams_open.clone(),
        )),
        large_reads: Arc::new(api::large::LargeReads::new(metrics.large_reads.clone())),
        broker,
        lifecycle: lifecycle.clone(),
        database_display: redact_url(&settings.database_url),
        public_key: signer.verifier().encode(),
        tickets,
    };
    let (api_server, api_addr) = api::serve_api(
        SocketAddr::new(settings.api_host, settings.api_port),
        state,
        metrics.clone(),
        api::auth::Auth::new(&settings.api_tokens),
        settings.cors_allowed_origins.clone(),
    )
    .with_context(|| {
        format!(
            "cannot listen on API_HOST:API_PORT {}:{}",
            settings.api_host, settings.api_port
        )
    })?;
    servers.push((api_server.handle(), tokio::spawn(api_server)));
    let metrics_addr = if settings.metrics_enabled {
        let host = settings.metrics_host.unwrap_or(settings.api_host);
        let (server, addr) = api::serve_metrics(
            SocketAddr::new(host, settings.metrics_port),
            metrics.clone(),
            api::MetricsEndpoint {
                store,
                auth: api::auth::Auth::new(&settings.metrics_tokens),
            },
        )
        .with_context(|| {
            format!(
                "cannot listen on METRICS_HOST:METRICS_PORT {host}:{}",
                settings.metrics_port
            )
        })?;
        servers.push((server.handle(), tokio::spawn(server)));
        Some(addr)
    } else {
        None
    };
    lifecycle.set_serving();
    let api_url = local_url(api_addr);
    tracing::info!(
        api = %api_url,
        docs = %format!("{api_url}/docs"),
        metrics = %metrics_addr.map(|a| format!("{}/metrics", local_url(a))).unwrap_or_else(|| "off".into()),
        store = %crate::config::redact_url(&settings.database_url),
        exchange = %settings.rabbit_exchange,
        queue = %settings.rabbit_queue,
        "candystore serving"
    );
    Ok(Running {
        api_addr,
        metrics_addr,
        metrics,
        settings,
        lifecycle,
        supervisor,
        stop_intake,
        tail_stop,
        jobs_stop,
        jobs,
        source,
        sink,
        servers,
    })
}

/// A background job's loop, boxed so that the jobs share one spawner.
type JobRun = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl Running {
    /// The watcher of the pipeline tasks: `failed()` resolves when one of them
    /// ended or panicked before shutdown.
    pub fn supervisor(&self) -> Arc<Supervisor> {
        self.supervisor.clone()
    }

    /// Stops in order and waits, at most SHUTDOWN_TIMEOUT. On timeout whatever was
    /// not committed stays unacked, and the broker redelivers it.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let limit = self.settings.shutdown_timeout;
        let Running {
            lifecycle,
            supervisor,
            stop_intake,
            tail_stop,
            jobs_stop,
            jobs,
            source,
            sink,
            servers,
            ..
        } = self;
        supervisor.stopping();
        lifecycle.set_stopping();
        let mut aborts = vec![source.abort_handle(), sink.abort_handle()];
        aborts.extend(jobs.iter().map(|j| j.abort_handle()));
        let handles: Vec<ServerHandle> = servers.iter().map(|(h, _)| h.clone()).collect();
        let ordered = async {
            stop_intake.cancel();
            let link = source
                .await
                .map_err(|e| ShutdownError::Task(e.to_string()))?
                .flatten();
            sink.await.map_err(|e| ShutdownError::Task(e.to_string()))?;
            if let Some(link) = link {
                link.close().await;
            }
            for (handle, join) in servers {
                handle.stop(true).await;
                let _ = join.await;
            }
            tail_stop.cancel();
            // Each job finishes the step it is in (an archive is written whole).
            jobs_stop.cancel();
            for job in jobs {
                job.await.map_err(|e| ShutdownError::Task(e.to_string()))?;
            }
            Ok(())
        };
        let result = tokio::time::timeout(limit, ordered)
            .await
            .unwrap_or(Err(ShutdownError::Timeout(limit)));
        match &result {
            Ok(()) => tracing::info!("shutdown complete"),
            Err(_) => {
                // Whatever is still held is dropped unacked; the broker redelivers it.
                for a in aborts {
                    a.abort();
                }
                for h in handles {
                    h.stop(false).await;
                }
            }
        }
        result
    }

    /// Stops at once without waiting, from synchronous code (a test's `Drop`): the
    /// tasks end when the runtime next polls them or shuts down.
    pub fn abort_now(self) {
        self.tail_stop.cancel();
        self.jobs_stop.cancel();
        for job in &self.jobs {
            job.abort();
        }
        self.source.abort();
        self.sink.abort();
        for (handle, join) in self.servers {
            // The stop command is sent before the returned future is first polled.
            drop(handle.stop(false));
            join.abort();
        }
    }

    /// Stops at once, like a crash: nothing is flushed or acked.
    pub async fn abort(self) {
        self.tail_stop.cancel();
        self.jobs_stop.cancel();
        for job in &self.jobs {
            job.abort();
        }
        self.source.abort();
        self.sink.abort();
        let _ = self.source.await;
        let _ = self.sink.await;
        for (handle, join) in self.servers {
            handle.stop(false).await;
            let _ = join.await;
        }
    }
}
