//! The consumer's prefetch, adapted to the size of what arrives, so that the
//! deliveries the broker hands over stay within MAX_INFLIGHT_BYTES.
//!
//! RabbitMQ bounds unacknowledged deliveries by count only (it ignores AMQP's
//! prefetch-size). With PREFETCH_COUNT = 100 and 20 MB bodies that is 2 GB held
//! by the client library before Candystore sees any of it. So the consumer
//! watches the sizes: once `prefetch × largest recent body` would pass the
//! budget, it re-subscribes with `budget / largest` (at least 1); when bodies
//! have been small again for a while, it raises the prefetch back, up to
//! PREFETCH_COUNT. Pure: the source does the re-subscribing.
//!
//! A new subscription knows nothing of the sizes waiting in the queue, and the
//! broker sends the first `prefetch` deliveries at once: a backlog of 1 MB bodies
//! would put PREFETCH_COUNT MB into the client library before the first one is
//! seen. So a subscription starts small (`SLOW_START`) and doubles each time a
//! whole prefetch's worth of deliveries fitted the budget, like TCP's slow start:
//! 8, 16, 32, 64, 100 for small bodies, within the first 120 deliveries.
//!
//! RabbitMQ counts unacknowledged deliveries per consumer, so the source
//! subscribes with a new prefetch only once the cancelled consumer is drained and
//! every delivery it handed over is settled: what is in hand never exceeds the
//! larger of the two prefetches, also while it changes (and stays at the old one
//! while the database is away).

/// Deliveries observed before a raise is considered.
const RAISE_AFTER: u32 = 200;
/// The prefetch a subscription starts with, before any size has been seen.
pub const SLOW_START: u16 = 8;

#[derive(Debug, Clone)]
pub struct Prefetch {
    max: u16,
    budget: usize,
    current: u16,
    window_largest: usize,
    window_seen: u32,
    /// Still doubling from `SLOW_START`; ends at `max` or at the first shrink.
    starting: bool,
}

impl Prefetch {
    pub fn new(max: u16, budget: usize) -> Self {
        let mut p = Prefetch {
            max,
            budget,
            current: max,
            window_largest: 0,
            window_seen: 0,
            starting: true,
        };
        p.current = p.fitting(1).min(SLOW_START);
        p.starting = p.current < max;
        p
    }

    pub fn current(&self) -> u16 {
        self.current
    }

    /// The prefetch that keeps `largest`-sized deliveries within the budget.
    fn fitting(&self, largest: usize) -> u16 {
        let n = self.budget / largest.max(1);
        n.clamp(1, usize::from(self.max)) as u16
    }

    /// Notes one delivery of `size` bytes; returns the new prefetch when the
    /// consumer should re-subscribe with it.
    pub fn observe(&mut self, size: usize) -> Option<u16> {
        self.window_largest = self.window_largest.max(size);
        self.window_seen += 1;
        let fit = self.fitting(self.window_largest);
        if fit < self.current {
            // Shrink at once: the next deliveries may be as large.
            self.current = fit;
            self.window_seen = 0;
            self.starting = false;
            return Some(fit);
        }
        if self.starting {
            if self.window_seen < u32::from(self.current) {
                return None;
            }
            self.window_seen = 0;
            self.window_largest = 0;
            let next = fit.min(self.current.saturating_mul(2));
            self.starting = next < fit;
            if next > self.current {
                self.current = next;
                return Some(next);
            }
            return None;
        }
        if self.window_seen >= RAISE_AFTER.max(u32::from(self.current) * 2) {
            self.window_seen = 0;
            self.window_largest = 0;
            // Raise only when it at least doubles: re-subscribing is not free.
            if fit >= self.current.saturating_mul(2) || (fit == self.max && fit > self.current) {
                self.current = fit;
                return Some(fit);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    /// The prefetches `observe` asks for over `n` deliveries of `size` bytes.
    fn raises(p: &mut Prefetch, n: usize, size: usize) -> Vec<u16> {
        (0..n).filter_map(|_| p.observe(size)).collect()
    }

    /// A prefetch past its slow start.
    fn started(max: u16, budget: usize) -> Prefetch {
        let mut p = Prefetch::new(max, budget);
        raises(&mut p, 1_000, 1024);
        p
    }

    #[test]
    fn small_bodies_reach_the_full_prefetch_by_doubling_from_the_slow_start() {
        let mut p = Prefetch::new(100, 256 * MB);
        assert_eq!(p.current(), SLOW_START);
        assert_eq!(raises(&mut p, 120, 1024), vec![16, 32, 64, 100]);
        assert_eq!(raises(&mut p, 10_000, 1024), Vec::<u16>::new());
        assert_eq!(p.current(), 100);
    }

    #[test]
    fn a_backlog_of_large_bodies_never_gets_more_than_the_budget_holds() {
        // 1 MB bodies under a 24 MB budget: 8, 16, then 24 (the fit), never 32.
        let mut p = Prefetch::new(100, 24 * MB);
        assert_eq!(raises(&mut p, 1_000, MB), vec![16, 24]);
        assert_eq!(p.current(), 24);
    }

    #[test]
    fn a_prefetch_below_the_slow_start_is_used_as_it_is() {
        let mut p = Prefetch::new(4, 256 * MB);
        assert_eq!(p.current(), 4);
        assert_eq!(raises(&mut p, 1_000, 1024), Vec::<u16>::new());
    }

    #[test]
    fn a_large_body_shrinks_the_prefetch_at_once_to_fit_the_budget() {
        let mut p = started(100, 256 * MB);
        assert_eq!(p.observe(20 * MB), Some(12));
        assert_eq!(p.observe(20 * MB), None);
        assert_eq!(p.observe(300 * MB), Some(1), "never below one");
    }

    #[test]
    fn the_prefetch_comes_back_once_bodies_are_small_again() {
        let mut p = started(100, 256 * MB);
        p.observe(20 * MB);
        let mut raised = None;
        for _ in 0..1_000 {
            if let Some(n) = p.observe(1024) {
                raised = Some(n);
                break;
            }
        }
        assert_eq!(raised, Some(100));
    }
}
