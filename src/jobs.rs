//! The loop every background job runs in (maintenance, the audit tree, the
//! catalog): one worker connection, opened again after any failure; a step; a
//! rest the step chooses; failures logged and retried; `stop` ends it after the
//! step under way (or during its rest). The jobs themselves live with what they
//! keep (`storage::maintain`, `storage::catalog`, `audit::job`) and register here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::db::DbError;

/// What a job's failed step says of itself.
pub trait Failure: std::error::Error + Send + 'static {
    /// The same step may succeed later.
    fn is_retryable(&self) -> bool;
    /// A table or column a pending migration adds is missing.
    fn schema_pending(&self) -> bool;
}

/// One background job: a name for the log, and its step.
pub trait Job: Send {
    const NAME: &'static str;
    type Error: Failure;
    /// How long to wait after a failed step (on a new connection).
    fn retry_in(&self) -> Duration;
    /// One step; returns how long to rest before the next (zero to go on at once).
    fn step(
        &mut self,
        client: &mut Client,
    ) -> impl Future<Output = Result<Duration, Self::Error>> + Send;
    /// What ends the job's rest early, if anything.
    fn wake(&self) -> Option<Wake> {
        None
    }
}

/// Ends a job's rest early: the next step starts at once. A wake during a step
/// is kept (one, however many arrive) and ends the rest that follows it.
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }
}

/// Runs `job` until `stop`, which lets a step under way finish. After a success the job rests for what the step
/// returned; after a failure, for its `retry_in`, on a new connection. A schema
/// that is not there yet (an online migration, and the plain ones behind it, still
/// pending) is logged at debug only.
pub async fn run_forever<J: Job>(target: crate::db::PgTarget, stop: CancellationToken, mut job: J) {
    let mut client: Option<Client> = None;
    let wake = job.wake();
    let woken = async |wake: &Option<Wake>| match wake {
        Some(w) => w.woken().await,
        None => std::future::pending().await,
    };
    loop {
        // Connecting is cut by a stop (nothing is under way yet); a step under way
        // is finished, not cut: an archive is written whole and a chain step
        // commits. Shutdown bounds the wait (SHUTDOWN_TIMEOUT) and aborts the task
        // past it; what a cut step held then rolls back.
        let connected = if client.as_ref().is_none_or(|c| c.is_closed()) {
            tokio::select! {
                c = crate::db::connect_worker(&target) => c.map(|c| client = Some(c)),
                _ = stop.cancelled() => return,
            }
        } else {
            Ok(())
        };
        let outcome = match connected {
            Ok(()) => job
                .step(client.as_mut().expect("connected above"))
                .await
                .map_err(Failed::Step),
            Err(e) => Err(Failed::Connect(e)),
        };
        if stop.is_cancelled() {
            return;
        }
        let rest = match outcome {
            Ok(rest) => rest,
            Err(Failed::Connect(e)) => {
                tracing::warn!(job = J::NAME, error = %crate::telemetry::error_chain(&e), "{} cannot connect; the next run tries again", J::NAME);
                client = None;
                job.retry_in()
            }
            Err(Failed::Step(e)) => {
                if e.schema_pending() {
                    tracing::debug!(job = J::NAME, error = %e, "tables not there yet");
                } else {
                    tracing::warn!(job = J::NAME, error = %crate::telemetry::error_chain(&e), retryable = e.is_retryable(), "{} run failed; the next run tries again", J::NAME);
                }
                client = None;
                job.retry_in()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = woken(&wake) => tracing::debug!(job = J::NAME, "woken before its time"),
            _ = stop.cancelled() => return,
        }
    }
}

/// Takes this instance's turn at a job for the transaction: false when another
/// instance holds it (that step is skipped, not waited for).
pub async fn take_turn(
    tx: &tokio_postgres::Transaction<'_>,
    lock_key: i64,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&lock_key])
        .await?
        .get(0))
}

/// A step's failure, or the connection's before it.
enum Failed<E> {
    Connect(DbError),
    Step(E),
}

/// A table or column a pending migration adds.
pub fn pending_code(db: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    db.code() == Some(&SqlState::UNDEFINED_TABLE) || db.code() == Some(&SqlState::UNDEFINED_COLUMN)
}
