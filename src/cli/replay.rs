//! `replay`: stored events published again, with a resumable position.

use std::process::ExitCode;

use anyhow::Context;

use candystore::config::{Database, Settings};
use candystore::ops::store::Store;
use candystore::{db, storage};

use super::exit::{Exit, Usage};
use super::progress::Bar;

pub(crate) async fn replay(
    settings: &Settings,
    query: candystore::model::query::EventQuery,
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
    // The embedded file is read beside its service, read-only.
    let store = match settings.database() {
        Database::Postgres(url) => Store::Postgres(db::connect(&db::pg_config(url)?).await?),
        Database::Sqlite(path) => Store::sqlite(path, false)?,
    };
    let publisher = candystore::source::publish::Republisher::connect(&settings.rabbit_url)
        .await
        .context("cannot connect to the broker")?;
    publisher.check_exchange(exchange).await?;
    let job = Replay {
        query: &query,
        exchange,
        rate,
        resume,
    };
    let bar = Bar::new();
    storage::archive::Progress::start(&bar, "replaying", replay::count(&store, &job).await?);
    let mut progress = Progress::default();
    let started = std::time::Instant::now();
    let outcome = tokio::select! {
        r = replay::run(&store, &publisher, &job, &mut progress, |_| bar.0.inc(1)) => Some(r),
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
            eprintln!("stopped: {summary}");
            Err(e.into())
        }
        None => {
            eprintln!("interrupted: {summary}");
            Ok(Exit::Interrupted.into())
        }
    }
}
