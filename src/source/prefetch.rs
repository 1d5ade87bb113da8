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

/// Deliveries observed before a raise is considered.
const RAISE_AFTER: u32 = 200;

#[derive(Debug, Clone)]
pub struct Prefetch {
    max: u16,
    budget: usize,
    current: u16,
    window_largest: usize,
    window_seen: u32,
}

impl Prefetch {
    pub fn new(max: u16, budget: usize) -> Self {
        Prefetch {
            max,
            budget,
            current: max,
            window_largest: 0,
            window_seen: 0,
        }
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
            return Some(fit);
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

    #[test]
    fn small_bodies_keep_the_full_prefetch() {
        let mut p = Prefetch::new(100, 256 * MB);
        for _ in 0..10_000 {
            assert_eq!(p.observe(1024), None);
        }
        assert_eq!(p.current(), 100);
    }

    #[test]
    fn a_large_body_shrinks_the_prefetch_at_once_to_fit_the_budget() {
        let mut p = Prefetch::new(100, 256 * MB);
        assert_eq!(p.observe(20 * MB), Some(12));
        assert_eq!(p.observe(20 * MB), None);
        assert_eq!(p.observe(300 * MB), Some(1), "never below one");
    }

    #[test]
    fn the_prefetch_comes_back_once_bodies_are_small_again() {
        let mut p = Prefetch::new(100, 256 * MB);
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
