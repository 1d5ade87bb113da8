//! The sink's progress line: every minute in which anything happened, one line at
//! info with what was stored, how fast, what was dead-lettered and what waits in
//! the queue. An idle service writes nothing; the figures are the metrics'
//! (`candystore_events_stored_total`, `candystore_dead_letters_total`,
//! `candystore_queue_depth`), so the line and the dashboards agree.

use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How often the line is considered.
pub const EVERY: Duration = Duration::from_secs(60);

/// What the last line (or the start) saw.
pub struct Progress {
    stored: u64,
    dead_lettered: u64,
    at: Instant,
}

/// The figures a line is made of, read from the metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub stored: u64,
    pub dead_lettered: u64,
    pub queue_depth: i64,
}

impl Reading {
    pub fn of(metrics: &Metrics) -> Self {
        Self {
            stored: sum(&metrics.events_stored),
            dead_lettered: sum(&metrics.dead_letters),
            queue_depth: metrics.queue_depth.get(),
        }
    }
}

fn sum(counter: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

impl Progress {
    pub fn start(now: Reading, at: Instant) -> Self {
        Self {
            stored: now.stored,
            dead_lettered: now.dead_lettered,
            at,
        }
    }

    /// The line for the time since the last one, or none when nothing was
    /// stored, nothing dead-lettered and the queue is empty.
    pub fn line(&mut self, now: Reading, at: Instant) -> Option<String> {
        let stored = now.stored.saturating_sub(self.stored);
        let dead = now.dead_lettered.saturating_sub(self.dead_lettered);
        let secs = at
            .saturating_duration_since(self.at)
            .as_secs_f64()
            .max(1e-3);
        *self = Self::start(now, at);
        if stored == 0 && dead == 0 && now.queue_depth <= 0 {
            return None;
        }
        Some(format!(
            "stored {stored} event(s) in {secs:.0} s ({:.0}/s), {} in total; {dead} dead letter(s); {} waiting in the queue",
            stored as f64 / secs,
            now.stored,
            now.queue_depth.max(0)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(stored: u64, dead_lettered: u64, queue_depth: i64) -> Reading {
        Reading {
            stored,
            dead_lettered,
            queue_depth,
        }
    }

    #[test]
    fn a_busy_minute_is_one_line_with_its_rate_and_an_idle_one_is_silent() {
        let t0 = Instant::now();
        let mut p = Progress::start(reading(1_000, 2, 0), t0);
        assert_eq!(
            p.line(reading(61_000, 5, 40), t0 + EVERY).as_deref(),
            Some(
                "stored 60000 event(s) in 60 s (1000/s), 61000 in total; 3 dead letter(s); 40 waiting in the queue"
            )
        );
        assert_eq!(p.line(reading(61_000, 5, 0), t0 + 2 * EVERY), None);
        // A backlog the service is not draining is worth a line too.
        assert!(p.line(reading(61_000, 5, 7), t0 + 3 * EVERY).is_some());
    }

    #[test]
    fn the_reading_sums_every_label_of_the_metrics() {
        let m = Metrics::new();
        m.events_stored.with_label_values(&["a"]).inc_by(3);
        m.events_stored.with_label_values(&["b"]).inc_by(4);
        m.dead_letters.with_label_values(&["invalid_json"]).inc();
        m.queue_depth.set(9);
        assert_eq!(Reading::of(&m), reading(7, 1, 9));
    }
}
