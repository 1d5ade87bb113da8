//! Reading one large event for many clients at once: a bounded number of such
//! reads, and one read (one copy in memory) per event however many clients ask
//! for it at the same moment.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;

use super::problem::Problem;

/// A single event stored in more than this many bytes (after compression) is
/// read through [`LargeReads`].
pub const LARGE_STORED_BYTES: i32 = 256 << 10;
/// Large single-row reads running at once (`/events/{id}`, `/events/{id}/raw`,
/// `/dead-letters/{id}`).
pub const LARGE_READS_AT_ONCE: usize = 4;
/// How long a large read waits for its turn before a 503.
const LARGE_READ_WAIT: Duration = Duration::from_secs(30);

/// A rendered answer, or the problem's status and detail (shared by all waiters).
type Outcome = Result<Bytes, (u16, String)>;

/// What is read: (kind of answer, storage sequence).
pub type Key = (Kind, i64);

/// The answers read through [`LargeReads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `GET /events/{id}`.
    EventView,
    /// `GET /events/{id}/raw`.
    RawEnvelope,
    /// `GET /dead-letters/{id}`.
    DeadLetter,
}

#[derive(Debug)]
pub struct LargeReads {
    permits: Arc<Semaphore>,
    inflight: Mutex<HashMap<Key, Shared<BoxFuture<'static, Outcome>>>>,
    /// Reads run (`candystore_api_large_reads_total`): one per key at a time,
    /// however many clients joined it.
    runs: prometheus::IntCounter,
}

impl LargeReads {
    pub fn new(runs: prometheus::IntCounter) -> Self {
        LargeReads {
            permits: Arc::new(Semaphore::new(LARGE_READS_AT_ONCE)),
            inflight: Mutex::new(HashMap::new()),
            runs,
        }
    }

    /// Runs `read` for `key`, or joins the read already running for it.
    pub async fn read(
        self: &Arc<Self>,
        key: Key,
        read: impl Future<Output = Result<Bytes, Problem>> + Send + 'static,
    ) -> Result<Bytes, Problem> {
        let shared = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(running) => running.clone(),
                None => {
                    // A task of its own: it runs to the end (and gives its permit and
                    // its entry back) even if every client waiting for it goes away.
                    let this = self.clone();
                    self.runs.inc();
                    let task = tokio::spawn(async move {
                        let outcome = this.run(read).await;
                        this.inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                        outcome
                    });
                    let fut = async move {
                        task.await
                            .unwrap_or_else(|_| Err((503, "the read was interrupted".into())))
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, fut.clone());
                    fut
                }
            }
        };
        shared.await.map_err(|(status, detail)| {
            Problem::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                detail,
            )
        })
    }

    async fn run(&self, read: impl Future<Output = Result<Bytes, Problem>>) -> Outcome {
        let Ok(Ok(_permit)) =
            tokio::time::timeout(LARGE_READ_WAIT, self.permits.clone().acquire_owned()).await
        else {
            return Err((
                503,
                format!(
                    "too many large events are being read at once (at most {LARGE_READS_AT_ONCE}); retry later"
                ),
            ));
        };
        read.await.map_err(|p| (p.status, p.detail))
    }
}

/// Hands a body to actix in 64 KiB slices of the same buffer (no copy), so a
/// connection holds one slice in its write buffer at a time rather than a copy of
/// the whole body: 100 clients of a 20 MB event share one 20 MB buffer.
pub fn in_slices(body: Bytes) -> actix_web::body::BoxBody {
    const SLICE: usize = 64 << 10;
    if body.len() <= SLICE {
        return actix_web::body::BoxBody::new(body);
    }
    let len = body.len();
    let slices = (0..len)
        .step_by(SLICE)
        .map(move |at| Ok::<_, std::convert::Infallible>(body.slice(at..(at + SLICE).min(len))));
    actix_web::body::BoxBody::new(actix_web::body::SizedStream::new(
        len as u64,
        futures::stream::iter(slices),
    ))
}
