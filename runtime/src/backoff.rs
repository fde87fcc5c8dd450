//! Exponential backoff, shared by everything that retries: the publisher's
//! reconnects, the supervisor's plugin rebuilds and the queue writer's
//! storage retries.

use std::time::Duration;

/// Delays that start at `min`, double after each failure up to `max`, and
/// start again at `min` after [`Backoff::reset`]. With jitter, each delay
/// is lengthened by a random share of itself, so that many gateways that
/// lost the same broker do not all come back at the same instant.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// Largest extra share of a delay added at random (0.25: up to +25 %).
    jitter: f64,
}

impl Backoff {
    /// Delays from `min` to `max` (`max` below `min` is taken as `min`),
    /// without jitter.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            jitter: 0.0,
        }
    }

    /// Each delay lengthened by a random share of up to `share` of itself
    /// (clamped to 0–1).
    pub fn with_jitter(mut self, share: f64) -> Backoff {
        self.jitter = share.clamp(0.0, 1.0);
        self
    }

    /// The delay to wait now (jitter included); the one after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        if self.jitter > 0.0 {
            base + base.mul_f64(fastrand::f64() * self.jitter)
        } else {
            base
        }
    }

    /// After a success: the next delay is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_and_reset_to_the_minimum() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
        assert_eq!(b.next_delay(), 200 * MS);
    }

    #[test]
    fn a_maximum_below_the_minimum_is_the_minimum() {
        let mut b = Backoff::new(500 * MS, 10 * MS);
        assert_eq!(b.next_delay(), 500 * MS);
        assert_eq!(b.next_delay(), 500 * MS);
    }

    #[test]
    fn jitter_stays_within_its_share_and_varies() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(1000 * MS, 1000 * MS).with_jitter(0.25);
            let d = b.next_delay();
            assert!(d >= 1000 * MS && d <= 1250 * MS, "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 50, "only {} distinct delays", seen.len());
    }
}
