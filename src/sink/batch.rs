//! The batcher: gathers records from the bounded channel into a batch.
//!
//! The sink asks for a batch only when a writer is free, and the batch closes as
//! soon as the channel holds nothing more (group commit): light traffic is
//! written within a round trip of arriving, and a batch grows towards its row or
//! byte limit only while every writer is busy, from what queued meanwhile. The
//! age limit (FLUSH_INTERVAL) bounds how long a record may wait in an open batch;
//! a batch closed as soon as the channel is empty never comes near it.
//!
//! Pure but for time (tokio's clock, so tests run it with `tokio::time::pause()`).
//! It knows nothing of PostgreSQL or of acks.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// When a batch is closed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Rows at most; the app sets this to `min(BATCH_SIZE, PREFETCH_COUNT)`.
    pub rows: usize,
    /// Bytes held at most (a single larger record still makes a batch of one).
    pub bytes: usize,
    /// The longest the first record waits for the batch to close.
    pub age: Duration,
}

/// Why a batch was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushReason {
    Rows,
    Bytes,
    Age,
    /// Nothing more was waiting and a writer is free.
    Ready,
    /// The channel closed (shutdown): what is held is flushed.
    Closed,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Age => "age",
            FlushReason::Ready => "ready",
            FlushReason::Closed => "closed",
        }
    }
}

/// A closed batch.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    pub bytes: usize,
    pub reason: FlushReason,
    /// When the first item arrived.
    pub opened: Instant,
}

/// Accumulates items between flushes.
pub struct Batcher<T> {
    limits: Limits,
    items: Vec<T>,
    bytes: usize,
    opened: Option<Instant>,
}

impl<T> Batcher<T> {
    pub fn new(limits: Limits) -> Self {
        Self {
            items: Vec::with_capacity(limits.rows),
            limits,
            bytes: 0,
            opened: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// When the current batch must be flushed by age, if it holds anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.limits.age)
    }

    /// Adds an item of `bytes` size; returns why the batch must now close, if it must.
    pub fn push(&mut self, item: T, bytes: usize) -> Option<FlushReason> {
        let now = Instant::now();
        self.opened.get_or_insert(now);
        self.items.push(item);
        self.bytes += bytes;
        if self.items.len() >= self.limits.rows {
            Some(FlushReason::Rows)
        } else if self.bytes >= self.limits.bytes {
            Some(FlushReason::Bytes)
        } else if self.deadline().is_some_and(|d| now >= d) {
            Some(FlushReason::Age)
        } else {
            None
        }
    }

    /// Closes the current batch.
    pub fn take(&mut self, reason: FlushReason) -> Batch<T> {
        let items = std::mem::replace(&mut self.items, Vec::with_capacity(self.limits.rows));
        Batch {
            items,
            bytes: std::mem::take(&mut self.bytes),
            reason,
            opened: self.opened.take().unwrap_or_else(Instant::now),
        }
    }

    /// Waits for the next batch: for a first record, then takes whatever else is
    /// already waiting, up to the limits, without waiting for more. `None` once
    /// the channel is closed and everything it held has been returned.
    pub async fn next_batch(
        &mut self,
        rx: &mut mpsc::Receiver<T>,
        size_of: impl Fn(&T) -> usize,
    ) -> Option<Batch<T>> {
        let deadline = self.deadline();
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                return Some(self.take(FlushReason::Age));
            }
        };
        let Some(mut item) = first else {
            return (!self.is_empty()).then(|| self.take(FlushReason::Closed));
        };
        loop {
            let bytes = size_of(&item);
            if let Some(reason) = self.push(item, bytes) {
                return Some(self.take(reason));
            }
            item = match rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Empty) => {
                    return Some(self.take(FlushReason::Ready));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Some(self.take(FlushReason::Closed));
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rows: usize, bytes: usize, age_ms: u64) -> Limits {
        Limits {
            rows,
            bytes,
            age: Duration::from_millis(age_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batch_is_flushed_when_it_reaches_the_row_limit() {
        let (tx, mut rx) = mpsc::channel(100);
        for i in 0..7 {
            tx.send(i).await.unwrap();
        }
        let mut b = Batcher::new(limits(3, usize::MAX, 1_000));
        let first = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(first.items, vec![0, 1, 2]);
        assert_eq!(first.reason, FlushReason::Rows);
        let second = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(second.items, vec![3, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_record_goes_at_once_without_waiting_for_the_flush_interval() {
        let (tx, mut rx) = mpsc::channel(100);
        tx.send(1).await.unwrap();
        let mut b = Batcher::new(limits(100, usize::MAX, 50));
        let start = Instant::now();
        let batch = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(batch.items, vec![1]);
        assert_eq!(batch.reason, FlushReason::Ready);
        assert_eq!(start.elapsed(), Duration::ZERO);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_what_queued_while_the_writers_were_busy_and_no_more() {
        let (tx, mut rx) = mpsc::channel(100);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(5).await.unwrap();
        });
        let mut b = Batcher::new(limits(100, usize::MAX, 50));
        let batch = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(batch.items, vec![0, 1, 2, 3, 4]);
        assert_eq!(batch.reason, FlushReason::Ready);
        let later = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(later.items, vec![5]);
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn batch_is_flushed_at_the_byte_cap() {
        let (tx, mut rx) = mpsc::channel(100);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let mut b = Batcher::new(limits(100, 2_500, 1_000));
        let batch = b.next_batch(&mut rx, |_| 1_000).await.unwrap();
        assert_eq!(batch.items.len(), 3);
        assert_eq!(batch.bytes, 3_000);
        assert_eq!(batch.reason, FlushReason::Bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_batcher_waits_without_flushing_nothing() {
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let mut b = Batcher::new(limits(10, usize::MAX, 50));
        let waited =
            tokio::time::timeout(Duration::from_secs(3600), b.next_batch(&mut rx, |_| 1)).await;
        assert!(waited.is_err(), "an empty batcher must not produce a batch");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_flushes_what_is_held_then_ends() {
        let (tx, mut rx) = mpsc::channel(100);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        drop(tx);
        let mut b = Batcher::new(limits(100, usize::MAX, 1_000));
        let batch = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(batch.items, vec![1, 2]);
        assert_eq!(batch.reason, FlushReason::Closed);
        assert!(b.next_batch(&mut rx, |_| 1).await.is_none());
    }
}
