//! `dead-letters list | show | replay | purge` and their printers.

use std::process::ExitCode;

use candystore::config::{Database, Settings};
use candystore::db;
use candystore::ops::dead_letters::Filter;

use super::DeadLetterCommand;
use super::args::dead_letter_filter;
use super::exit::{Exit, Usage};

pub(crate) async fn dead_letters(
    settings: &Settings,
    command: DeadLetterCommand,
) -> anyhow::Result<ExitCode> {
    use candystore::ops::dead_letters as dl;
    let mut client = match settings.database() {
        Database::Postgres(url) => dl::Store::Postgres(db::connect(&db::pg_config(url)?).await?),
        Database::Sqlite(path) => dl::Store::sqlite(path, true)?,
    };
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
            let listed = dl::list(&client, &filter, limit).await?;
            println!(
                "{:>10}  {:<27}  {:<22}  {:>9}  {:>7}  routing key",
                "id", "received at", "reason", "bytes", "replays"
            );
            for d in listed {
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
                Err(_) => out["body_hex"] = candystore::model::hex::encode(&d.body).into(),
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
            if let Some(exchange) = &exchange {
                publisher.check_exchange(exchange).await?;
            }
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
