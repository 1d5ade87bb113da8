//! Checkpoints leave the database: each one signed is written to CHECKPOINT_DIR
//! and sent to every witness in WITNESS_URLS, so someone who can rewrite the
//! database cannot also rewrite what others remember of the tree.
//!
//! Witnesses speak C2SP `tlog-witness`: `POST <url>/add-checkpoint` with `old
//! N`, the consistency proof from the tree of `N` leaves (one base64 hash a
//! line), an empty line, and the signed checkpoint. `N` is the size the witness
//! last cosigned; a witness that knows another size answers 409 with it, and the
//! checkpoint is sent again from there once. A witness that has seen a *larger*
//! tree (a rollback), or finds the proof wrong (422), is logged as an error and
//! counted in `candystore_audit_witness_failures_total`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::store::{self, Head, Tables};
use super::tree::consistency_spans;
use crate::metrics::Metrics;

/// How long a witness has to answer.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);

/// What a witness made of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cosigned: its signature lines.
    Cosigned(String),
    /// It has seen a tree this one does not extend: larger, or a different one
    /// of the same size.
    Rollback {
        witness_size: u64,
    },
    /// It found the consistency proof wrong.
    BadProof,
    Unreachable(String),
    Refused {
        status: u16,
        body: String,
    },
}

impl Outcome {
    /// The metric's label (one of `metrics::WITNESS_FAILURE_REASONS`, or
    /// `cosigned`, which is not counted).
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Cosigned(_) => "cosigned",
            Outcome::Rollback { .. } => "rollback",
            Outcome::BadProof => "bad_proof",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Refused { .. } => "refused",
        }
    }
}

/// The body of an `add-checkpoint` request.
pub fn add_checkpoint_body(old: u64, proof: &[[u8; 32]], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for h in proof {
        body.push_str(&B64.encode(h));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Where checkpoints go, and what each witness was last sent.
pub struct Publisher {
    dir: Option<PathBuf>,
    witnesses: Vec<String>,
    /// The size each witness last cosigned (0 until it answers).
    known: HashMap<String, u64>,
    http: reqwest::Client,
}

impl Publisher {
    pub fn new(dir: Option<PathBuf>, witnesses: Vec<String>) -> Self {
        Publisher {
            dir,
            witnesses,
            known: HashMap::new(),
            http: reqwest::Client::builder()
                .timeout(WITNESS_TIMEOUT)
                .build()
                .expect("a client without custom TLS builds"),
        }
    }

    /// Writes `head` to the directory and sends it to every witness.
    pub async fn publish(&mut self, tables: &impl Tables, head: &Head, metrics: &Metrics) {
        if let Some(dir) = &self.dir
            && let Err(e) = write_checkpoint(dir, head).await
        {
            metrics.audit_checkpoint_dir_failures.inc();
            tracing::error!(dir = %dir.display(), size = head.size, error = %e, "cannot write the checkpoint to CHECKPOINT_DIR");
        }
        for url in self.witnesses.clone() {
            let outcome = self.send(tables, &url, head).await;
            match &outcome {
                Outcome::Cosigned(_) => {
                    tracing::debug!(witness = %url, size = head.size, "witness cosigned");
                    continue;
                }
                Outcome::Rollback { witness_size } => tracing::error!(
                    witness = %url,
                    size = head.size,
                    witness_size,
                    "the witness has seen a tree this checkpoint does not extend: was the audit tree rolled back or forked?"
                ),
                Outcome::BadProof => tracing::error!(
                    witness = %url,
                    size = head.size,
                    "the witness refused the consistency proof: the stored tree no longer extends what it saw"
                ),
                Outcome::Unreachable(e) => {
                    tracing::warn!(witness = %url, size = head.size, error = %e, "cannot reach the witness; the next checkpoint goes to it again")
                }
                Outcome::Refused { status, body } => tracing::error!(
                    witness = %url,
                    size = head.size,
                    status,
                    body = %body.chars().take(200).collect::<String>(),
                    "the witness refused the checkpoint"
                ),
            }
            metrics
                .audit_witness_failures
                .with_label_values(&[outcome.reason()])
                .inc();
        }
    }

    /// Sends `head` to one witness, once more from the size it says it knows.
    pub async fn send(&mut self, tables: &impl Tables, url: &str, head: &Head) -> Outcome {
        let mut old = self.known.get(url).copied().unwrap_or(0).min(head.size);
        for _ in 0..2 {
            let proof =
                match store::proof(tables, &consistency_spans(old, head.size), head.size).await {
                    Ok(p) => p,
                    Err(e) => return Outcome::Unreachable(format!("cannot read the proof: {e}")),
                };
            let body = add_checkpoint_body(old, &proof, &head.note);
            let res = match self
                .http
                .post(format!("{url}/add-checkpoint"))
                .body(body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return Outcome::Unreachable(crate::telemetry::error_chain(&e)),
            };
            let status = res.status().as_u16();
            let text = res.text().await.unwrap_or_default();
            match status {
                200 => {
                    self.known.insert(url.to_string(), head.size);
                    return Outcome::Cosigned(text);
                }
                409 => {
                    let Ok(size) = text.trim().parse::<u64>() else {
                        return Outcome::Refused { status, body: text };
                    };
                    if size > head.size || size == old {
                        return Outcome::Rollback { witness_size: size };
                    }
                    old = size;
                }
                422 => return Outcome::BadProof,
                _ => return Outcome::Refused { status, body: text },
            }
        }
        Outcome::Refused {
            status: 409,
            body: "the witness changed its size twice".into(),
        }
    }
}

/// Writes the checkpoint as `checkpoint-<size>` (through a temporary file and a
/// rename, so a reader never sees half of one) and as `latest`.
async fn write_checkpoint(dir: &std::path::Path, head: &Head) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    for name in [format!("checkpoint-{}", head.size), "latest".to_string()] {
        let tmp = dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, head.note.as_bytes()).await?;
        tokio::fs::File::open(&tmp).await?.sync_all().await?;
        tokio::fs::rename(&tmp, dir.join(&name)).await?;
    }
    Ok(())
}
