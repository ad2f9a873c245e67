//! Retry policy, modelled on the AWS SDKs' standard mode: exponential
//! backoff with full jitter, and a retry-token budget so that a dead or
//! overloaded endpoint does not turn into a retry storm.

use std::time::Duration;

use crate::kinesis::wire::Retry;
use crate::rng::Rng;

/// Tokens a retry costs; transport failures and timeouts cost more, as in
/// the SDKs, because they are the likeliest sign of a dead endpoint.
const RETRY_COST: u32 = 5;
const TIMEOUT_COST: u32 = 10;
/// Tokens a successful request earns back.
const SUCCESS_REFUND: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    tokens: u32,
    max: u32,
}

impl Budget {
    pub fn new(max: u32) -> Budget {
        Budget { tokens: max, max }
    }

    /// Takes the cost of one retry; false when the budget cannot pay it.
    pub fn spend(&mut self, transport: bool) -> bool {
        let cost = if transport { TIMEOUT_COST } else { RETRY_COST };
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
        true
    }

    pub fn success(&mut self) {
        self.tokens = (self.tokens + SUCCESS_REFUND).min(self.max);
    }

    #[cfg(test)]
    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

/// Full-jitter exponential backoff: uniform in `[0, min(cap, base·2^(n-1))]`
/// for the n-th failure in a row. Re-signing needs no wait.
pub fn backoff(
    rng: &mut Rng,
    retry: Retry,
    failures: u32,
    base: Duration,
    cap: Duration,
) -> Duration {
    if retry == Retry::Resign || retry == Retry::RefreshCredentials {
        return Duration::ZERO;
    }
    let exp = failures.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << exp).min(cap);
    Duration::from_micros(rng.below_or_eq(ceiling.as_micros() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_spends_and_refills() {
        let mut b = Budget::new(20);
        assert!(b.spend(true));
        assert!(b.spend(false));
        assert_eq!(b.tokens(), 5);
        assert!(b.spend(false));
        assert!(!b.spend(false));
        for _ in 0..100 {
            b.success();
        }
        assert_eq!(b.tokens(), 20);
        assert!(!Budget::new(0).spend(false));
    }

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut rng = Rng::seeded(3);
        let base = Duration::from_millis(25);
        let cap = Duration::from_millis(1000);
        for n in 1..30 {
            let ceiling = (base * (1u32 << (n - 1).min(20))).min(cap);
            for _ in 0..50 {
                assert!(backoff(&mut rng, Retry::Throttled, n, base, cap) <= ceiling);
            }
        }
        let waits: Vec<_> = (0..50)
            .map(|_| backoff(&mut rng, Retry::Throttled, 10, base, cap))
            .collect();
        assert!(waits.iter().any(|w| *w > Duration::from_millis(500)));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(500)));
        assert_eq!(
            backoff(&mut rng, Retry::Resign, 5, base, cap),
            Duration::ZERO
        );
    }
}
