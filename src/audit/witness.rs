//! A witness (C2SP `tlog-witness`): remembers the newest tree it has seen of
//! each log it follows, and cosigns a checkpoint only when it is signed by the
//! log's key and provably extends that tree. Run it where the log's operators
//! cannot write (`candystore witness`); the service sends it every checkpoint
//! (`audit::publish`). A rollback (a smaller tree, or another tree of the same
//! size) answers 409 with the size the witness knows; a proof that does not
//! hold, 422.
//!
//! Its state is a JSON file, replaced atomically after each checkpoint it
//! accepts, so a restart forgets nothing it cosigned.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::note::{Checkpoint, SigningKey, VerifierKey, split_note};
use super::tree::{self, Hash};

/// What the witness knows of one log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    /// base64.
    pub root: String,
}

/// A witness: the logs it follows, its own key, and what it has seen.
pub struct Witness {
    logs: HashMap<String, VerifierKey>,
    key: SigningKey,
    state_file: PathBuf,
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("cannot read the state file {0}: {1}")]
    State(String, String),
}

/// The answer to one request: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn answer(status: u16, body: impl Into<String>) -> Answer {
    Answer {
        status,
        body: body.into(),
    }
}

impl Witness {
    /// A witness following `logs` (their public keys, named by their origins),
    /// cosigning with `key`, keeping its state in `state_file`.
    pub fn open(
        logs: Vec<VerifierKey>,
        key: SigningKey,
        state_file: PathBuf,
    ) -> Result<Self, WitnessError> {
        let seen = match std::fs::read_to_string(&state_file) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                WitnessError::State(state_file.display().to_string(), e.to_string())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(WitnessError::State(
                    state_file.display().to_string(),
                    e.to_string(),
                ));
            }
        };
        Ok(Witness {
            logs: logs
                .into_iter()
                .map(|k| (k.name().to_string(), k))
                .collect(),
            key,
            state_file,
            seen: Mutex::new(seen),
        })
    }

    pub fn public_key(&self) -> VerifierKey {
        self.key.verifier()
    }

    /// What the witness has seen of `origin`.
    pub async fn seen(&self, origin: &str) -> Option<Seen> {
        self.seen.lock().await.get(origin).cloned()
    }

    /// Handles an `add-checkpoint` request body.
    pub async fn add_checkpoint(&self, body: &str) -> Answer {
        let Some((head, note)) = body.split_once("\n\n") else {
            return answer(400, "no empty line before the checkpoint");
        };
        let mut lines = head.lines();
        let Some(old) = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return answer(400, "the first line is not 'old <size>'");
        };
        let mut proof: Vec<Hash> = Vec::new();
        for l in lines {
            match B64
                .decode(l)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                Some(h) => proof.push(h),
                None => return answer(400, "a proof line is not a base64 hash"),
            }
        }
        let Ok((unsigned, _)) = split_note(note) else {
            return answer(400, "not a signed note");
        };
        let Ok(claimed) = Checkpoint::parse(unsigned) else {
            return answer(400, "not a checkpoint");
        };
        let Some(log) = self.logs.get(&claimed.origin) else {
            return answer(404, "unknown log");
        };
        let checkpoint = match log.open(note).map(Checkpoint::parse) {
            Ok(Ok(c)) => c,
            _ => return answer(403, "the checkpoint is not signed by the log's key"),
        };
        if old > checkpoint.size {
            return answer(400, "old size is larger than the checkpoint's");
        }
        let mut seen = self.seen.lock().await;
        let known = seen.get(&checkpoint.origin).cloned().unwrap_or(Seen {
            size: 0,
            root: B64.encode(tree::empty_root()),
        });
        if old != known.size {
            return answer(409, format!("{}\n", known.size));
        }
        let known_root: Hash = B64
            .decode(&known.root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 32]);
        if old == checkpoint.size && known_root != checkpoint.root {
            // Another tree of the size it knows: a fork.
            return answer(409, format!("{}\n", known.size));
        }
        if tree::verify_consistency(old, checkpoint.size, &known_root, &checkpoint.root, &proof)
            .is_err()
        {
            return answer(422, "the consistency proof does not hold");
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        seen.insert(
            checkpoint.origin.clone(),
            Seen {
                size: checkpoint.size,
                root: B64.encode(checkpoint.root),
            },
        );
        if let Err(e) = save(&self.state_file, &seen) {
            tracing::error!(file = %self.state_file.display(), error = %e, "cannot save the witness state");
            return answer(500, "cannot save the state");
        }
        answer(200, self.key.cosign(&checkpoint.body(), now))
    }
}

