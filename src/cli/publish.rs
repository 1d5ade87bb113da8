//! `publish`, the load generator, and `send`, one event by hand.

use std::process::ExitCode;

use anyhow::Context;

use candystore::config::Settings;
use candystore::source::publish::{LoadSpec, Publisher};

use super::exit::{Exit, Usage};

pub(crate) async fn publish(settings: &Settings, spec: LoadSpec) -> anyhow::Result<ExitCode> {
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

pub(crate) async fn send(
    settings: &Settings,
    routing_key: &str,
    file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let body = match file {
        Some(path) if path != std::path::Path::new("-") => tokio::fs::read(path)
            .await
            .map_err(|e| Usage(format!("cannot read {}: {e}", path.display())))?,
        _ => {
            use tokio::io::AsyncReadExt;
            let mut body = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut body)
                .await
                .context("cannot read standard input")?;
            body
        }
    };
    let publisher = Publisher::connect(&settings.rabbit_url, &settings.rabbit_exchange)
        .await
        .context("cannot connect to the broker")?;
    publisher
        .publish(routing_key, &body, Default::default())
        .await
        .context("the broker did not take the event")?;
    println!(
        "sent {} bytes to exchange {:?} with routing key {routing_key:?} (confirmed)",
        body.len(),
        settings.rabbit_exchange
    );
    Ok(Exit::Clean.into())
}
