//! `serve`, `migrate` and `maintain`.

use std::process::ExitCode;

use anyhow::Context;

use candystore::app::{self, AppOptions};
use candystore::config::{Database, Settings};
use candystore::{db, storage};

use super::exit::Exit;

pub(crate) async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let running = app::start(settings, AppOptions::default()).await?;
    let supervisor = running.supervisor();
    tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            tracing::info!("shutdown requested");
        }
        _ = supervisor.failed() => {}
    }
    let shutdown = running.shutdown().await;
    if supervisor.has_failed() {
        // Logged once by the supervisor; exit for the process supervisor to restart us.
        return Ok(Exit::TaskFailed.into());
    }
    match shutdown {
        Ok(()) => Ok(Exit::Clean.into()),
        Err(e) => {
            tracing::error!(error = %e, "shutdown did not complete; unacknowledged deliveries stay with the broker");
            Ok(Exit::ShutdownTimedOut.into())
        }
    }
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
    }
    Ok(())
}

pub(crate) async fn migrate(
    settings: &Settings,
    create_database: bool,
) -> anyhow::Result<ExitCode> {
    if let Database::Sqlite(path) = settings.database() {
        let file = candystore::store::sqlite::Sqlite::own(path)
            .with_context(|| format!("cannot use the embedded store {}", path.display()))?;
        match file.migrated() {
            0 => println!("embedded store {} is up to date", path.display()),
            n => println!(
                "embedded store {}: applied {n} migration(s)",
                path.display()
            ),
        }
        return Ok(Exit::Clean.into());
    }
    let config = db::pg_config(&settings.database_url)?;
    let mut client = match db::connect(&config).await {
        Err(e) if create_database && db::is_missing_database(&e) => {
            let name = db::create_database(&config).await?;
            println!("created database {name}");
            db::connect(&config).await?
        }
        connected => connected?,
    };
    let applied =
        candystore::schema::migrate_with(&mut client, settings.partition_interval, i64::MAX)
            .await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        for name in applied {
            println!("applied {name}");
        }
    }
    Ok(Exit::Clean.into())
}

pub(crate) async fn maintain(settings: &Settings) -> anyhow::Result<ExitCode> {
    if let Database::Sqlite(path) = settings.database() {
        let file = candystore::store::sqlite::Sqlite::own(path)
            .with_context(|| format!("cannot use the embedded store {}", path.display()))?;
        let handle = candystore::store::sqlite::write::Handle::start(&file)?;
        let opts = candystore::store::sqlite::retention::Options {
            path: path.to_owned(),
            retention: settings.retention,
            archive_dir: settings.archive_dir.clone(),
            keyring: candystore::audit::attest::Keyring::new(&settings.audit_keys)
                .map(std::sync::Arc::new),
        };
        let dropped =
            candystore::store::sqlite::retention::run_once(&handle, &opts, chrono::Utc::now())
                .await?;
        println!("dropped {} day(s) (RETENTION)", dropped.len());
        for d in dropped {
            println!("dropped {} ({} rows)", d.partition, d.rows);
        }
        return Ok(Exit::Clean.into());
    }
    let target = db::pg_config(&settings.database_url)?;
    let mut client = storage::connect(&target).await?;
    let opts = storage::maintain::Options {
        layout: settings.partition_layout(),
        retention: settings.retention,
        archive_dir: settings.archive_dir.clone(),
        keyring: candystore::audit::attest::Keyring::new(&settings.audit_keys)
            .map(std::sync::Arc::new),
    };
    let report = storage::maintain::run_once(&mut client, &opts, chrono::Utc::now(), None).await?;
    if report.skipped {
        println!("another instance is running the maintenance job; nothing done");
    } else {
        println!(
            "created {} partition(s), moved {} row(s) out of the default partitions, archived {}, dropped {}",
            report.created.len(),
            report.drained,
            report.archived.len(),
            report.dropped.len()
        );
        for name in report.dropped {
            println!("dropped {name}");
        }
    }
    Ok(Exit::Clean.into())
}
