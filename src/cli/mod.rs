//! The command line: its schema (clap), one file per command with its printer,
//! the progress bar, the option parsers, and the exit statuses by name.

mod archive;
mod args;
mod audit;
mod check;
mod dead_letters;
mod exit;
mod progress;
mod publish;
mod replay;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use candystore::config::Settings;
use candystore::source::publish::{LoadSpec, Shape};

use args::{cli_time, filter};
use exit::Usage;
pub(crate) use exit::{EXIT_CODES, Exit};

/// Candystore: stores every Bloodbank event in PostgreSQL and serves them over REST.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// A TOML file of settings (lower-case variable names); the environment wins.
    #[arg(long, global = true, value_name = "FILE", env = "CANDYSTORE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Consume, store and serve until SIGTERM or SIGINT.
    Serve,
    /// Check what `serve` needs without serving: the settings, the database and its schema, the broker (exchange,
    /// queue, a binding tried on a temporary queue), the signing key file, the ports. Exit 0 when all holds, 1
    /// naming what does not.
    Check,
    /// Apply the migrations in sql/ to DATABASE_URL and exit. Safe to run twice, and from two processes at once.
    /// Moving a plain events table to time partitions runs online: the service keeps ingesting and answering.
    Migrate {
        /// Create DATABASE_URL's database first when it does not exist (as its user, through the server's
        /// `postgres` database).
        #[arg(long)]
        create_database: bool,
    },
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
        /// Archive files (`events_p….ndjson.zst`, `dead_letter_p….ndjson.zst`), or an archive's directory
        /// (or its manifest.json) for every file its manifest lists.
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
        /// What pads the body: `text`, `int-array` (one array of integers, the
        /// worst case for a JSON parser's memory), or `skewed` (generation-1 events
        /// drawn like loadtest/fill-skewed.sql's rows, ~1 KB whatever --size says).
        #[arg(long, default_value = "text", value_parser = ["text", "int-array", "skewed"])]
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
    /// Publish one event by hand: the document in FILE (or standard input) to RABBIT_EXCHANGE with ROUTING_KEY,
    /// persistent, confirmed by the broker. Nothing is checked: what Candystore cannot store as an event becomes a
    /// dead letter, as it would from any publisher.
    Send {
        /// The routing key (by Bloodbank's convention, the event type: `agent.task.started`).
        routing_key: String,
        /// The body's file; `-` or none for standard input.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
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
        #[arg(long, value_name = "JSON", value_parser = |s: &str| candystore::model::query::containment(s).map_err(|e| e.reason))]
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
pub(crate) struct DeadLetterFilter {
    /// Only this reason (invalid_json, unrecognised_envelope, rejected_by_database, ...).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Only this routing key.
    #[arg(long)]
    pub(crate) routing_key: Option<String>,
    /// Received at or after (RFC 3339, or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = cli_time)]
    pub(crate) since: Option<chrono::DateTime<chrono::Utc>>,
    /// Received at or before (RFC 3339, or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = cli_time)]
    pub(crate) until: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One dead letter whole, as JSON: metadata, properties, and its body (as text when it is UTF-8, else hex).
    Show {
        /// The dead letter's id (the first column of `list`).
        id: i64,
    },
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
        /// The dead letters' ids; or select them with the filters (or --all).
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// Print what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Select every dead letter (when no id or filter is given).
        #[arg(long)]
        all: bool,
    },
}

/// Runs one command.
pub(crate) async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => service::serve(settings).await,
        Command::Check => check::check(&settings).await,
        Command::Migrate { create_database } => service::migrate(&settings, create_database).await,
        Command::Maintain => service::maintain(&settings).await,
        Command::Archive { before, to, drop } => {
            archive::archive(&settings, before, &to, drop).await
        }
        Command::Restore { files } => archive::restore(&settings, &files).await,
        Command::Publish {
            count,
            size,
            rate,
            generation,
            shape,
            without_time,
            days_back,
        } => {
            publish::publish(
                &settings,
                LoadSpec {
                    count,
                    size,
                    rate,
                    generation,
                    run_id: uuid::Uuid::new_v4().to_string(),
                    shape: match shape.as_str() {
                        "int-array" => Shape::IntArray,
                        "skewed" => Shape::Skewed,
                        _ => Shape::Text,
                    },
                    without_time,
                    days_back,
                },
            )
            .await
        }
        Command::Send { routing_key, file } => {
            publish::send(&settings, &routing_key, file.as_deref()).await
        }
        Command::DeadLetters(command) => dead_letters::dead_letters(&settings, command).await,
        Command::Verify {
            checkpoint,
            public_key,
        } => audit::verify(&settings, checkpoint, public_key).await,
        Command::Prove {
            id,
            source,
            position,
        } => audit::prove(&settings, id, source, position).await,
        Command::VerifyProof { bundle, public_key } => audit::verify_proof(&bundle, &public_key),
        Command::Redact {
            id,
            source,
            position,
            reason,
            by,
        } => audit::redact(&settings, id, source, position, &reason, by).await,
        Command::Witness {
            listen,
            log_keys,
            state,
            key_file,
            name,
        } => audit::witness(&listen, &log_keys, state, &key_file, &name).await,
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
            let query = candystore::model::query::EventQuery {
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
            replay::replay(&settings, query, &exchange, rate, resume.as_deref()).await
        }
    }
}

/// The exit status of a command's result. An error is written once: by `serve` as
/// a log line (its log is the service's record, JSON for collectors), by every
/// other command (and by `serve` with its log off) as one `candystore: …` line on
/// stderr for the person who typed it.
pub(crate) fn exit_status(result: anyhow::Result<ExitCode>, serving: bool) -> ExitCode {
    let e = match result {
        Ok(code) => return code,
        Err(e) => e,
    };
    let usage = e
        .downcast_ref::<candystore::config::ConfigError>()
        .is_some()
        || e.downcast_ref::<Usage>().is_some()
        || matches!(
            e.downcast_ref::<candystore::ops::dead_letters::OpsError>(),
            Some(candystore::ops::dead_letters::OpsError::NotFound(_))
        )
        || matches!(
            e.downcast_ref::<candystore::source::publish::RepublishError>(),
            Some(candystore::source::publish::RepublishError::NoExchange { .. })
        );
    let message = describe(&e);
    // A log that would not show an error (LOG_LEVEL=off) does not hide this one.
    let logged = serving && tracing::enabled!(tracing::Level::ERROR);
    match (logged, usage) {
        (true, true) => {
            tracing::error!(error = message, "candystore cannot start with this setting")
        }
        (true, false) => tracing::error!(error = message, "candystore failed"),
        (false, _) => eprintln!("candystore: {message}"),
    }
    if usage { Exit::Usage } else { Exit::Failed }.into()
}

/// An error and its causes on one line, with what to do when the cause is one a
/// newcomer meets first: a database without Candystore's tables.
fn describe(e: &anyhow::Error) -> String {
    let mut message = candystore::telemetry::error_chain(e.as_ref());
    let undefined_table = e.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    });
    if undefined_table {
        message.push_str(
            " (DATABASE_URL has no Candystore tables yet: run `candystore migrate` first)",
        );
    }
    let missing_database = e.chain().any(|cause| {
        cause
            .downcast_ref::<candystore::db::DbError>()
            .is_some_and(candystore::db::is_missing_database)
    });
    if missing_database {
        message.push_str(" (create it, or run `candystore migrate --create-database`)");
    }
    message
}
