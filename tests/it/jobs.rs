//! The background jobs' loop (`jobs::run_forever`) under supervision: a
//! stop lets the step under way finish, and a job that panics is reported once,
//! by name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use candystore::app::supervise::Supervisor;
use candystore::db;
use candystore::jobs::{Job, run_forever};
use candystore::storage::StorageError;
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::helpers::TempDb;

/// A step that takes a while, then says it finished; or one that panics.
struct Slow {
    started: Arc<Notify>,
    finished: Arc<AtomicBool>,
    panics: bool,
}

impl Job for Slow {
    const NAME: &'static str = "slow";
    type Error = StorageError;

    fn retry_in(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn step(&mut self, client: &mut Client) -> Result<Duration, StorageError> {
        self.started.notify_one();
        assert!(!self.panics, "injected: the slow job panicked");
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.simple_query("SELECT 1").await?;
        self.finished.store(true, Ordering::SeqCst);
        Ok(Duration::from_secs(3600))
    }
}

fn slow(panics: bool) -> (Slow, Arc<Notify>, Arc<AtomicBool>) {
    let started = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let job = Slow {
        started: started.clone(),
        finished: finished.clone(),
        panics,
    };
    (job, started, finished)
}

#[tokio::test]
async fn a_stopped_job_finishes_the_step_it_is_in_before_it_ends() {
    let db = TempDb::new(false).await;
    let (job, started, finished) = slow(false);
    let stop = CancellationToken::new();
    let target = db::pg_config(&db.url).unwrap();
    let run = tokio::spawn(run_forever(target, stop.clone(), job));
    started.notified().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the job ends after its step")
        .unwrap();
    assert!(finished.load(Ordering::SeqCst), "the step was cut short");
    db.drop_it().await;
}

#[tokio::test]
async fn a_job_that_panics_is_a_failure_named_after_it() {
    let db = TempDb::new(false).await;
    let (job, _, _) = slow(true);
    let supervisor = Supervisor::default();
    let target = db::pg_config(&db.url).unwrap();
    let ended = supervisor
        .watch(
            "catalog",
            run_forever(target, CancellationToken::new(), job),
        )
        .await;
    assert!(ended.is_none());
    let cause = supervisor.cause().unwrap();
    assert!(
        cause.starts_with("catalog: panicked: injected: the slow job panicked"),
        "{cause}"
    );
    assert!(supervisor.has_failed());
    db.drop_it().await;
}
