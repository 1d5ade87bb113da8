//! The acknowledgement handle that travels with each record to the sink.
//!
//! The sink settles tokens only after the COMMIT holding their rows returned; it
//! never sees a lapin type. Tokens of one broker channel share an [`AckChannel`],
//! which remembers the highest tag settled so a contiguous run of tags is settled
//! with one multiple-ack.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

/// Something that can acknowledge delivery tags on one broker channel.
pub trait Acknowledge: Send + Sync {
    /// Acks `tag`, or every tag up to and including it when `multiple`.
    fn ack(&self, tag: u64, multiple: bool) -> BoxFuture<'_, Result<(), AckError>>;
}

#[derive(Debug, thiserror::Error)]
#[error("failed to ack delivery {tag}: {reason}")]
pub struct AckError {
    pub tag: u64,
    pub reason: String,
}

/// One broker channel's acknowledgements. A reconnect makes a new one; tokens of
/// the old one then fail to ack, and the broker redelivers those deliveries.
pub struct AckChannel {
    inner: Box<dyn Acknowledge>,
    /// The highest tag acked so far; tags at or below it are settled.
    settled_up_to: Mutex<u64>,
    /// Tokens alive: deliveries of this channel in hand and not yet settled.
    live: AtomicUsize,
    /// Woken when `live` drops to zero.
    idle: tokio::sync::Notify,
}

