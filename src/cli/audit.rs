//! `verify`, `prove`, `verify-proof`, `redact` and `witness`: the audit trail's
//! commands and their printers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use candystore::config::{Database, Settings};
use candystore::db;

use super::args::public_key_arg;
use super::exit::Exit;

pub(crate) async fn verify(
    settings: &Settings,
    checkpoint: Option<PathBuf>,
    public_key: Option<String>,
) -> anyhow::Result<ExitCode> {
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
    let opts = candystore::audit::verify::Options {
        keyring: keyring.as_ref().filter(|_| checkpoint.is_none()),
        key: key.as_ref(),
        saved: saved.as_deref(),
        tree_only: checkpoint.is_some(),
    };
    let report = match settings.database() {
        Database::Postgres(url) => {
            let target = db::pg_config(url)?;
            let client = db::connect(&target).await?;
            let rows = db::connect(&target).await?;
            candystore::audit::verify::verify(&client, &rows, opts).await?
        }
        Database::Sqlite(path) => candystore::store::sqlite::verify::verify(path, opts).await?,
    };
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

/// The event an id (with its source) or a position names; `lookup` finds the
/// places of an id in the store.
pub(crate) async fn place_of<F>(
    lookup: F,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
) -> anyhow::Result<(i64, i64)>
where
    F: AsyncFnOnce(&str, Option<&str>) -> anyhow::Result<Vec<(i64, i64)>>,
{
    Ok(match (id, position) {
        (Some(id), None) => match lookup(&id, source.as_deref()).await?.as_slice() {
            [] => anyhow::bail!("no event {id:?}"),
            [p] => *p,
            _ => {
                anyhow::bail!("several events have the id {id:?}: give --source or --position")
            }
        },
        (None, Some(p)) => p
            .split_once('-')
            .and_then(|(t, s)| Some((t.parse().ok()?, s.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--position {p:?} is not {{txid}}-{{seq}}"))?,
        _ => anyhow::bail!("give the event's id, or --position"),
    })
}

/// The event an id or a position names in the embedded file at `path`.
async fn place_in_file(
    path: &std::path::Path,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
) -> anyhow::Result<(i64, i64)> {
    place_of(
        async |id: &str, source: Option<&str>| {
            Ok(candystore::store::sqlite::tree::places_of(path, id, source).await?)
        },
        id,
        source,
        position,
    )
    .await
}

/// The event an id or a position names in PostgreSQL.
async fn place_in_database(
    client: &tokio_postgres::Client,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
) -> anyhow::Result<(i64, i64)> {
    place_of(
        async |id: &str, source: Option<&str>| places_in(client, id, source).await,
        id,
        source,
        position,
    )
    .await
}

/// The places of an id in PostgreSQL.
async fn places_in(
    client: &tokio_postgres::Client,
    id: &str,
    source: Option<&str>,
) -> anyhow::Result<Vec<(i64, i64)>> {
    Ok(client
        .query(
            "SELECT txid, seq FROM events WHERE id = $1 AND ($2::text IS NULL OR source = $2) LIMIT 2",
            &[&id, &source],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub(crate) async fn prove(
    settings: &Settings,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
) -> anyhow::Result<ExitCode> {
    let bundle = match settings.database() {
        Database::Postgres(url) => {
            let client = db::connect(&db::pg_config(url)?).await?;
            let place = place_in_database(&client, id, source, position).await?;
            candystore::audit::proof::bundle(&client, place).await?
        }
        Database::Sqlite(path) => {
            let place = place_in_file(path, id, source, position).await?;
            candystore::store::sqlite::tree::bundle(path, place).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&bundle)?);
    Ok(Exit::Clean.into())
}

pub(crate) async fn redact(
    settings: &Settings,
    id: Option<String>,
    source: Option<String>,
    position: Option<String>,
    reason: &str,
    by: Option<String>,
) -> anyhow::Result<ExitCode> {
    let by = by.unwrap_or_else(|| "unknown".to_string());
    let keyring = candystore::audit::attest::Keyring::new(&settings.audit_keys);
    let done = match settings.database() {
        Database::Postgres(url) => {
            let mut client = db::connect(&db::pg_config(url)?).await?;
            let place = place_in_database(&client, id, source, position).await?;
            candystore::audit::redact::redact(
                &mut client,
                place,
                &by,
                reason,
                keyring.as_ref(),
                chrono::Utc::now(),
            )
            .await?
        }
        Database::Sqlite(path) => {
            let place = place_in_file(path, id, source, position).await?;
            candystore::store::sqlite::redact::redact(
                path,
                place,
                &by,
                reason,
                keyring.as_ref(),
                chrono::Utc::now(),
            )
            .await?
        }
    };
    println!(
        "redacted the event at leaf {} ({} dead letter(s) of the same delivery emptied); receipt: {}",
        done.leaf_index, done.dead_letters, done.receipt
    );
    Ok(Exit::Clean.into())
}

pub(crate) async fn witness(
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

pub(crate) fn verify_proof(path: &std::path::Path, public_key: &str) -> anyhow::Result<ExitCode> {
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
                candystore::model::hex::encode(&p.checkpoint.root),
            );
            Ok(Exit::Clean.into())
        }
        Err(e) => {
            println!("NOT PROVED: {}", candystore::telemetry::error_chain(&e));
            Ok(Exit::Tampered.into())
        }
    }
}
