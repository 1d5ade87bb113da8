//! The HTTP side: the REST API on API_PORT and `/metrics` on METRICS_PORT, both
//! actix-web, both reading only. The API queries through its own read pool and
//! never touches the writer's connection.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod dead_letters;
pub mod events;
pub mod health;
pub mod large;
pub mod openapi;
pub mod problem;
pub mod query;
pub mod sizes;
pub mod stream;
pub mod tail;
pub mod tickets;
pub mod timeline;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use actix_web::dev::{Server, Service};
use actix_web::{App, HttpResponse, HttpServer, web};
use deadpool_postgres::Pool;

use crate::metrics::Metrics;
use crate::source::amqp::BrokerStatus;

/// Where the process is in its life, for `/ready`.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    const STARTING: u8 = 0;
    const SERVING: u8 = 1;
    const STOPPING: u8 = 2;
    const FAILED: u8 = 3;

    pub fn set_serving(&self) {
        self.0.store(Self::SERVING, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        // A failure stays the reason shown, even while shutting down.
        let _ = self.0.fetch_max(Self::STOPPING, Ordering::SeqCst);
    }

    /// A pipeline task failed: not ready again until the process restarts.
    pub fn set_failed(&self) {
        self.0.store(Self::FAILED, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::SERVING
    }

    pub fn phase(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            Self::STARTING => "starting",
            Self::SERVING => "serving",
            Self::STOPPING => "shutting down",
            _ => "a pipeline task failed; the process is exiting to be restarted",
        }
    }
}

/// The store the API reads.
#[derive(Clone)]
pub enum Store {
    Postgres(Postgres),
    /// The embedded store's read connections.
    Sqlite(crate::store::sqlite::read::Reader),
}

impl Store {
    /// Where the live tail reads.
    pub fn tail_source(&self) -> tail::TailSource {
        match self {
            Store::Postgres(pg) => tail::TailSource::Postgres(pg.pool.clone()),
            Store::Sqlite(reader) => tail::TailSource::Sqlite(reader.clone()),
        }
    }
}

/// What the API reads PostgreSQL with.
#[derive(Clone)]
pub struct Postgres {
    pub pool: Pool,
    /// A small pool of its own for `/health` and `/ready`, so probes never wait
    /// behind API queries.
    pub probe_pool: Pool,
    /// Rows per partition, for `total` estimates.
    pub table_sizes: Arc<sizes::TableSizes>,
    /// The partitions of `events`, read again when they change.
    pub partitions: Arc<query::span::KnownPartitions>,
}

