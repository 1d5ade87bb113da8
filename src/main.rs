//! Command line → settings → telemetry → app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use candystore::app::{self, AppOptions};
use candystore::audit::note::VerifierKey;
use candystore::config::Settings;
use candystore::ops::dead_letters::Filter;
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
        #[arg(long, value_name = "DATE", value_parser = cli_time)]
        before: chrono::DateTime<chrono::Utc>,
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
        /// Leave the envelope's time out (the events are stored at their receive
        /// time); text shape only.
        #[arg(long)]
        without_time: bool,
        /// Date the events over this many past days, one day after another (a
        /// backlog after an outage, or a backfill); 0 dates them now.
        #[arg(long, default_value_t = 0)]
        days_back: u32,
    },
    /// Deliveries that could not be stored as events: list, show, replay, purge.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Judge the audit trail: every row against its leaf, every leaf's attestation (with AUDIT_KEY), the tree
    /// against its signed checkpoints, and rows from before the tree against the legacy chain. Exit 0 when all
    /// holds, 3 naming what was modified, deleted, inserted out of band, rewritten or rolled back.
    Verify {
        /// Only check that the database's tree extends this checkpoint, saved earlier (from
        /// GET /audit/checkpoint, CHECKPOINT_DIR or a witness): its signature, then its root among the stored
        /// leaves. Needs no AUDIT_KEY.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The checkpoints' public key (`name+id+key`, or a file holding it). Default: the public half of
        /// SIGNING_KEY_FILE, when that file is here.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
    },
    /// Write the proof that one event is in the signed tree (a JSON bundle) to standard output, for
    /// `candystore verify-proof` or anyone with the public key.
    Prove {
        /// The event's id.
        id: Option<String>,
        /// Its source, when several events share the id.
        #[arg(long)]
        source: Option<String>,
        /// Or its position, {txid}-{seq}.
        #[arg(long)]
        position: Option<String>,
    },
    /// Remove an event's payload and every copy of its body (original_body, dead-letter bodies of the same
    /// delivery) while the audit tree still verifies: a receipt (who, when, why) enters the tree, and
    /// `verify` reports the event as redacted.
    Redact {
        /// The event's id.
        id: Option<String>,
        /// Its source, when several events share the id.
        #[arg(long)]
        source: Option<String>,
        /// Or its position, {txid}-{seq}.
        #[arg(long)]
        position: Option<String>,
        /// Why (kept in the receipt, in the tree).
        #[arg(long)]
        reason: String,
        /// Who asked (default: the login name, $USER).
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Run a witness (C2SP tlog-witness) for logs given by their public keys: it cosigns each checkpoint that
    /// provably extends the newest it has seen, and refuses rollbacks and forks (409) and bad proofs (422).
    /// Run it where the log's operators cannot write.
    Witness {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// A log's public key (`name+id+key`, or a file holding it); repeat for several.
        #[arg(long = "log-key", required = true)]
        log_keys: Vec<String>,
        /// The file that keeps what the witness has seen.
        #[arg(long, default_value = "witness-state.json")]
        state: PathBuf,
        /// The witness's own signing key (created, mode 0600, when missing).
        #[arg(long, default_value = "witness.key")]
        key_file: PathBuf,
        /// The witness's name (its key's), for a new key.
        #[arg(long, default_value = "candystore-witness")]
        name: String,
    },
    /// Check a proof bundle (from `candystore prove`) with the public key alone, no database: exit 0 when the
    /// event is in the tree the checkpoint signs, 3 when it is not.
    VerifyProof {
        bundle: PathBuf,
        /// The checkpoints' public key (`name+id+key`, or a file holding it).
        #[arg(long, value_name = "KEY")]
        public_key: String,
    },
    /// Publish stored events again, oldest first, exactly as they were published (the /raw envelope and the
    /// original AMQP properties, plus the header x-candystore-replay) to --exchange, each confirmed by the
    /// broker. Candystore's own ingest acks a replayed event without storing it again. Ctrl-C prints the
    /// position to pass to --resume (exit 130).
    Replay {
        /// The exchange to publish to (it must exist; an unroutable event is an error).
        #[arg(long)]
        exchange: String,
        /// Only events of this session.
        #[arg(long, value_parser = |s: &str| filter("session_id", s))]
        session_id: Option<String>,
        /// Only events of this type.
        #[arg(long, value_parser = |s: &str| filter("event_type", s))]
        event_type: Option<String>,
        /// Only events from this source.
        #[arg(long, value_parser = |s: &str| filter("source", s))]
        source: Option<String>,
        /// Only events for this target.
        #[arg(long, value_parser = |s: &str| filter("target", s))]
        target: Option<String>,
        /// Only events of this correlation.
        #[arg(long, value_parser = |s: &str| filter("correlation_id", s))]
        correlation_id: Option<String>,
        /// A JSON object the payload contains (jsonb @>).
        #[arg(long, value_name = "JSON", value_parser = |s: &str| candystore::query::containment(s).map_err(|e| e.reason))]
        payload_contains: Option<serde_json::Value>,
        /// Events at or after this time (RFC 3339, or YYYY-MM-DD).
        #[arg(long, value_name = "TIME", value_parser = cli_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Events at or before this time (RFC 3339, or YYYY-MM-DD).
        #[arg(long, value_name = "TIME", value_parser = cli_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Events per second; 0 for as fast as the broker confirms.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Continue after this position (printed by an interrupted or finished replay).
        #[arg(long, value_name = "POSITION")]
        resume: Option<String>,
    },
}

