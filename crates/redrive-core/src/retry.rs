//! Exponential backoff with full jitter.

use std::time::Duration;

/// Delay before retry `n`: a uniform random duration in `[0, min(cap, base × 2ⁿ⁻¹)]`
/// ("full jitter"), never less than what the server asked for with Retry-After.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first retry).
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let exponent = retry.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.cap);
        let jittered = ceiling.mul_f64(rng.f64());
        match retry_after {
            Some(asked) => jittered.max(asked),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_exponential_ceiling() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..=10 {
            let ceiling =
                Duration::from_millis(100 * (1 << (retry - 1))).min(Duration::from_secs(1));
            for _ in 0..100 {
                assert!(backoff.delay(retry, None, &mut rng) <= ceiling);
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let backoff = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let a = backoff.delay(3, None, &mut rng);
        let b = backoff.delay(3, None, &mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn retry_after_is_honoured() {
        let backoff = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        assert!(backoff.delay(1, Some(Duration::from_secs(5)), &mut rng) >= Duration::from_secs(5));
    }
}
