//! Command line → settings → telemetry → app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use candystore::app::{self, AppOptions};
use candystore::config::Settings;
use candystore::source::publish::{LoadSpec, Publisher, Shape};
use candystore::{db, storage, telemetry};

/// Candystore: stores every Bloodbank event in PostgreSQL and serves them over REST.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file of settings (lower-case variable names); the environment wins.
    #[arg(long, global = true, value_name = "FILE", env = "CANDYSTORE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume, store and serve until SIGTERM or SIGINT.
    Serve,
    /// Apply the migrations in sql/ to DATABASE_URL and exit. Safe to run twice, and from two processes at once.
    /// Moving a plain events table to time partitions runs online: the service keeps ingesting and answering.
    Migrate,
    /// Run the maintenance job once: partitions ahead, the default partition drained, RETENTION (archiving to
    /// ARCHIVE_DIR first when set). `serve` runs it every MAINTENANCE_INTERVAL.
    Maintain,
    /// Write every partition (of events and dead_letter) that ends at or before DATE to DIR as zstd-compressed
    /// NDJSON, one file per partition, with manifest.json (rows, SHA-256); each file is read back and checked.
    Archive {
        /// RFC 3339 time or a date (YYYY-MM-DD, midnight UTC).
        #[arg(long, value_name = "DATE")]
        before: String,
        /// Directory for the files and manifest.json (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Then detach and drop each archived partition (after the check).
        #[arg(long)]
        drop: bool,
    },
    /// Load archive files back (idempotent: rows already stored are skipped). Files are checked against the
    /// manifest.json beside them first.
    Restore {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Publish sample events of all three envelope generations to RABBIT_EXCHANGE (a load generator).
    Publish {
        /// How many events.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Approximate body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Events per second; 0 for as fast as the broker confirms.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Envelope generation 1, 2 or 3; 0 mixes all three.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
        generation: u8,
        /// What pads the body: `text`, or `int-array` (one array of integers, the
        /// worst case for a JSON parser's memory).
        #[arg(long, default_value = "text", value_parser = ["text", "int-array"])]
        shape: String,
    },
}

/// Exit status when a pipeline task (consumer or writer) ended or panicked.
const EXIT_PIPELINE_FAILED: u8 = 70;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("candystore: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log_level, settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("candystore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(&settings).await,
            Command::Maintain => maintain(&settings).await,
            Command::Archive { before, to, drop } => archive(&settings, &before, &to, drop).await,
            Command::Restore { files } => restore(&settings, &files).await,
            Command::Publish {
                count,
                size,
                rate,
                generation,
                shape,
            } => {
                publish(
                    &settings,
                    LoadSpec {
                        count,
                        size,
                        rate,
                        generation,
                        run_id: uuid::Uuid::new_v4().to_string(),
                        shape: if shape == "int-array" {
                            Shape::IntArray
                        } else {
                            Shape::Text
                        },
                    },
                )
                .await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "candystore failed");
            eprintln!("candystore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
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
        return Ok(ExitCode::from(EXIT_PIPELINE_FAILED));
    }
    match shutdown {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(error = %e, "shutdown did not complete; unacknowledged deliveries stay with the broker");
            Ok(ExitCode::from(75))
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
    }
    Ok(())
}

async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let config = db::pg_config(&settings.database_url)?;
    let mut client = db::connect(&config).await?;
    let applied = db::migrate_with(&mut client, settings.partition_interval, i64::MAX).await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        for name in applied {
            println!("applied {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn maintain(settings: &Settings) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let mut client = storage::connect(&target).await?;
    let opts = storage::maintain::Options {
        interval: settings.partition_interval,
        retention: settings.retention,
        archive_dir: settings.archive_dir.clone(),
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
    Ok(ExitCode::SUCCESS)
}

fn parse_date(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    candystore::envelope::parse_time(s).ok_or_else(|| {
        anyhow::anyhow!("invalid --before {s:?}: expected YYYY-MM-DD or an RFC 3339 time")
    })
}

async fn archive(
    settings: &Settings,
    before: &str,
    dir: &std::path::Path,
    drop: bool,
) -> anyhow::Result<ExitCode> {
    let before = parse_date(before)?;
    let target = db::pg_config(&settings.database_url)?;
    let mut client = storage::connect(&target).await?;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let done = storage::archive::archive_before(&mut client, before, dir, drop, Some(&bar)).await?;
    let rows: u64 = done.entries.iter().map(|e| e.rows).sum();
    for e in &done.entries {
        println!(
            "{}: {} rows, {} bytes, sha256 {}",
            e.file, e.rows, e.bytes, e.sha256
        );
    }
    for name in &done.dropped {
        println!("dropped {name}");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "archived {} partition(s), {rows} rows in {secs:.1}s ({:.0} rows/s) to {}",
        done.entries.len(),
        rows as f64 / secs.max(1e-9),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn restore(settings: &Settings, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let mut client = storage::connect(&target).await?;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let done =
        storage::archive::restore(&mut client, files, settings.partition_interval, Some(&bar))
            .await?;
    let mut rows = 0;
    for r in &done {
        rows += r.rows;
        println!(
            "{}: {} rows into {} ({} new, {} already stored)",
            r.file.display(),
            r.rows,
            r.table,
            r.rows - r.skipped,
            r.skipped
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "restored {} file(s), {rows} rows in {secs:.1}s ({:.0} rows/s)",
        done.len(),
        rows as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on a terminal (stderr); nothing otherwise.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Self(bar)
    }
}

impl storage::archive::Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_owned());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

async fn publish(settings: &Settings, spec: LoadSpec) -> anyhow::Result<ExitCode> {
    let publisher = Publisher::connect(&settings.rabbit_url, &settings.rabbit_exchange)
        .await
        .context("cannot connect to the broker")?;
    let elapsed = publisher
        .publish_load(&spec)
        .await
        .context("publishing failed")?;
    println!(
        "published {} events of ~{} bytes in {:.2}s ({:.0}/s)",
        spec.count,
        spec.size,
        elapsed.as_secs_f64(),
        spec.count as f64 / elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
