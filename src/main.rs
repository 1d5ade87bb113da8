//! Command line → settings → telemetry → app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use candystore::app::{self, AppOptions};
use candystore::config::Settings;
use candystore::source::publish::{LoadSpec, Publisher, Shape};
use candystore::{db, telemetry};

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
    Migrate,
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
    let applied = db::migrate(&mut client).await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        for name in applied {
            println!("applied {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
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