/// Which dead letters: every filter given must hold.
#[derive(clap::Args, Debug, Default)]
struct DeadLetterFilter {
    /// Only this reason (invalid_json, unrecognised_envelope, rejected_by_database, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Only this routing key.
    #[arg(long)]
    routing_key: Option<String>,
    /// Received at or after (RFC 3339, or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = cli_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Received at or before (RFC 3339, or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = cli_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: DeadLetterFilter,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One dead letter whole, as JSON: metadata, properties, and its body (as text when it is UTF-8, else hex).
    Show { id: i64 },
    /// Publish dead letters again, oldest first: the exact bytes, with their routing key and properties, to the
    /// exchange they came from (or --exchange), with publisher confirms. One already replayed needs --force.
    Replay {
        /// The dead letters' ids; or select them with the filters (or --all).
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// Publish to this exchange instead of each one's own.
        #[arg(long)]
        exchange: Option<String>,
        /// Replay dead letters replayed before, too.
        #[arg(long)]
        force: bool,
        /// Select every dead letter (when no id or filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters (never events). --dry-run prints what would go.
    Purge {
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: DeadLetterFilter,
        #[arg(long)]
        dry_run: bool,
        /// Select every dead letter (when no id or filter is given).
        #[arg(long)]
        all: bool,
    },
}

/// The exit statuses, by name (docs/contract.md has them too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// A clean stop: everything held was committed and acked.
    Clean = 0,
    /// A command failed (the message says why).
    Failed = 1,
    /// A bad setting or argument (one line names it); do not restart in a loop.
    Usage = 2,
    /// `verify` or `verify-proof` found the history altered, or a proof that does not prove.
    Tampered = 3,
    /// A supervised task (consumer, writer, a background job) ended or panicked.
    TaskFailed = 70,
    /// SIGTERM took longer than SHUTDOWN_TIMEOUT.
    ShutdownTimedOut = 75,
    /// `replay` interrupted by Ctrl-C.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The exit codes, for `--help`.
const EXIT_CODES: &str = "Exit codes:
  0   a clean stop: everything held was committed and acked
  1   a command failed (the message says why)
  2   a bad setting or argument (one line names it); do not restart in a loop
  3   `candystore verify` found the sealed history altered (it names the first event)
  70  a supervised task (consumer, writer, a background job) ended or panicked; restart
  75  SIGTERM took longer than SHUTDOWN_TIMEOUT (what was not committed is redelivered)
  130 `candystore replay` interrupted by Ctrl-C (it printed the position for --resume)";

/// A command line the options' own parsers could not refuse (two options that
/// contradict each other, a `--resume` this command never printed): exit 2, like
/// clap's own refusals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn main() -> ExitCode {
    let help = format!("{}\n{EXIT_CODES}", Settings::help());
    let matches = Cli::command().after_help(help).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("candystore: {e}");
            return Exit::Usage.into();
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
            return Exit::Failed.into();
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(&settings).await,
            Command::Maintain => maintain(&settings).await,
            Command::Archive { before, to, drop } => archive(&settings, before, &to, drop).await,
            Command::Restore { files } => restore(&settings, &files).await,
            Command::Publish {
                count,
                size,
                rate,
                generation,
                shape,
                without_time,
                days_back,
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
                        without_time,
                        days_back,
                    },
                )
                .await
            }
            Command::DeadLetters(command) => dead_letters(&settings, command).await,
            Command::Verify {
                checkpoint,
                public_key,
            } => verify(&settings, checkpoint, public_key).await,
            Command::Prove {
                id,
                source,
                position,
            } => prove(&settings, id, source, position).await,
            Command::VerifyProof { bundle, public_key } => verify_proof(&bundle, &public_key),
            Command::Redact {
                id,
                source,
                position,
                reason,
                by,
            } => redact(&settings, id, source, position, &reason, by).await,
            Command::Witness {
                listen,
                log_keys,
                state,
                key_file,
                name,
            } => witness(&listen, &log_keys, state, &key_file, &name).await,
            Command::Replay {
                exchange,
                session_id,
                event_type,
                source,
                target,
                correlation_id,
                payload_contains,
                since,
                until,
                rate,
                resume,
            } => {
                if let (Some(s), Some(u)) = (since, until)
                    && u < s
                {
                    return Err(Usage("invalid --until: it is before --since".into()).into());
                }
                let query = candystore::query::EventQuery {
                    filters: [
                        ("session_id", session_id),
                        ("event_type", event_type),
                        ("source", source),
                        ("target", target),
                        ("correlation_id", correlation_id),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect(),
                    start_time: since,
                    end_time: until,
                    payload_contains,
                    ..Default::default()
                };
                replay(&settings, query, &exchange, rate, resume.as_deref()).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<candystore::config::ConfigError>()
                .is_some() =>
        {
            tracing::error!(
                error = format!("{e:#}"),
                "candystore cannot start with this setting"
            );
            eprintln!("candystore: {e:#}");
            Exit::Usage.into()
        }
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("candystore: {e:#}");
            Exit::Usage.into()
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "candystore failed");
            eprintln!("candystore: {e:#}");
            Exit::Failed.into()
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

async fn maintain(settings: &Settings) -> anyhow::Result<ExitCode> {
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

/// A time option (`--before`, `--since`, `--until`): a date (midnight UTC) or an
/// RFC 3339 time. Clap names the option in the error and exits 2.
fn cli_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    candystore::envelope::parse_time(s)
        .ok_or_else(|| "expected YYYY-MM-DD or an RFC 3339 time".to_owned())
}

/// An equality filter option: a value a stored identifier could be.
fn filter(name: &'static str, s: &str) -> Result<String, String> {
    candystore::query::identifier(name, s).map_err(|e| e.reason)
}

async fn archive(
    settings: &Settings,
    before: chrono::DateTime<chrono::Utc>,
    dir: &std::path::Path,
    drop: bool,
) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let mut client = storage::connect(&target).await?;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let done = storage::archive::archive_before(
        &mut client,
        before,
        dir,
        drop,
        candystore::audit::attest::Keyring::new(&settings.audit_keys).as_ref(),
        Some(&bar),
    )
    .await?;
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
    Ok(Exit::Clean.into())
}

