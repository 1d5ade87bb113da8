//! Option values parsed where clap reads them, so a bad one exits 2 naming it.

use anyhow::Context;

use candystore::audit::note::VerifierKey;
use candystore::ops::dead_letters::Filter;

use super::DeadLetterFilter;

/// A time option (`--before`, `--since`, `--until`): a date (midnight UTC) or an
/// RFC 3339 time. Clap names the option in the error and exits 2.
pub(crate) fn cli_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    candystore::model::query::time_bound(s)
        .ok_or_else(|| "expected YYYY-MM-DD or an RFC 3339 time".to_owned())
}

/// An equality filter option: a value a stored identifier could be.
pub(crate) fn filter(name: &'static str, s: &str) -> Result<String, String> {
    candystore::model::query::identifier(name, s).map_err(|e| e.reason)
}

pub(crate) fn dead_letter_filter(ids: Vec<i64>, f: DeadLetterFilter) -> Filter {
    Filter {
        ids,
        reason: f.reason,
        routing_key: f.routing_key,
        since: f.since,
        until: f.until,
    }
}

/// A public key given on the command line: the key itself, or a file holding it.
pub(crate) fn public_key_arg(arg: &str) -> anyhow::Result<VerifierKey> {
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
