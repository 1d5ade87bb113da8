//! `publish`: the load generator.

use std::process::ExitCode;

use anyhow::Context;

use candystore::config::Settings;
use candystore::source::publish::{LoadSpec, Publisher};

use super::exit::Exit;

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
