//! `archive` and `restore`: partitions to files and back.

use std::path::PathBuf;
use std::process::ExitCode;

use candystore::config::{Database, Settings};
use candystore::{db, storage};

use anyhow::Context;

use super::exit::Exit;
use super::progress::Bar;

pub(crate) async fn archive(
    settings: &Settings,
    before: chrono::DateTime<chrono::Utc>,
    dir: &std::path::Path,
    drop: bool,
) -> anyhow::Result<ExitCode> {
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let done = match settings.database() {
        Database::Postgres(url) => {
            let target = db::pg_config(url)?;
            let mut client = storage::connect(&target).await?;
            storage::archive::archive_before(
                &mut client,
                before,
                dir,
                drop,
                candystore::audit::attest::Keyring::new(&settings.audit_keys).as_ref(),
                Some(&bar),
            )
            .await?
        }
        Database::Sqlite(path) => {
            // Dropping writes: the file is this process's meanwhile (taken
            // before anything is archived, so a running service is named first).
            let owner = if drop {
                let file = candystore::store::sqlite::Sqlite::own(path).with_context(|| {
                    format!("cannot drop from the embedded store {}", path.display())
                })?;
                let handle = candystore::store::sqlite::write::Handle::start(&file)?;
                Some((file, handle))
            } else {
                None
            };
            let entries =
                candystore::store::sqlite::archive::archive_before(path, before, dir).await?;
            let mut dropped = Vec::new();
            if let Some((_file, handle)) = &owner {
                let keyring = candystore::audit::attest::Keyring::new(&settings.audit_keys)
                    .map(std::sync::Arc::new);
                for e in &entries {
                    let table =
                        storage::Table::of_partition(&e.file).expect("an archive file's name");
                    let d = candystore::store::sqlite::retention::drop_day(
                        handle,
                        path,
                        table,
                        e.from.timestamp_micros(),
                        e.max_seq.unwrap_or(0),
                        keyring.clone(),
                    )
                    .await?;
                    dropped.push(format!("{} ({} rows)", d.partition, d.rows));
                }
            }
            storage::archive::Archived {
                entries,
                dropped,
                ..Default::default()
            }
        }
    };
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
    for (table, rows) in &done.waiting {
        let at_least = if *rows >= storage::archive::WAITING_COUNTED_UP_TO {
            "at least "
        } else {
            ""
        };
        println!(
            "not archived: {at_least}{rows} row(s) of {} before {} wait in {}, which no archive takes; \
             `candystore maintain` moves them into partitions of their own, then archive again",
            table.name(),
            before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            table.default_partition()
        );
    }
    Ok(Exit::Clean.into())
}

pub(crate) async fn restore(settings: &Settings, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let files = storage::archive::archive_files(files)?;
    let keyring = candystore::audit::attest::Keyring::new(&settings.audit_keys);
    let done = match settings.database() {
        Database::Postgres(url) => {
            let target = db::pg_config(url)?;
            let mut client = storage::connect(&target).await?;
            storage::archive::restore(&mut client, &files, keyring.as_ref(), Some(&bar)).await?
        }
        Database::Sqlite(path) => {
            candystore::store::sqlite::archive::restore(path, &files, keyring.as_ref()).await?
        }
    };
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