impl Store {
    /// The read side's connections, for the metrics.
    fn observe(&self, metrics: &Metrics) {
        match self {
            Store::Postgres(pg) => {
                let (read, probe) = (pg.pool.status(), pg.probe_pool.status());
                metrics.observe_pool(crate::metrics::PoolReading {
                    size: read.size,
                    in_use: read.size.saturating_sub(read.available),
                    waiting: read.waiting,
                    connections: read.size + probe.size,
                });
            }
            Store::Sqlite(reader) => {
                let (open, in_use, _) = reader.status();
                metrics.observe_pool(crate::metrics::PoolReading {
                    size: open,
                    in_use,
                    waiting: 0,
                    connections: open,
                });
            }
        }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// The one poller behind every live-tail stream.
    pub tail: tail::TailHub,
    pub streams: Arc<stream::Streams>,
    /// Reads of single large events: bounded, and shared by concurrent clients.
    pub large_reads: Arc<large::LargeReads>,
    pub broker: Arc<BrokerStatus>,
    pub lifecycle: Arc<Lifecycle>,
    /// DATABASE_URL with its password removed.
    pub database_display: String,
    /// The checkpoint signing key's public half (`audit::note`), as served.
    pub public_key: String,
    /// Makes and checks live-tail tickets (signed, never stored).
    pub tickets: Arc<tickets::Tickets>,
}

impl ApiState {
    /// The PostgreSQL store, for what the embedded store does not serve yet: a
    /// 501 problem there.
    pub(crate) fn postgres(&self) -> Result<&Postgres, problem::Problem> {
        match &self.store {
            Store::Postgres(pg) => Ok(pg),
            Store::Sqlite(_) => Err(problem::Problem::new(
                actix_web::http::StatusCode::NOT_IMPLEMENTED,
                "not served by the embedded store yet (DATABASE_URL=sqlite:…); PostgreSQL serves it",
            )),
        }
    }
}

/// Binds the REST API. Returns the server (not yet polled) and the bound address.
pub fn serve_api(
    addr: SocketAddr,
    state: ApiState,
    metrics: Arc<Metrics>,
    auth: auth::Auth,
    cors_origins: Vec<String>,
) -> std::io::Result<(Server, SocketAddr)> {
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        // Middleware runs outermost last-wrapped first: metrics see every answer,
        // CORS answers preflights, then authentication.
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(auth.clone()))
            .wrap(actix_web::middleware::from_fn(auth::require_token))
            .wrap(cors(&cors_origins))
            .wrap_fn(move |req, srv| {
                let started = std::time::Instant::now();
                // Known methods only: a client can send any token as a method.
                let method: &'static str = match req.method().as_str() {
                    "GET" => "GET",
                    "HEAD" => "HEAD",
                    "POST" => "POST",
                    "PUT" => "PUT",
                    "DELETE" => "DELETE",
                    "PATCH" => "PATCH",
                    "OPTIONS" => "OPTIONS",
                    _ => "other",
                };
                let metrics = metrics.clone();
                let response = srv.call(req);
                async move {
                    let res = response.await?;
                    // The route pattern, never the raw path: label values stay bounded.
                    let route = res
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_owned());
                    let status = res.status().as_u16().to_string();
                    metrics
                        .http_requests
                        .with_label_values(&[route.as_str(), method, status.as_str()])
                        .inc();
                    metrics
                        .http_duration
                        .with_label_values(&[route.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    Ok(res)
                }
            })
            .service(get("/health", health::health))
            .service(get("/ready", health::ready))
            .service(get("/openapi.json", openapi::spec))
            .service(get("/docs", openapi::docs))
            .service(get("/events", events::list))
            .service(get("/events/stream", stream::stream))
            .service(
                web::resource("/events/stream/tickets")
                    .route(web::post().to(tickets::issue))
                    .default_service(web::to(problem::method_not_allowed_post)),
            )
            .service(get("/events/{id}", events::one))
            .service(get("/events/{id}/raw", events::raw))
            .service(get("/audit/checkpoints", audit::checkpoints))
            .service(get("/audit/checkpoint", audit::checkpoint))
            .service(get("/audit/public-key", audit::public_key))
            .service(get("/audit/proof/inclusion", audit::inclusion))
            .service(get("/audit/proof/consistency", audit::consistency))
            .service(get("/event-types", catalog::event_types))
            .service(get("/sources", catalog::sources))
            .service(get("/dead-letters", dead_letters::list))
            .service(get("/dead-letters/{id}", dead_letters::one))
            .service(get("/sessions/{session_id}", timeline::sessions))
            .service(get(
                "/correlations/{correlation_id}",
                timeline::correlations,
            ))
            .default_service(web::to(problem::not_found))
    })
    .on_connect(|conn, ext| {
        // Kept so a live-tail stream can cut a client that stopped reading.
        use std::os::fd::AsFd;
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
            && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
        {
            ext.insert(stream::ClientSocket(Arc::new(std::net::TcpStream::from(
                fd,
            ))));
        }
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(addr)?;
    let bound = server.addrs()[0];
    Ok((server.run(), bound))
}

/// A read-only resource: GET, and a 405 problem (with `Allow: GET`) for any other method.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(problem::method_not_allowed))
}

/// CORS for Candybar: the configured origins may call the API from a browser
/// (with the Authorization header); with none configured, no CORS headers at all.
fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::ACCEPT,
            actix_web::http::header::HeaderName::from_static("last-event-id"),
        ])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin().send_wildcard()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// What the Prometheus endpoint reads: the store whose connections it reports,
/// and the bearer token it may require (METRICS_TOKEN).
#[derive(Clone)]
pub struct MetricsEndpoint {
    pub store: Store,
    pub auth: auth::Auth,
}

/// Binds the Prometheus endpoint.
pub fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    endpoint: MetricsEndpoint,
) -> std::io::Result<(Server, SocketAddr)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(metrics.clone()))
            .app_data(web::Data::new(endpoint.clone()))
            .route("/metrics", web::get().to(scrape))
            .default_service(web::to(problem::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(addr)?;
    let bound = server.addrs()[0];
    Ok((server.run(), bound))
}

async fn scrape(
    req: actix_web::HttpRequest,
    metrics: web::Data<Arc<Metrics>>,
    endpoint: web::Data<MetricsEndpoint>,
) -> HttpResponse {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !endpoint.auth.allows(header) {
        return problem::Problem::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "a bearer token (METRICS_TOKEN) is required",
        )
        .response();
    }
    endpoint.store.observe(&metrics);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
