//! The flush policy's decisions, as pure functions of what has been seen:
//! how often invokes come, how long they run, and how old the buffered data
//! is. The dispatcher applies them (docs/how-it-works.md, "Flush policy").
//! `FlushSettings`: the policy as configured.

use std::time::Duration;

use crate::lambda::model::Model;

/// The flush policy as configured, and the times it works with.
#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    pub mode: FlushMode,
    pub batch_max_age: Duration,
    pub flush_interval: Duration,
    pub max_delay: Duration,
    /// The longest an end-of-invoke flush may take.
    pub flush_timeout: Duration,
    /// How long Lambda may hold telemetry before POSTing it (its buffering
    /// `timeoutMs`): the quiet spell awaited at SHUTDOWN.
    pub lambda_timeout: Duration,
}

/// When buffered telemetry is sent (see docs/how-it-works.md "Flush policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// After each invoke's `platform.runtimeDone`, send everything and wait for it.
    End,
    /// Send only full batches or batches older than `batch_max_age`.
    Batch,
    /// Send when the oldest record is older than `flush_interval`, at invoke
    /// start or while thawed; never wait for runtimeDone.
    Periodic,
    /// `End` while invokes are rare or their rate unknown, `Periodic` when
    /// they come often (gap below `max_delay`).
    Adaptive,
}

/// Invokes seen before `adaptive` trusts its estimate of the rate.
const WARM_UP_INVOKES: u32 = 3;
/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.3;

/// What to do when the main thread wants to call `event/next` after an INVOKE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfInvoke {
    /// Wait for the invoke's runtimeDone, send everything, then pause.
    FlushAll,
    /// Wait for runtimeDone (sending only what is due meanwhile), then pause.
    SendDue,
    /// Pause as soon as no request is in flight: no post-runtime time.
    PauseNow,
}

/// Smoothed invoke rate and duration.
#[derive(Debug, Default, Clone)]
pub struct History {
    invokes: u32,
    gap_ms: Option<f64>,
    duration_ms: Option<f64>,
}

fn smooth(avg: Option<f64>, sample: f64) -> f64 {
    avg.map_or(sample, |a| a + ALPHA * (sample - a))
}

impl History {
    /// An INVOKE arrived `gap` after the previous one (`None` for the first).
    pub fn invoke(&mut self, gap: Option<Duration>) {
        self.invokes = self.invokes.saturating_add(1);
        if let Some(g) = gap {
            self.gap_ms = Some(smooth(self.gap_ms, g.as_secs_f64() * 1000.0));
        }
    }

    /// A runtimeDone reported the function ran for `ms`.
    pub fn duration(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.duration_ms = Some(smooth(self.duration_ms, ms));
        }
    }

    /// Whether invokes come often enough for periodic flushing to keep data
    /// younger than `max_delay`, given the oldest buffered data's age.
    pub fn frequent(&self, max_delay: Duration, oldest_age: Duration) -> bool {
        let Some(gap) = self.gap_ms else {
            return false;
        };
        self.invokes >= WARM_UP_INVOKES
            && oldest_age.as_secs_f64() * 1000.0 + gap < max_delay.as_secs_f64() * 1000.0
    }

    /// Whether invocations run longer than `interval`: then staying thawed
    /// until runtimeDone lets the backup timer flush during them.
    pub fn long_invocations(&self, interval: Duration) -> bool {
        self.duration_ms
            .is_some_and(|d| d > interval.as_secs_f64() * 1000.0)
    }
}

/// Whether data is flushed by age (the periodic behaviour) right now. On
/// Lambda Managed Instances there is no invoke end to flush at, so every
/// mode but `batch` (which has its own age) flushes by age.
pub fn periodic(
    mode: FlushMode,
    model: Model,
    h: &History,
    max_delay: Duration,
    oldest_age: Duration,
) -> bool {
    match (model, mode) {
        (_, FlushMode::Periodic) => true,
        (_, FlushMode::Batch) => false,
        (Model::ManagedInstances, FlushMode::End | FlushMode::Adaptive) => true,
        (Model::Default, FlushMode::Adaptive) => h.frequent(max_delay, oldest_age),
        (Model::Default, FlushMode::End) => false,
    }
}

