//! Retry policy, modelled on the AWS SDKs' standard mode: exponential
//! backoff with full jitter, and a retry-token budget so that a dead or
//! overloaded endpoint does not turn into a retry storm. `Retrier` holds
//! the state across requests and decides, after each one, what comes next.

use std::time::{Duration, Instant};

use crate::kinesis::error::Retry;
use crate::rng::Rng;

/// Tokens a retry costs; transport failures and timeouts cost more, as in
/// the SDKs, because they are the likeliest sign of a dead endpoint.
const RETRY_COST: u32 = 5;
const TIMEOUT_COST: u32 = 10;
/// Tokens a successful request earns back.
const SUCCESS_REFUND: u32 = 1;

/// The shutdown flush tries refused (parked) and unsendable records again
/// after these waits, doubling: the deadline's 1.8 s are spent on delivery,
/// so a refusal or outage that ends inside them loses nothing.
const FINAL_FIRST_WAIT: Duration = Duration::from_millis(100);
const FINAL_MAX_WAIT: Duration = Duration::from_millis(400);

/// The shutdown flush's wait before its `tries`-th try again of records
/// that a refusal parked or that could not be sent at all: 100, 200, 400,
/// 400... ms. (Throttling and transport failures keep the usual backoff,
/// which is shorter.)
pub fn final_wait(tries: u32) -> Duration {
    let exp = tries.saturating_sub(1).min(8);
    FINAL_FIRST_WAIT
        .saturating_mul(1 << exp)
        .min(FINAL_MAX_WAIT)
}

/// The shortest time before the deadline worth one last try in.
const LAST_TRY_ROOM: Duration = Duration::from_millis(20);

/// How long the shutdown flush sleeps before its next try, `left` before
/// its deadline: `wait`, or a wait that would pass the deadline cut short so
/// that the last try comes just before it (the window is spent, not given
/// up early); `None` when too little is left for a try.
pub fn final_sleep(wait: Duration, left: Duration) -> Option<Duration> {
    let room = left.checked_sub(LAST_TRY_ROOM)?;
    Some(wait.min(room))
}

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

/// The settings a `Retrier` follows.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Rounds in a row without progress before the records wait for the
    /// next flush.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Retry tokens (see `Budget`).
    pub budget: u32,
    /// While parked: the first wait before a probe, doubling to `probe_max`.
    pub probe_interval: Duration,
    pub probe_max: Duration,
}

/// How one request (a round) ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing is left to resend.
    Done,
    /// Records are left to resend.
    Failed {
        retry: Retry,
        /// Kinesis took some of the records (shard throttling): progress.
        progress: bool,
        /// Nothing could be sent at all (no credentials): retrying now
        /// cannot help.
        blocked: bool,
    },
}

/// What to do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on sending.
    Go,
    /// Retry after this wait.
    Wait(Duration),
    /// Stop retrying: what is left waits for the next flush.
    GiveUp(GaveUp),
}

/// Why retrying stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Nothing could be sent (no credentials).
    Blocked,
    /// `max_attempts` rounds in a row without progress.
    Attempts(u32),
    /// The retry budget is spent: the endpoint keeps failing.
    Budget,
    /// Refused for a cause an operator can fix: the records stay, and one
    /// probe request goes after this wait.
    Parked(Duration),
}

/// Retry state across requests.
pub struct Retrier {
    policy: Policy,
    budget: Budget,
    rng: Rng,
    /// Rounds in a row without progress (bounded by `max_attempts`).
    failed_rounds: u32,
    /// Rounds in a row that left records to resend (the backoff exponent).
    troubled_rounds: u32,
    /// The first request since a thaw has not succeeded yet: its transport
    /// error may be a connection that died during the freeze.
    after_thaw: bool,
    /// A re-signed retry is pending: a second signature or credential
    /// refusal in a row is final (a wrong secret, not a skewed clock).
    resigned: bool,
    /// No background send before this (after a failed one).
    hold_until: Option<Instant>,
    /// Parked: the wait before the next probe (`None`: not parked).
    parked: Option<Duration>,
    /// Tries again in a row by the shutdown flush (see `final_wait`).
    final_tries: u32,
}