fn save(path: &std::path::Path, seen: &HashMap<String, Seen>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(seen)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn add_checkpoint(witness: web::Data<Arc<Witness>>, body: String) -> HttpResponse {
    let a = witness.add_checkpoint(&body).await;
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    if a.status == 409 {
        res.content_type("text/x.tlog.size");
    } else {
        res.content_type("text/plain; charset=utf-8");
    }
    res.body(a.body)
}

/// Serves the witness on `listener` (`POST /add-checkpoint`).
pub fn serve(
    listener: std::net::TcpListener,
    witness: Arc<Witness>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(witness);
    Ok(actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/add-checkpoint", web::post().to(add_checkpoint))
    })
    .workers(1)
    .listen(listener)?
    .run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::publish::add_checkpoint_body;
    use crate::audit::tree::{Frontier, leaf_hash};

    fn tree_of(n: u64) -> (Vec<Hash>, Frontier) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::default();
        for l in &leaves {
            f.append(*l, |_, _| {});
        }
        (leaves, f)
    }

    fn proof(leaves: &[Hash], old: u64, new: u64) -> Vec<Hash> {
        tree::consistency_spans(old, new)
            .iter()
            .map(|&(a, b)| {
                tree::range_hash(a, b, |n| {
                    let mut f = Frontier::default();
                    for l in &leaves[n.start() as usize..n.end() as usize] {
                        f.append(*l, |_, _| {});
                    }
                    f.root()
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn a_witness_cosigns_growth_and_refuses_rollback_forks_and_bad_proofs() {
        let log = SigningKey::generate("log.test/a").unwrap();
        let dir = std::env::temp_dir().join(format!("cs-witness-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.json");
        let w = Witness::open(
            vec![log.verifier()],
            SigningKey::generate("witness.test").unwrap(),
            state.clone(),
        )
        .unwrap();
        let note = |f: &Frontier| {
            log.sign(
                &Checkpoint {
                    origin: "log.test/a".into(),
                    size: f.size(),
                    root: f.root(),
                }
                .body(),
            )
        };
        let (leaves, t10) = tree_of(10);
        let a = w
            .add_checkpoint(&add_checkpoint_body(0, &[], &note(&t10)))
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        let body = Checkpoint {
            origin: "log.test/a".into(),
            size: 10,
            root: t10.root(),
        }
        .body();
        w.public_key().check_cosignature(&body, &a.body).unwrap();
        // Grown to 25, with its proof from 10.
        let (leaves25, t25) = tree_of(25);
        assert_eq!(&leaves25[..10], &leaves[..]);
        let ok = add_checkpoint_body(10, &proof(&leaves25, 10, 25), &note(&t25));
        assert_eq!(w.add_checkpoint(&ok).await.status, 200);
        // Sent from a size it does not know: 409 with the size it does.
        let stale = add_checkpoint_body(10, &proof(&leaves25, 10, 25), &note(&t25));
        assert_eq!(w.add_checkpoint(&stale).await, answer(409, "25\n"));
        // A smaller tree, and another tree of the same size: rollback and fork.
        assert_eq!(
            w.add_checkpoint(&add_checkpoint_body(25, &[], &note(&t10)))
                .await
                .status,
            400
        );
        let mut forked = Frontier::default();
        for i in 0..25u64 {
            forked.append(leaf_hash(&(i + 1000).to_be_bytes()), |_, _| {});
        }
        assert_eq!(
            w.add_checkpoint(&add_checkpoint_body(25, &[], &note(&forked)))
                .await,
            answer(409, "25\n")
        );
        // A proof that does not hold.
        let (leaves40, t40) = tree_of(40);
        let mut bad = proof(&leaves40, 25, 40);
        bad[0][0] ^= 1;
        assert_eq!(
            w.add_checkpoint(&add_checkpoint_body(25, &bad, &note(&t40)))
                .await
                .status,
            422
        );
        // Not signed by the log, or an unknown log.
        let other = SigningKey::generate("log.test/a").unwrap();
        let foreign = other.sign(
            &Checkpoint {
                origin: "log.test/a".into(),
                size: 40,
                root: t40.root(),
            }
            .body(),
        );
        assert_eq!(
            w.add_checkpoint(&add_checkpoint_body(
                25,
                &proof(&leaves40, 25, 40),
                &foreign
            ))
            .await
            .status,
            403
        );
        // It remembers across a restart.
        drop(w);
        let again = Witness::open(
            vec![log.verifier()],
            SigningKey::generate("witness.test").unwrap(),
            state,
        )
        .unwrap();
        assert_eq!(again.seen("log.test/a").await.unwrap().size, 25);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
