//! The extension's own metrics record (`kinesis-telemetry-extension.metrics`,
//! `Stats::metrics_event`): when the periodic one is due (one per interval
//! of thawed time, and only while telemetry flows: an idle environment
//! writes none, and wakes for none), and what identifies the environment in
//! it.

use std::time::Duration;

use crate::stats::Stats;

pub struct Metrics {
    timer: MetricsTimer,
    /// `(name, value)` pairs identifying the environment (function name,
    /// version, account, environment id).
    context: Vec<(&'static str, String)>,
}

impl Metrics {
    pub fn new(every: Option<Duration>, context: Vec<(&'static str, String)>) -> Metrics {
        Metrics {
            timer: MetricsTimer::new(every),
            context,
        }
    }

    /// Thawed time at which the periodic record is due (`None`: not until
    /// events arrive).
    pub fn due(&self, stats: &Stats) -> Option<Duration> {
        self.timer.due(stats.events.get())
    }

    /// Whether the periodic record is due at thawed time `now`.
    pub fn is_due(&self, now: Duration, stats: &Stats) -> bool {
        self.timer.is_due(now, stats.events.get())
    }

    /// The record's JSON, written at thawed time `now` (the next periodic
    /// one is due an interval later).
    pub fn record(&mut self, now: Duration, stats: &Stats, final_: bool) -> String {
        self.timer.served(now, stats.events.get());
        let time = crate::time::rfc3339(std::time::SystemTime::now());
        let context: Vec<(&str, &str)> =
            self.context.iter().map(|(k, v)| (*k, v.as_str())).collect();
        stats.metrics_event(&time, final_, &context)
    }
}

/// When the periodic record is due.
#[derive(Debug)]
struct MetricsTimer {
    every: Option<Duration>,
    /// Thawed time of the last record.
    last_at: Duration,
    /// Events received from Lambda by then. (Not records sent: the metrics
    /// record is one, and each would call for the next.)
    events_then: u64,
}

impl MetricsTimer {
    fn new(every: Option<Duration>) -> MetricsTimer {
        MetricsTimer {
            every,
            last_at: Duration::ZERO,
            events_then: 0,
        }
    }

    /// Thawed time at which a record is due, given the events received so
    /// far; `None` (no wake-up) when none arrived since the last record.
    fn due(&self, events_now: u64) -> Option<Duration> {
        let every = self.every?;
        (events_now > self.events_then).then_some(self.last_at + every)
    }

    /// Whether a record is due at thawed time `now`.
    fn is_due(&self, now: Duration, events_now: u64) -> bool {
        self.due(events_now).is_some_and(|at| at <= now)
    }

    /// A record was written at `now`: the next is due an interval later,
    /// and only if events arrive meanwhile.
    fn served(&mut self, now: Duration, events_now: u64) {
        self.last_at = now;
        self.events_then = events_now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn metrics_are_due_only_while_events_flow() {
        let mut t = MetricsTimer::new(Some(MS(1000)));
        assert_eq!(t.due(0), None, "nothing received: nothing due");
        assert_eq!(t.due(5), Some(MS(1000)));
        assert!(!t.is_due(MS(999), 5) && t.is_due(MS(1000), 5));
        t.served(MS(1000), 5);
        // Idle: the timer is cleared, not left in the past (the spin).
        assert_eq!(t.due(5), None);
        assert!(!t.is_due(MS(60_000), 5));
        // Events again: due an interval after the last record.
        assert_eq!(t.due(6), Some(MS(2000)));
        assert_eq!(MetricsTimer::new(None).due(100), None, "off");
    }
}
