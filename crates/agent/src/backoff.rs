//! Exponential backoff with jitter, so a rack of nodes that lost the appliance at the same
//! moment does not hit it again in lock step when it comes back.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delays that start at `initial`, double on every call to [`Backoff::next_delay`] up to `cap`,
/// each scaled by a random factor in [0.8, 1.2) and never above `cap`.
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    /// `seed` drives the jitter; zero is replaced because xorshift would stay at zero.
    pub fn new(initial: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            initial,
            cap,
            next: initial.min(cap),
            rng: seed.max(1),
        }
    }

    /// The schedule for calls to the appliance: 1 s doubling to 30 s, seeded per process.
    pub fn for_api() -> Self {
        // RandomState is seeded from the OS per process: a different jitter on every node
        // without a random-number crate.
        let seed = RandomState::new().hash_one(std::process::id());
        Self::new(Duration::from_secs(1), Duration::from_secs(30), seed)
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        let factor = 0.8 + 0.4 * self.unit();
        base.mul_f64(factor).min(self.cap)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.cap);
    }

    /// A uniform value in [0, 1) from xorshift64*.
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let out = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // The top 53 bits fill an f64 mantissa exactly.
        (out >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn doubles_from_one_second_to_the_cap_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 42);
        let nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for n in nominal {
            let d = secs(b.next_delay());
            assert!(
                d >= 0.8 * n - 1e-9 && d <= (1.2 * n).min(30.0),
                "delay {d} for nominal {n}"
            );
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 7);
        for _ in 0..6 {
            b.next_delay();
        }
        b.reset();
        assert!(secs(b.next_delay()) < 1.2);
    }

    #[test]
    fn jitter_differs_between_seeds_and_between_steps() {
        let run = |seed| {
            let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30), seed);
            (0..4).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let (a, b) = (run(1), run(2));
        assert_ne!(a, b);
        assert!(a.windows(2).any(|w| w[0] != w[1]), "{a:?}");
        assert_eq!(run(1), a, "the same seed gives the same schedule");
    }

    #[test]
    fn zero_seed_still_jitters() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10), 0);
        let delays: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    }
}