impl Retrier {
    pub fn new(policy: Policy, rng: Rng) -> Retrier {
        Retrier {
            policy,
            budget: Budget::new(policy.budget),
            rng,
            failed_rounds: 0,
            troubled_rounds: 0,
            after_thaw: false,
            resigned: false,
            hold_until: None,
            parked: None,
            final_tries: 0,
        }
    }

    /// The one entry: a round ended; what comes next. `final_flush`: the
    /// shutdown flush, which keeps retrying until its deadline unless
    /// nothing can be sent.
    pub fn after(&mut self, round: Round, final_flush: bool) -> Next {
        let Round::Failed {
            retry,
            progress,
            blocked,
        } = round
        else {
            self.after_thaw = false;
            self.troubled_rounds = 0;
            self.failed_rounds = 0;
            self.hold_until = None;
            self.parked = None;
            self.final_tries = 0;
            return Next::Go;
        };
        if final_flush && (retry == Retry::Park || blocked) {
            // SHUTDOWN: no probe interval, the deadline bounds the tries.
            if retry == Retry::Park {
                self.parked = Some(self.parked.unwrap_or(self.policy.probe_interval));
            }
            self.final_tries += 1;
            return Next::Wait(final_wait(self.final_tries));
        }
        if retry == Retry::Park {
            // One probe per interval, the interval doubling: no storm, and
            // the data is still there when the operator fixes the cause.
            let p = self.policy;
            let wait = self
                .parked
                .map_or(p.probe_interval, |d| d.saturating_mul(2))
                .min(p.probe_max);
            self.parked = Some(wait);
            self.failed_rounds = 0;
            self.troubled_rounds = 0;
            return Next::GiveUp(GaveUp::Parked(wait));
        }
        self.after_thaw = self.after_thaw && self.troubled_rounds == 0;
        self.troubled_rounds += 1;
        self.failed_rounds = if progress { 0 } else { self.failed_rounds + 1 };
        let give_up = if final_flush && !blocked {
            None
        } else if blocked {
            Some(GaveUp::Blocked)
        } else if progress {
            None
        } else if self.failed_rounds >= self.policy.max_attempts {
            Some(GaveUp::Attempts(self.failed_rounds))
        } else if self.budget.spend(retry == Retry::Transient) {
            None
        } else {
            Some(GaveUp::Budget)
        };
        match give_up {
            Some(why) => {
                self.failed_rounds = 0;
                Next::GiveUp(why)
            }
            None => Next::Wait(self.backoff(retry)),
        }
    }

    /// An answer came back (whatever it said about each record): the
    /// endpoint works, and a pending re-sign is settled.
    pub fn answered(&mut self) {
        self.budget.success();
        self.resigned = false;
    }

    /// Whether a signature or credentials refusal is not worth an immediate
    /// retry: the second in a row is (a wrong secret, not a skewed clock).
    pub fn refused_again(&mut self) -> bool {
        let again = self.resigned;
        self.resigned = !again;
        again
    }

    /// The sandbox thawed: connections from before the freeze may be dead,
    /// so a failure on one is retried at once rather than after a backoff.
    /// (Parked records keep their probe time: a thaw is no reason to probe.)
    pub fn thawed(&mut self) {
        if self.parked.is_none() {
            self.hold_until = None;
        }
        self.after_thaw = true;
    }

    /// Whether records are parked.
    pub fn parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Whether sending may start now: not parked, or the probe is due.
    pub fn probe_due(&self) -> bool {
        self.parked.is_none() || self.hold_until.is_none_or(|t| Instant::now() >= t)
    }

    /// A flush starts: its backoff starts afresh, so an outage costs every
    /// invoke the same bounded time, not ever-longer sleeps.
    pub fn fresh_flush(&mut self) {
        self.failed_rounds = 0;
        self.troubled_rounds = 0;
    }

    /// Holds background sending for `next`'s wait (the longest wait after
    /// giving up).
    pub fn hold(&mut self, next: Next) {
        let wait = match next {
            Next::Go => return,
            Next::Wait(d) | Next::GiveUp(GaveUp::Parked(d)) => d,
            Next::GiveUp(_) => self.policy.backoff_cap,
        };
        self.hold_until = Some(Instant::now() + wait);
    }

