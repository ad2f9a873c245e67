//! The extension's own metrics record (`kinesis-telemetry-extension.metrics`,
//! `Stats::metrics_event`): when the periodic one is due (one per interval
//! of thawed time, and only while telemetry flows: an idle environment
//! writes none, and wakes for none), what identifies the environment in
//! it, the post-runtime time of the interval's invokes, and the EMF line
//! written with it (`emf`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dispatch::emf::{self, PostRuntime};
use crate::stats::Stats;

pub struct Metrics {
    timer: MetricsTimer,
    /// `(name, value)` pairs identifying the environment (function name,
    /// version, account, environment id).
    context: Vec<(&'static str, String)>,
    post_runtime: PostRuntimes,
    /// The EMF line's settings and the counts at the previous line.
    emf: Option<(emf::Settings, Vec<u64>)>,
}

/// A metrics record, and the EMF line written with it.
pub struct Written {
    pub record: String,
    pub emf: Option<String>,
}

impl Metrics {
    pub fn new(
        every: Option<Duration>,
        context: Vec<(&'static str, String)>,
        emf: &emf::Settings,
    ) -> Metrics {
        Metrics {
            timer: MetricsTimer::new(every),
            context,
            post_runtime: PostRuntimes::default(),
            emf: emf.on.then(|| (emf.clone(), Vec::new())),
        }
    }

    /// Thawed time at which the periodic record is due (`None`: not until
    /// events arrive).
    pub fn due(&self, stats: &Stats) -> Option<Duration> {
        self.timer.due(stats.events_not_own())
    }

    /// Whether the periodic record is due at thawed time `now`.
    pub fn is_due(&self, now: Duration, stats: &Stats) -> bool {
        self.timer.is_due(now, stats.events_not_own())
    }

    /// An invoke ended: the extension let Lambda freeze `post_runtime`
    /// after the runtime was done.
    pub fn invoke_ended(&mut self, post_runtime: Duration) {
        self.post_runtime.add(post_runtime);
    }

    /// The record's JSON, and the EMF line when on, written at thawed time
    /// `now` (the next periodic one is due an interval later). Both from
    /// one reading of the counters.
    pub fn record(&mut self, now: Duration, stats: &Stats, final_: bool) -> Written {
        self.timer.served(now, stats.events_not_own());
        let wall = SystemTime::now();
        let time = crate::time::rfc3339(wall);
        let snapshot = stats.snapshot();
        let post_runtime = self.post_runtime.take();
        let extra: Vec<(&str, f64)> = post_runtime
            .iter()
            .flat_map(|p| {
                [
                    (emf::POST_RUNTIME_MEDIAN, p.median),
                    (emf::POST_RUNTIME_MAX, p.max),
                ]
            })
            .collect();
        let context: Vec<(&str, &str)> =
            self.context.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let record = stats.metrics_event(&time, final_, &context, &snapshot, &extra);
        let emf = self.emf.as_mut().map(|(settings, last)| {
            let redactions = stats
                .redactions
                .get()
                .map(|rules| rules.iter().map(|(_, c)| c.get()).sum());
            let counts = emf::increases(&snapshot, redactions, last);
            let of = |name: &str| {
                context
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map_or("", |(_, v)| *v)
            };
            emf::Line {
                settings,
                function_name: of("functionName"),
                function_version: of("functionVersion"),
                environment: of("environmentId"),
                timestamp_ms: wall
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                final_,
                counts: &counts,
                post_runtime,
            }
            .render()
        });
        Written { record, emf }
    }
}

/// Most post-runtime times kept per interval for the median (beyond it,
/// the newest replace the oldest; the maximum stays exact). 4,096 × 4 B.
const POST_RUNTIME_SAMPLES: usize = 4096;

/// The post-runtime times of the invokes since the last record, in
/// microseconds: one per invoke, added at its end (not per event).
#[derive(Debug, Default)]
struct PostRuntimes {
    samples: Vec<u32>,
    /// Invokes added this interval (where the next sample goes when full).
    seen: usize,
    max: u32,
}

impl PostRuntimes {
    fn add(&mut self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        if self.samples.len() < POST_RUNTIME_SAMPLES {
            self.samples.push(us);
        } else {
            self.samples[self.seen % POST_RUNTIME_SAMPLES] = us;
        }
        self.seen += 1;
        self.max = self.max.max(us);
    }

    /// Median and maximum in milliseconds (`None`: no invoke ended), and
    /// a fresh interval.
    fn take(&mut self) -> Option<PostRuntime> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        let median = &self.samples[self.samples.len() / 2];
        let ms = |us: u32| f64::from(us) / 1000.0;
        let figures = PostRuntime {
            median: ms(*median),
            max: ms(self.max),
        };
        *self = PostRuntimes::default();
        Some(figures)
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

    #[test]
    fn post_runtime_median_and_max_per_interval() {
        let mut p = PostRuntimes::default();
        assert_eq!(p.take(), None, "no invoke: no figures");
        for ms in [5, 1, 3, 100, 2] {
            p.add(MS(ms));
        }
        assert_eq!(
            p.take(),
            Some(PostRuntime {
                median: 3.0,
                max: 100.0
            })
        );
        assert_eq!(p.take(), None, "a fresh interval");
        p.add(Duration::from_micros(1500));
        assert_eq!(p.take().map(|f| f.median), Some(1.5));
        // Past the cap: the newest replace the oldest, the max stays.
        p.add(MS(50));
        for _ in 0..POST_RUNTIME_SAMPLES {
            p.add(MS(1));
        }
        assert_eq!(p.samples.len(), POST_RUNTIME_SAMPLES);
        assert_eq!(
            p.take(),
            Some(PostRuntime {
                median: 1.0,
                max: 50.0
            })
        );
    }
}
