//! Exponential back-off with jitter, for every retry loop (broker reconnects,
//! batch writes). Each wait is drawn between half and all of the current step,
//! so several instances that failed together do not retry in step.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            step: first,
        }
    }

    /// The next wait: between half and all of the current step, which then doubles
    /// up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(unit_random())
    }

    /// After a success: start again from the first step.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// A number in [0, 1) from the process's random source (no extra crate needed).
fn unit_random() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() >> 75; // 53 random bits
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_and_stay_within_half_to_all_of_the_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for step in [100, 200, 400, 800, 1000, 1000] {
            let w = b.next_wait();
            let step = Duration::from_millis(step);
            assert!(w >= step / 2 && w <= step, "{w:?} for step {step:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn waits_are_spread_so_instances_do_not_retry_in_step() {
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait())
            .collect();
        assert!(waits.len() > 40, "only {} distinct waits", waits.len());
    }
}