/// The end-of-invoke decision.
pub fn end_of_invoke(
    mode: FlushMode,
    h: &History,
    interval: Duration,
    max_delay: Duration,
    oldest_age: Duration,
) -> EndOfInvoke {
    match mode {
        FlushMode::End => EndOfInvoke::FlushAll,
        FlushMode::Adaptive if !h.frequent(max_delay, oldest_age) => EndOfInvoke::FlushAll,
        // Batch sends only what is due, which the background sends while
        // thawed: nothing to wait for at the end of an invoke.
        FlushMode::Batch | FlushMode::Periodic | FlushMode::Adaptive => {
            if h.long_invocations(interval) {
                EndOfInvoke::SendDue
            } else {
                EndOfInvoke::PauseNow
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn steady(gap_ms: u64, n: u32) -> History {
        let mut h = History::default();
        h.invoke(None);
        for _ in 1..n {
            h.invoke(Some(MS(gap_ms)));
        }
        h
    }

    #[test]
    fn adaptive_starts_like_end_then_goes_periodic() {
        let (i, d, zero) = (MS(1000), MS(10_000), MS(0));
        let h = steady(100, 2);
        assert_eq!(
            end_of_invoke(FlushMode::Adaptive, &h, i, d, zero),
            EndOfInvoke::FlushAll
        );
        let h = steady(100, 5);
        assert_eq!(
            end_of_invoke(FlushMode::Adaptive, &h, i, d, zero),
            EndOfInvoke::PauseNow
        );
        assert!(periodic(FlushMode::Adaptive, Model::Default, &h, d, zero));
    }

    #[test]
    fn on_managed_instances_every_mode_but_batch_flushes_by_age() {
        let (d, zero) = (MS(10_000), MS(0));
        let fresh = History::default();
        for mode in [FlushMode::End, FlushMode::Adaptive, FlushMode::Periodic] {
            assert!(periodic(mode, Model::ManagedInstances, &fresh, d, zero));
        }
        assert!(!periodic(
            FlushMode::Batch,
            Model::ManagedInstances,
            &fresh,
            d,
            zero
        ));
        assert!(!periodic(FlushMode::End, Model::Default, &fresh, d, zero));
        assert!(!periodic(
            FlushMode::Adaptive,
            Model::Default,
            &fresh,
            d,
            zero
        ));
    }

    #[test]
    fn adaptive_flushes_at_end_when_invokes_are_rare_or_data_old() {
        let (i, d) = (MS(1000), MS(10_000));
        let rare = steady(60_000, 10);
        assert_eq!(
            end_of_invoke(FlushMode::Adaptive, &rare, i, d, MS(0)),
            EndOfInvoke::FlushAll
        );
        let busy = steady(100, 10);
        assert_eq!(
            end_of_invoke(FlushMode::Adaptive, &busy, i, d, MS(9_950)),
            EndOfInvoke::FlushAll
        );
    }

    #[test]
    fn long_invocations_stay_thawed_for_the_backup_timer() {
        let mut h = steady(100, 10);
        for _ in 0..5 {
            h.duration(5_000.0);
        }
        let e = end_of_invoke(FlushMode::Periodic, &h, MS(1000), MS(60_000), MS(0));
        assert_eq!(e, EndOfInvoke::SendDue);
        assert_eq!(
            end_of_invoke(FlushMode::End, &h, MS(1), MS(1), MS(0)),
            EndOfInvoke::FlushAll
        );
        assert_eq!(
            end_of_invoke(FlushMode::Batch, &h, MS(1), MS(1), MS(0)),
            EndOfInvoke::SendDue
        );
        let short = steady(100, 10);
        assert_eq!(
            end_of_invoke(FlushMode::Batch, &short, MS(1000), MS(1), MS(0)),
            EndOfInvoke::PauseNow
        );
    }

    #[test]
    fn averages_follow_the_rate() {
        let mut h = steady(1000, 20);
        assert!(!h.frequent(MS(500), MS(0)));
        for _ in 0..20 {
            h.invoke(Some(MS(10)));
        }
        assert!(h.frequent(MS(500), MS(0)));
    }
}