impl AckChannel {
    pub fn new(inner: impl Acknowledge + 'static) -> Arc<Self> {
        Arc::new(Self {
            inner: Box::new(inner),
            settled_up_to: Mutex::new(0),
            live: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// Deliveries of this channel in hand and not yet settled.
    pub fn unsettled(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Returns once every delivery handed out on this channel has been settled
    /// (its ack sent) or given up (its token dropped).
    pub async fn all_settled(&self) {
        loop {
            // Registered before the check, so a drop to zero in between still wakes it.
            let idle = self.idle.notified();
            if self.unsettled() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The right to acknowledge one delivery. Dropping it unsettled leaves the
/// delivery for the broker to redeliver.
pub struct AckToken {
    channel: Arc<AckChannel>,
    tag: u64,
}

impl AckToken {
    pub fn new(channel: Arc<AckChannel>, tag: u64) -> Self {
        channel.live.fetch_add(1, Ordering::SeqCst);
        Self { channel, tag }
    }

    pub fn tag(&self) -> u64 {
        self.tag
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if self.channel.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.channel.idle.notify_waiters();
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckToken({})", self.tag)
    }
}

/// What settling a set of tokens did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Deliveries acknowledged.
    pub acked: usize,
    /// Ack frames sent (fewer than `acked` when multiple-acks were used).
    pub frames: usize,
    /// Deliveries whose ack failed (their channel is gone; they will be redelivered).
    pub failed: usize,
}

/// Acks every token. Only the sink calls this, and only after COMMIT.
///
/// Per channel, when the tokens' tags are exactly the run right after the highest
/// tag already settled, one multiple-ack of the last tag covers them all; otherwise
/// each tag is acked alone, so a multiple-ack never covers a delivery not in hand.
pub async fn settle(tokens: Vec<AckToken>) -> Settled {
    let mut out = Settled::default();
    // The tokens live until their acks were sent: a channel counts its
    // deliveries unsettled until then (`AckChannel::all_settled`).
    let mut groups: Vec<(Arc<AckChannel>, Vec<u64>)> = Vec::new();
    for t in &tokens {
        match groups.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &t.channel)) {
            Some((_, tags)) => tags.push(t.tag),
            None => groups.push((t.channel.clone(), vec![t.tag])),
        }
    }
    for (channel, mut tags) in groups {
        tags.sort_unstable();
        tags.dedup();
        let n = tags.len();
        let last = *tags.last().expect("groups are never empty");
        let contiguous = {
            let settled = *channel.settled_up_to.lock().expect("lock poisoned");
            tags[0] == settled + 1 && last - tags[0] + 1 == n as u64
        };
        if contiguous && n > 1 {
            out.frames += 1;
            match channel.inner.ack(last, true).await {
                Ok(()) => {
                    out.acked += n;
                    advance(&channel, last);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ack failed; the broker will redeliver");
                    out.failed += n;
                }
            }
            continue;
        }
        for tag in tags {
            out.frames += 1;
            match channel.inner.ack(tag, false).await {
                Ok(()) => {
                    out.acked += 1;
                    if contiguous {
                        advance(&channel, tag);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ack failed; the broker will redeliver");
                    out.failed += 1;
                }
            }
        }
    }
    drop(tokens);
    out
}

fn advance(channel: &AckChannel, tag: u64) {
    let mut settled = channel.settled_up_to.lock().expect("lock poisoned");
    if tag > *settled {
        *settled = tag;
    }
}

/// An [`Acknowledge`] that records what it was asked, for tests of the sink.
#[derive(Clone, Default)]
pub struct RecordingAcks {
    pub calls: Arc<Mutex<Vec<(u64, bool)>>>,
    pub fail: bool,
}

impl RecordingAcks {
    /// Every tag acknowledged so far, expanding multiple-acks.
    pub fn acked_tags(&self) -> Vec<u64> {
        let calls = self.calls.lock().expect("lock poisoned");
        let mut tags = Vec::new();
        for &(tag, multiple) in calls.iter() {
            if multiple {
                let from = tags.last().copied().unwrap_or(0) + 1;
                tags.extend(from..=tag);
            } else {
                tags.push(tag);
            }
        }
        tags.sort_unstable();
        tags
    }
}

impl Acknowledge for RecordingAcks {
    fn ack(&self, tag: u64, multiple: bool) -> BoxFuture<'_, Result<(), AckError>> {
        Box::pin(async move {
            if self.fail {
                return Err(AckError {
                    tag,
                    reason: "channel closed".into(),
                });
            }
            self.calls
                .lock()
                .expect("lock poisoned")
                .push((tag, multiple));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(channel: &Arc<AckChannel>, tags: impl IntoIterator<Item = u64>) -> Vec<AckToken> {
        tags.into_iter()
            .map(|t| AckToken::new(channel.clone(), t))
            .collect()
    }

    #[tokio::test]
    async fn a_channel_is_settled_only_once_every_delivery_in_hand_was_acked_or_dropped() {
        let ch = AckChannel::new(RecordingAcks::default());
        ch.all_settled().await; // nothing handed out yet
        let mut first = tokens(&ch, 1..=3);
        let last = first.pop().unwrap();
        assert_eq!(ch.unsettled(), 3);
        let waiting = tokio::spawn({
            let ch = ch.clone();
            async move { ch.all_settled().await }
        });
        settle(first).await;
        tokio::task::yield_now().await;
        assert_eq!(ch.unsettled(), 1);
        assert!(!waiting.is_finished(), "one delivery is still in hand");
        drop(last); // given up: the broker redelivers it when the channel closes
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("settled once the last token is gone")
            .unwrap();
        assert_eq!(ch.unsettled(), 0);
    }

    #[tokio::test]
    async fn a_contiguous_run_is_settled_with_one_multiple_ack() {
        let rec = RecordingAcks::default();
        let ch = AckChannel::new(rec.clone());
        let s = settle(tokens(&ch, 1..=50)).await;
        assert_eq!(
            s,
            Settled {
                acked: 50,
                frames: 1,
                failed: 0
            }
        );
        let s = settle(tokens(&ch, 51..=60)).await;
        assert_eq!(s.frames, 1);
        assert_eq!(*rec.calls.lock().unwrap(), vec![(50, true), (60, true)]);
        assert_eq!(rec.acked_tags(), (1..=60).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_gap_means_single_acks_so_nothing_outside_the_batch_is_acked() {
        let rec = RecordingAcks::default();
        let ch = AckChannel::new(rec.clone());
        // Tag 1 is still held elsewhere: a multiple-ack of 4 would cover it.
        let s = settle(tokens(&ch, [2, 3, 4])).await;
        assert_eq!(
            s,
            Settled {
                acked: 3,
                frames: 3,
                failed: 0
            }
        );
        assert!(
            rec.calls
                .lock()
                .unwrap()
                .iter()
                .all(|(_, multiple)| !multiple)
        );
        assert_eq!(rec.acked_tags(), vec![2, 3, 4]);
    }

    #[tokio::test]
    async fn tokens_of_a_dead_channel_fail_without_touching_the_new_one() {
        let old = AckChannel::new(RecordingAcks {
            fail: true,
            ..Default::default()
        });
        let rec = RecordingAcks::default();
        let new = AckChannel::new(rec.clone());
        let mut all = tokens(&old, [7, 8]);
        all.extend(tokens(&new, [1, 2]));
        let s = settle(all).await;
        assert_eq!(s.acked, 2);
        assert_eq!(s.failed, 2);
        assert_eq!(rec.acked_tags(), vec![1, 2]);
    }
}
