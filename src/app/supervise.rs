//! Supervision of the pipeline tasks and the background jobs: never a process
//! that serves but does not ingest, sign, or keep its partitions.
//!
//! The consumer, the writer and the jobs run until shutdown. If either ends or panics
//! before shutdown was asked for, [`Supervisor::fail`] logs the cause once, turns
//! `/ready` to 503 and fires [`Supervisor::failed`]; `main` then shuts down
//! within SHUTDOWN_TIMEOUT and exits non-zero so the process supervisor restarts
//! it. Nothing is acked to tidy up: what was not committed is redelivered.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

/// Watches the pipeline tasks and remembers the first failure.
#[derive(Debug, Default)]
pub struct Supervisor {
    stopping: AtomicBool,
    failed: CancellationToken,
    cause: Mutex<Option<String>>,
    task: Mutex<Option<&'static str>>,
}

impl Supervisor {
    /// From here on a task that ends is doing what it was asked.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Records a task's failure; only the first is logged (the rest follow from it).
    pub fn fail(&self, task: &'static str, cause: String) {
        let mut first = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::error!(task, cause = %cause, "pipeline task failed; the process will exit for its supervisor to restart it");
            *first = Some(format!("{task}: {cause}"));
            *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            self.failed.cancel();
        }
    }

    /// Resolves once a pipeline task failed.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    pub fn has_failed(&self) -> bool {
        self.failed.is_cancelled()
    }

    /// The first failure, as `task: cause`.
    pub fn cause(&self) -> Option<String> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The task that failed first.
    pub fn failed_task(&self) -> Option<&'static str> {
        *self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a pipeline task, catching its panic. `None` when it panicked. Ending
    /// before [`Supervisor::stopping`] is a failure too.
    pub async fn watch<T>(&self, task: &'static str, fut: impl Future<Output = T>) -> Option<T> {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => {
                if !self.stopping.load(Ordering::SeqCst) {
                    self.fail(task, "ended before shutdown was asked for".into());
                }
                Some(v)
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                self.fail(task, format!("panicked: {message}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_once_with_its_message() {
        let s = Supervisor::default();
        let r: Option<()> = s.watch("sink", async { panic!("boom") }).await;
        assert!(r.is_none());
        assert!(s.has_failed());
        s.fail("source", "ended".into());
        assert_eq!(s.cause().as_deref(), Some("sink: panicked: boom"));
    }

    #[tokio::test]
    async fn a_task_ending_before_shutdown_is_a_failure_and_after_it_is_not() {
        let s = Supervisor::default();
        assert_eq!(s.watch("source", async { 7 }).await, Some(7));
        assert_eq!(
            s.cause().as_deref(),
            Some("source: ended before shutdown was asked for")
        );
        let s = Supervisor::default();
        s.stopping();
        assert_eq!(s.watch("source", async { 7 }).await, Some(7));
        assert!(!s.has_failed());
    }
}