async fn restore(settings: &Settings, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let mut client = storage::connect(&target).await?;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let done = storage::archive::restore(&mut client, files, Some(&bar)).await?;
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
    Ok(Exit::Clean.into())
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
    Ok(Exit::Clean.into())
}

fn dead_letter_filter(ids: Vec<i64>, f: DeadLetterFilter) -> Filter {
    Filter {
        ids,
        reason: f.reason,
        routing_key: f.routing_key,
        since: f.since,
        until: f.until,
    }
}

async fn dead_letters(settings: &Settings, command: DeadLetterCommand) -> anyhow::Result<ExitCode> {
    use candystore::ops::dead_letters as dl;
    let target = db::pg_config(&settings.database_url)?;
    let mut client = db::connect(&target).await?;
    let selected = |filter: &Filter, all: bool| {
        if filter.is_empty() && !all {
            return Err(anyhow::Error::from(Usage(
                "select dead letters by id or filter, or pass --all".into(),
            )));
        }
        Ok(())
    };
    match command {
        DeadLetterCommand::List { filter, limit } => {
            let filter = dead_letter_filter(Vec::new(), filter);
            println!(
                "{:>10}  {:<27}  {:<22}  {:>9}  {:>7}  routing key",
                "id", "received at", "reason", "bytes", "replays"
            );
            for d in dl::list(&client, &filter, limit).await? {
                println!(
                    "{:>10}  {:<27}  {:<22}  {:>9}  {:>7}  {}",
                    d.id,
                    d.received_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    d.reason,
                    d.body_bytes,
                    d.replay_count,
                    d.routing_key
                );
            }
        }
        DeadLetterCommand::Show { id } => {
            let d = dl::show(&client, id).await?;
            let mut out = serde_json::to_value(&d.listed)?;
            out["properties"] = d.properties;
            match std::str::from_utf8(&d.body) {
                Ok(text) => out["body_text"] = text.into(),
                Err(_) => out["body_hex"] = candystore::hex::encode(&d.body).into(),
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        DeadLetterCommand::Replay {
            ids,
            filter,
            exchange,
            force,
            all,
        } => {
            let filter = dead_letter_filter(ids, filter);
            selected(&filter, all)?;
            let publisher =
                candystore::source::publish::Republisher::connect(&settings.rabbit_url).await?;
            let done = dl::replay(&client, &publisher, &filter, exchange.as_deref(), force).await?;
            for id in &done.skipped {
                println!("skipped {id}: replayed before (--force replays it again)");
            }
            println!("replayed {} dead letter(s)", done.replayed.len());
        }
        DeadLetterCommand::Purge {
            ids,
            filter,
            dry_run,
            all,
        } => {
            let filter = dead_letter_filter(ids, filter);
            selected(&filter, all)?;
            let gone = dl::purge(&mut client, &filter, dry_run).await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for d in &gone {
                println!(
                    "{verb} {} ({}, {}, {} bytes)",
                    d.id, d.reason, d.routing_key, d.body_bytes
                );
            }
            println!("{verb} {} dead letter(s)", gone.len());
        }
    }
    Ok(Exit::Clean.into())
}

async fn replay(
    settings: &Settings,
    query: candystore::query::EventQuery,
    exchange: &str,
    rate: u64,
    resume: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use candystore::ops::replay::{self, Progress, Replay};
    let resume = resume
        .map(|r| {
            candystore::api::query::Cursor::decode(r).ok_or_else(|| {
                Usage(format!(
                    "invalid --resume {r:?}: not a position this command printed"
                ))
            })
        })
        .transpose()?;
    let target = db::pg_config(&settings.database_url)?;
    let client = db::connect(&target).await?;
    let publisher = candystore::source::publish::Republisher::connect(&settings.rabbit_url)
        .await
        .context("cannot connect to the broker")?;
    let job = Replay {
        query: &query,
        exchange,
        rate,
        resume,
    };
    let bar = Bar::new();
    storage::archive::Progress::start(&bar, "replaying", replay::count(&client, &job).await?);
    let mut progress = Progress::default();
    let started = std::time::Instant::now();
    let outcome = tokio::select! {
        r = replay::run(&client, &publisher, &job, &mut progress, |_| bar.0.inc(1)) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.0.finish_and_clear();
    let resume_hint = progress
        .resume_token()
        .map(|t| format!("; resume with --resume {t}"))
        .unwrap_or_default();
    let summary = format!(
        "replayed {} event(s) to {exchange} in {:.1}s{resume_hint}",
        progress.published,
        started.elapsed().as_secs_f64()
    );
    match outcome {
        Some(Ok(())) => {
            println!("{summary}");
            Ok(Exit::Clean.into())
        }
        Some(Err(e)) => {
            eprintln!("{summary}");
            Err(e.into())
        }
        None => {
            eprintln!("interrupted: {summary}");
            Ok(Exit::Interrupted.into())
        }
    }
}

/// A public key given on the command line: the key itself, or a file holding it.
fn public_key_arg(arg: &str) -> anyhow::Result<VerifierKey> {
    let text = if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read {arg}"))?
    } else {
        arg.to_string()
    };
    VerifierKey::parse(text.trim()).map_err(|e| {
        anyhow::Error::new(candystore::config::ConfigError::Refused {
            name: "--public-key",
            reason: e.to_string(),
        })
    })
}

async fn verify(
    settings: &Settings,
    checkpoint: Option<PathBuf>,
    public_key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let client = db::connect(&target).await?;
    let rows = db::connect(&target).await?;
    let started = std::time::Instant::now();
    let keyring = candystore::audit::attest::Keyring::new(&settings.audit_keys);
    let (key, key_from) = match &public_key {
        Some(k) => (Some(public_key_arg(k)?), "--public-key".to_string()),
        None => match std::fs::read_to_string(&settings.signing_key_file) {
            Ok(text) => (
                Some(
                    candystore::audit::note::SigningKey::parse(&text)
                        .with_context(|| {
                            format!("SIGNING_KEY_FILE {}", settings.signing_key_file.display())
                        })?
                        .verifier(),
                ),
                format!("SIGNING_KEY_FILE {}", settings.signing_key_file.display()),
            ),
            Err(_) => (None, String::new()),
        },
    };
    let saved = match &checkpoint {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the checkpoint {}", path.display()))?,
        ),
        None => None,
    };
    let report = candystore::audit::verify::verify(
        &client,
        &rows,
        candystore::audit::verify::Options {
            keyring: keyring.as_ref().filter(|_| checkpoint.is_none()),
            key: key.as_ref(),
            saved: saved.as_deref(),
            tree_only: checkpoint.is_some(),
        },
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let signatures = match &key {
        Some(_) => format!("{} checkpoint signature(s) checked with the key from {key_from}", report.signatures),
        None => "checkpoint signatures NOT checked (no --public-key and no SIGNING_KEY_FILE here: give the public key you hold)".to_string(),
    };
    let attestations = match (&keyring, checkpoint.is_some()) {
        (_, true) => String::new(),
        (Some(_), false) => format!(
            "; {} leaf attestation(s) checked with AUDIT_KEY",
            report.attestations
        ),
        (None, false) => "; leaf attestations not checked (AUDIT_KEY unset)".to_string(),
    };
    if report.ok() {
        match &checkpoint {
            Some(path) => println!(
                "verified: the tree of {} leaves extends the checkpoint {} ({signatures}) in {secs:.1}s",
                report.tree_size,
                path.display()
            ),
            None => println!(
                "verified the tree of {} leaves ({} checkpoint(s) recomputed; {signatures}): {} event(s) against their leaves, {} redacted, {} leaf/leaves not in a checkpoint yet, {} event(s) gone with partitions retention dropped; {} legacy event(s) in {} legacy checkpoint(s){attestations}; in {secs:.1}s",
                report.tree_size,
                report.checkpoints,
                report.events,
                report.redacted,
                report.pending,
                report.dropped,
                report.legacy_events,
                report.legacy_checkpoints,
            ),
        }
        return Ok(Exit::Clean.into());
    }
    for f in &report.findings {
        println!("NOT VERIFIED: {f}");
    }
    if report.more > 0 {
        println!("NOT VERIFIED: {} more finding(s)", report.more);
    }
    println!(
        "(the tree of {} leaves; {signatures}{attestations})",
        report.tree_size
    );
    Ok(Exit::Tampered.into())
}

/// The event an id (with its source) or a position names.
async fn place_of(
    client: &tokio_postgres::Client,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
) -> anyhow::Result<(i64, i64)> {
    Ok(match (id, position) {
        (Some(id), None) => {
            let rows = client
                .query(
                    "SELECT txid, seq FROM events WHERE id = $1 AND ($2::text IS NULL OR source = $2) LIMIT 2",
                    &[&id, &source],
                )
                .await?;
            match rows.as_slice() {
                [] => anyhow::bail!("no event {id:?}"),
                [r] => (r.get(0), r.get(1)),
                _ => {
                    anyhow::bail!("several events have the id {id:?}: give --source or --position")
                }
            }
        }
        (None, Some(p)) => p
            .split_once('-')
            .and_then(|(t, s)| Some((t.parse().ok()?, s.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--position {p:?} is not {{txid}}-{{seq}}"))?,
        _ => anyhow::bail!("give the event's id, or --position"),
    })
}

async fn prove(
    settings: &Settings,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let client = db::connect(&target).await?;
    let place = place_of(&client, id, source, position).await?;
    let bundle = candystore::audit::proof::bundle(&client, place).await?;
    println!("{}", serde_json::to_string_pretty(&bundle)?);
    Ok(Exit::Clean.into())
}

async fn redact(
    settings: &Settings,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
    reason: &str,
    by: Option<String>,
) -> anyhow::Result<ExitCode> {
    let target = db::pg_config(&settings.database_url)?;
    let mut client = db::connect(&target).await?;
    let place = place_of(&client, id, source, position).await?;
    let by = by.unwrap_or_else(|| "unknown".to_string());
    let keyring = candystore::audit::attest::Keyring::new(&settings.audit_keys);
    let done = candystore::audit::redact::redact(
        &mut client,
        place,
        &by,
        reason,
        keyring.as_ref(),
        chrono::Utc::now(),
    )
    .await?;
    println!(
        "redacted the event at leaf {} ({} dead letter(s) of the same delivery emptied); receipt: {}",
        done.leaf_index, done.dead_letters, done.receipt
    );
    Ok(Exit::Clean.into())
}

async fn witness(
    listen: &str,
    log_keys: &[String],
    state: PathBuf,
    key_file: &std::path::Path,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let logs = log_keys
        .iter()
        .map(|k| public_key_arg(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (key, created) = candystore::audit::note::load_or_create(key_file, name).map_err(|e| {
        candystore::config::ConfigError::Refused {
            name: "--key-file",
            reason: e.to_string(),
        }
    })?;
    let witness = std::sync::Arc::new(candystore::audit::witness::Witness::open(logs, key, state)?);
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        listen,
        public_key = %witness.public_key().encode(),
        created,
        "witness listening (POST /add-checkpoint)"
    );
    candystore::audit::witness::serve(listener, witness)?.await?;
    Ok(Exit::Clean.into())
}

fn verify_proof(path: &std::path::Path, public_key: &str) -> anyhow::Result<ExitCode> {
    let key = public_key_arg(public_key)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the bundle {}", path.display()))?;
    let bundle: candystore::audit::proof::Bundle = match serde_json::from_str(&text) {
        Ok(b) => b,
        Err(e) => {
            println!("NOT PROVED: the bundle is not a proof bundle: {e}");
            return Ok(Exit::Tampered.into());
        }
    };
    match candystore::audit::proof::check_bundle(&bundle, &key) {
        Ok(p) => {
            println!(
                "proved: event {:?} from {:?} ({}) is leaf {} of the tree of {} leaves whose checkpoint {} signed (root {})",
                bundle.event.id,
                bundle.event.source,
                bundle.event.timestamp_text,
                p.leaf_index,
                p.checkpoint.size,
                key.name(),
                candystore::hex::encode(&p.checkpoint.root),
            );
            Ok(Exit::Clean.into())
        }
        Err(e) => {
            println!("NOT PROVED: {e}");
            Ok(Exit::Tampered.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_exit_status_is_in_the_help_text() {
        for (exit, number) in [
            (Exit::Clean, "0 "),
            (Exit::Failed, "1 "),
            (Exit::Usage, "2 "),
            (Exit::Tampered, "3 "),
            (Exit::TaskFailed, "70 "),
            (Exit::ShutdownTimedOut, "75 "),
            (Exit::Interrupted, "130 "),
        ] {
            assert_eq!((exit as u8).to_string() + " ", number);
            assert!(
                EXIT_CODES
                    .lines()
                    .any(|l| l.trim_start().starts_with(number)),
                "{exit:?}"
            );
        }
    }
}
