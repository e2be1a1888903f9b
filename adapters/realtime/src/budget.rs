//! How many frames a client may send: shared by `/ws` and `/socket.io/`.

use std::time::Instant;

/// A token bucket of client frames: `rate` per second, bursts of up to `rate`.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl FrameBudget {
    /// `rate` frames per second; 0 means no limit.
    pub fn new(rate: u32) -> Self {
        let rate = if rate == 0 { f64::INFINITY } else { f64::from(rate) };
        Self { rate, tokens: rate, refilled: Instant::now() }
    }

    /// Counts one frame received at `now`; `false` when it is over the budget.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate.is_infinite() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameBudget;
    use std::time::{Duration, Instant};

    #[test]
    fn a_burst_beyond_the_rate_is_refused_then_allowed_again() {
        let mut budget = FrameBudget::new(5);
        let start = Instant::now();
        assert!((0..5).all(|_| budget.take(start)));
        assert!(!budget.take(start));
        assert!(budget.take(start + Duration::from_millis(250)));
    }

    #[test]
    fn zero_means_no_limit() {
        let mut budget = FrameBudget::new(0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| budget.take(now)));
    }
}
