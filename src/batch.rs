//! The batcher: gathers records from the bounded channel until a batch reaches its
//! row limit, its byte limit or its age limit, whichever comes first.
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
    /// The channel closed (shutdown): what is held is flushed.
    Closed,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Age => "age",
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

    /// Waits for the next batch to close. `None` once the channel is closed and
    /// everything it held has been returned.
    pub async fn next_batch(
        &mut self,
        rx: &mut mpsc::Receiver<T>,
        size_of: impl Fn(&T) -> usize,
    ) -> Option<Batch<T>> {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                biased;
                item = rx.recv() => match item {
                    Some(item) => {
                        let bytes = size_of(&item);
                        if let Some(reason) = self.push(item, bytes) {
                            return Some(self.take(reason));
                        }
                    }
                    None => {
                        return (!self.is_empty()).then(|| self.take(FlushReason::Closed));
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Some(self.take(FlushReason::Age));
                }
            }
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
    async fn batch_is_flushed_when_flush_interval_elapses() {
        let (tx, mut rx) = mpsc::channel(100);
        tx.send(1).await.unwrap();
        let mut b = Batcher::new(limits(100, usize::MAX, 50));
        let start = Instant::now();
        let batch = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(batch.items, vec![1]);
        assert_eq!(batch.reason, FlushReason::Age);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_counts_from_the_first_item_not_the_last() {
        let (tx, mut rx) = mpsc::channel(100);
        let sender = tokio::spawn(async move {
            for i in 0..10 {
                tx.send(i).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut b = Batcher::new(limits(100, usize::MAX, 50));
        let start = Instant::now();
        let batch = b.next_batch(&mut rx, |_| 1).await.unwrap();
        assert_eq!(batch.items, vec![0, 1, 2]);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        sender.abort();
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