    /// When background sending may start again (`None`: now).
    pub fn held_until(&self) -> Option<Instant> {
        self.hold_until
    }

    fn backoff(&mut self, retry: Retry) -> Duration {
        // A transport error on the first request after a thaw is usually a
        // pooled connection that died in the freeze: retry at once, on a
        // fresh connection.
        if retry == Retry::Transient && self.after_thaw && self.troubled_rounds == 1 {
            return Duration::ZERO;
        }
        let p = self.policy;
        backoff(
            &mut self.rng,
            retry,
            self.troubled_rounds,
            p.backoff_base,
            p.backoff_cap,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_flush_spends_its_window_to_the_end() {
        let ms = Duration::from_millis;
        // A wait that fits is slept whole.
        assert_eq!(final_sleep(ms(400), ms(1000)), Some(ms(400)));
        // One that would pass the deadline is cut: the last try just before it.
        assert_eq!(final_sleep(ms(400), ms(300)), Some(ms(280)));
        assert_eq!(final_sleep(ms(400), ms(20)), Some(ms(0)));
        // Too little left for a try.
        assert_eq!(final_sleep(ms(400), ms(19)), None);
        assert_eq!(final_sleep(ms(100), ms(0)), None);
    }

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

    fn retrier(max_attempts: u32, budget: u32) -> Retrier {
        let policy = Policy {
            max_attempts,
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(1000),
            budget,
            probe_interval: Duration::from_millis(100),
            probe_max: Duration::from_millis(350),
        };
        Retrier::new(policy, Rng::seeded(7))
    }

    const THROTTLED: Round = Round::Failed {
        retry: Retry::Throttled,
        progress: false,
        blocked: false,
    };
    const TRANSIENT: Round = Round::Failed {
        retry: Retry::Transient,
        progress: false,
        blocked: false,
    };

    #[test]
    fn rounds_without_progress_give_up_after_max_attempts() {
        let mut r = retrier(3, 500);
        assert!(matches!(r.after(THROTTLED, false), Next::Wait(_)));
        assert!(matches!(r.after(THROTTLED, false), Next::Wait(_)));
        assert_eq!(r.after(THROTTLED, false), Next::GiveUp(GaveUp::Attempts(3)));
        // Giving up starts the count afresh.
        assert!(matches!(r.after(THROTTLED, false), Next::Wait(_)));
        assert_eq!(r.after(Round::Done, false), Next::Go);
        assert_eq!(r.held_until(), None);
    }

    #[test]
    fn progress_costs_neither_attempts_nor_budget() {
        let mut r = retrier(2, 0);
        let partial = Round::Failed {
            retry: Retry::Throttled,
            progress: true,
            blocked: false,
        };
        for _ in 0..10 {
            assert!(matches!(r.after(partial, false), Next::Wait(_)));
        }
        // With an empty budget, a round without progress gives up at once.
        assert_eq!(r.after(THROTTLED, false), Next::GiveUp(GaveUp::Budget));
    }

    #[test]
    fn the_budget_runs_out_and_answers_earn_it_back() {
        let mut r = retrier(1000, 2 * TIMEOUT_COST);
        assert!(matches!(r.after(TRANSIENT, false), Next::Wait(_)));
        assert!(matches!(r.after(TRANSIENT, false), Next::Wait(_)));
        assert_eq!(r.after(TRANSIENT, false), Next::GiveUp(GaveUp::Budget));
        for _ in 0..TIMEOUT_COST {
            r.answered();
        }
        assert!(matches!(r.after(TRANSIENT, false), Next::Wait(_)));
    }

    #[test]
    fn nothing_sendable_waits_for_the_next_flush_or_tries_again_at_shutdown() {
        let mut r = retrier(1000, 1000);
        let blocked = Round::Failed {
            retry: Retry::Transient,
            progress: false,
            blocked: true,
        };
        assert_eq!(r.after(blocked, false), Next::GiveUp(GaveUp::Blocked));
        // SHUTDOWN: the credentials may come back inside the window.
        let ms = Duration::from_millis;
        let waits: Vec<Next> = (0..4).map(|_| r.after(blocked, true)).collect();
        assert_eq!(waits, [100, 200, 400, 400].map(|w| Next::Wait(ms(w))));
        // The final flush otherwise never gives up, budget or not.
        let mut r = retrier(1, 0);
        for _ in 0..20 {
            assert!(matches!(r.after(THROTTLED, true), Next::Wait(_)));
        }
    }

    #[test]
    fn the_first_transport_error_after_a_thaw_is_retried_at_once() {
        let mut r = retrier(1000, 1000);
        r.thawed();
        assert_eq!(r.after(TRANSIENT, false), Next::Wait(Duration::ZERO));
        // The second in a row backs off (its ceiling is base·2 = 20 ms; some
        // of 20 draws are not zero).
        let waits: Vec<Next> = (0..20).map(|_| r.after(TRANSIENT, false)).collect();
        assert!(waits.iter().any(|w| *w != Next::Wait(Duration::ZERO)));
        // Not after a success.
        r.thawed();
        r.after(Round::Done, false);
        r.fresh_flush();
        let waits: Vec<Next> = (0..20)
            .map(|_| {
                r.fresh_flush();
                r.after(TRANSIENT, false)
            })
            .collect();
        assert!(waits.iter().any(|w| *w != Next::Wait(Duration::ZERO)));
    }

    #[test]
    fn backoff_grows_with_troubled_rounds_and_a_flush_starts_afresh() {
        let mut r = retrier(1000, 100_000);
        for _ in 0..12 {
            r.after(THROTTLED, false);
        }
        // 12 rounds in: the ceiling is the cap; some waits are long.
        let long = (0..30).any(|_| matches!(r.after(THROTTLED, false), Next::Wait(d) if d > Duration::from_millis(100)));
        assert!(long);
        r.fresh_flush();
        // First round of a flush: ceiling base = 10 ms.
        assert!(
            matches!(r.after(THROTTLED, false), Next::Wait(d) if d <= Duration::from_millis(10))
        );
    }

    #[test]
    fn a_second_refusal_in_a_row_is_final() {
        let mut r = retrier(3, 100);
        assert!(!r.refused_again());
        assert!(r.refused_again());
        assert!(!r.refused_again());
        r.answered();
        assert!(!r.refused_again(), "an answer in between settles it");
    }

    #[test]
    fn holds_background_sending_for_the_wait_or_the_cap() {
        let mut r = retrier(3, 100);
        r.hold(Next::Go);
        assert_eq!(r.held_until(), None);
        let before = Instant::now();
        r.hold(Next::GiveUp(GaveUp::Budget));
        let until = r.held_until().unwrap();
        assert!(until >= before + Duration::from_millis(1000));
        r.thawed();
        assert_eq!(r.held_until(), None, "a thaw lifts the hold");
    }

    #[test]
    fn parked_probes_at_growing_intervals_until_accepted() {
        let mut r = retrier(3, 0);
        let park = Round::Failed {
            retry: Retry::Park,
            progress: false,
            blocked: false,
        };
        let ms = Duration::from_millis;
        let waits: Vec<Next> = (0..4).map(|_| r.after(park, false)).collect();
        let parked = |d| Next::GiveUp(GaveUp::Parked(d));
        assert_eq!(
            waits,
            [
                parked(ms(100)),
                parked(ms(200)),
                parked(ms(350)),
                parked(ms(350))
            ]
        );
        // Neither attempts nor an empty budget end parking. The final flush
        // tries again after short, doubling waits (its deadline bounds them),
        // and the records stay parked (the cause, if they are lost).
        let finals: Vec<Next> = (0..4).map(|_| r.after(park, true)).collect();
        assert_eq!(finals, [100, 200, 400, 400].map(|w| Next::Wait(ms(w))));
        assert!(r.parked());
        r.hold(parked(ms(350)));
        assert!(!r.probe_due());
        r.thawed();
        assert!(!r.probe_due(), "a thaw does not bring the probe forward");
        assert_eq!(r.after(Round::Done, false), Next::Go);
        assert!(!r.parked() && r.probe_due());
        assert_eq!(
            r.after(park, false),
            parked(ms(100)),
            "a new cause starts afresh"
        );
    }
}
