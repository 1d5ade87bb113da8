//! `check`: what `serve` needs, tried without serving: the settings (already
//! parsed by then), the database and its schema, the broker with its exchange,
//! queue and a binding, the signing key file, the listening ports. One line per
//! check; exit 0 when every one holds, 1 naming those that do not. Nothing is
//! created or changed, except a temporary exclusive queue that tries the binding.

use std::process::ExitCode;

use candystore::config::{Settings, redact_url};
use candystore::source::probe::Probe;
use candystore::telemetry::error_chain;
use candystore::{db, schema};

use super::exit::Exit;

/// One check's answer: `Ok(what was found)` or `Err(what is wrong, what to do)`.
type Outcome = Result<String, String>;

pub(crate) async fn check(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    let mut report = |name: &str, outcome: Outcome| match &outcome {
        Ok(found) => println!("ok    {name}: {found}"),
        Err(wrong) => {
            failed += 1;
            println!("FAIL  {name}: {wrong}");
        }
    };
    report(
        "settings",
        Ok(format!(
            "valid; {} not at their default",
            settings.redacted_changes().len()
        )),
    );
    match settings.database() {
        candystore::config::Database::Postgres(url) => {
            report("database", database(url, "DATABASE_URL").await);
            if let Some(url) = &settings.read_database_url {
                report("read pool", database(url, "READ_DATABASE_URL").await);
            }
            report("schema", schema_state(url).await);
        }
        candystore::config::Database::Sqlite(path) => report("database", embedded(path)),
    }
    for (name, outcome) in broker(settings).await {
        report(name, outcome);
    }
    report("signing key", signing_key(&settings.signing_key_file));
    report(
        "API port",
        port(settings.api_host, settings.api_port, "API_HOST:API_PORT"),
    );
    if settings.metrics_enabled {
        let host = settings.metrics_host.unwrap_or(settings.api_host);
        report(
            "metrics port",
            port(host, settings.metrics_port, "METRICS_HOST:METRICS_PORT"),
        );
    }
    if failed > 0 {
        println!("{failed} check(s) failed");
        return Ok(Exit::Failed.into());
    }
    println!("every check holds: `candystore serve` can start");
    Ok(Exit::Clean.into())
}

async fn database(url: &str, variable: &str) -> Outcome {
    let target = db::pg_config(url).map_err(|e| format!("{variable}: {}", error_chain(&e)))?;
    let client = db::connect(&target)
        .await
        .map_err(|e| format!("{} ({})", error_chain(&e), redact_url(url)))?;
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| error_chain(&e))?
        .get(0);
    Ok(format!("PostgreSQL {version} at {}", redact_url(url)))
}

/// The embedded store's file: there (its schema) or to be made (its directory).
fn embedded(path: &std::path::Path) -> Outcome {
    if !path.exists() {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("DATABASE_URL: {} cannot be made: {e}", dir.display()))?;
        if meta.permissions().readonly() {
            return Err(format!("DATABASE_URL: {} is read-only", dir.display()));
        }
        return Ok(format!(
            "embedded store {} will be made at start",
            path.display()
        ));
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("DATABASE_URL: cannot open {}: {e}", path.display()))?;
    let pending = candystore::store::sqlite::schema::pending(&conn).map_err(|e| {
        format!(
            "DATABASE_URL: {} is not an embedded store: {e}",
            path.display()
        )
    })?;
    Ok(match pending {
        0 => format!("embedded store {}, every migration applied", path.display()),
        n => format!(
            "embedded store {}; {n} migration(s) will be applied at start",
            path.display()
        ),
    })
}

async fn schema_state(url: &str) -> Outcome {
    let target = db::pg_config(url).map_err(|e| error_chain(&e))?;
    let client = db::connect(&target)
        .await
        .map_err(|_| "not checked: no database".to_owned())?;
    match schema::check_schema(&client).await {
        Ok(()) => Ok("every migration applied".into()),
        Err(db::DbError::Pending(n)) => Err(format!(
            "{n} migration(s) pending: run `candystore migrate` (safe while serving)"
        )),
        Err(e) => Err(error_chain(&e)),
    }
}

/// The broker: the connection, then the exchange, the queue and one binding,
/// each only if the one before it holds.
async fn broker(settings: &Settings) -> Vec<(&'static str, Outcome)> {
    let url = redact_url(&settings.rabbit_url);
    let probe = match Probe::connect(&settings.rabbit_url).await {
        Ok(p) => p,
        Err(e) => return vec![("broker", Err(format!("{} ({url})", error_chain(&e))))],
    };
    let mut out = vec![("broker", Ok(format!("connected to {url}")))];
    let exchange = &settings.rabbit_exchange;
    let exists = match probe.exchange_exists(exchange).await {
        Ok(exists) => exists,
        Err(e) => {
            out.push(("exchange", Err(error_chain(&e))));
            probe.close().await;
            return out;
        }
    };
    out.push((
        "exchange",
        Ok(if exists {
            format!("{exchange:?} exists (RABBIT_EXCHANGE)")
        } else {
            format!(
                "{exchange:?} does not exist yet; `serve` declares it (durable topic), which needs the configure permission"
            )
        }),
    ));
    let queue = &settings.rabbit_queue;
    out.push((
        "queue",
        match probe.queue(queue).await {
            Ok(Some(q)) => Ok(format!(
                "{queue:?} exists: {} message(s) waiting, {} consumer(s) (RABBIT_QUEUE)",
                q.messages, q.consumers
            )),
            Ok(None) => Ok(format!(
                "{queue:?} does not exist yet; `serve` declares it (durable) and binds it"
            )),
            Err(e) => Err(error_chain(&e)),
        },
    ));
    if exists {
        let keys = &settings.rabbit_bindings;
        out.push((
            "binding",
            match probe.bind(exchange, keys).await {
                Ok(()) => Ok(format!(
                    "a queue can be bound to {exchange:?} with {} (RABBIT_BINDING)",
                    keys.join(", ")
                )),
                Err(e) => Err(format!(
                    "cannot bind a queue to {exchange:?} (read permission on the exchange?): {}",
                    error_chain(&e)
                )),
            },
        ));
    }
    probe.close().await;
    out
}

fn signing_key(path: &std::path::Path) -> Outcome {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{shown} is readable by others (mode {mode:o}): chmod 600 {shown}"
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
            candystore::audit::note::SigningKey::parse(text.trim())
                .map_err(|e| format!("{shown} is not a signing key: {}", error_chain(&e)))?;
            Ok(format!("{shown} (SIGNING_KEY_FILE)"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(format!(
            "{shown} does not exist yet; `serve` creates it (mode 0600): keep it out of the database's reach"
        )),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

fn port(host: std::net::IpAddr, port: u16, variables: &str) -> Outcome {
    if port == 0 {
        return Ok(format!(
            "{variables} {host}:0: a free port is picked at start"
        ));
    }
    std::net::TcpListener::bind((host, port))
        .map(|_| format!("{host}:{port} is free ({variables})"))
        .map_err(|e| format!("cannot listen on {host}:{port} ({variables}): {e}"))
}
