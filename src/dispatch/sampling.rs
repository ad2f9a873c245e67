//! Outcome-aware sampling as the dispatcher applies it: where a log line's
//! records go (the queue, the hold, nowhere), what an invocation's outcome
//! or the hold's limits (time, half the memory cap, SHUTDOWN) release, and
//! the counters of both. The decisions themselves are `records::sample`'s.
//! `SamplingSettings` exist only when sampling is on (`Option`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lambda::telemetry::Event;
use crate::records::queue::Record;
use crate::records::sample::{Outcome, Release, Route, Sampler, Why};
use crate::stats::Stats;

/// Records that leave the hold for the queue, and when the first of them
/// arrived (the buffer's age).
pub struct Forward {
    pub records: Vec<Record>,
    pub arrived: Instant,
}

/// Sampling as configured; there is none (`Option::None`) when every
/// invocation's lines are forwarded (`KINESIS_TELEMETRY_SAMPLE_SUCCESS` 1).
#[derive(Debug, Clone, Copy)]
pub struct SamplingSettings {
    /// Successful invocations whose lines are forwarded, in millionths
    /// (below `records::sample::SCALE`).
    pub success: u32,
    /// How long held lines wait for their invocation's outcome.
    pub hold: Duration,
    /// Held lines may fill this much (half the memory cap).
    pub max_held: usize,
}

pub struct Sampling {
    sampler: Sampler,
    stats: Arc<Stats>,
    /// Held lines may fill this much (half the memory cap).
    max_held: usize,
}

impl Sampling {
    pub fn new(cfg: &SamplingSettings, stats: Arc<Stats>) -> Sampling {
        Sampling {
            sampler: Sampler::new(cfg.success, cfg.hold),
            stats,
            max_held: cfg.max_held,
        }
    }

    /// Where a log line of invocation `id` goes: `Some(records)` to the
    /// queue; `None` when held (its outcome not known yet) or sampled out
    /// (it succeeded). `now` is thawed time; `closing`: SHUTDOWN, when no
    /// outcome will come in time, so nothing is held any more.
    pub fn place<I: IntoIterator<Item = Record>>(
        &mut self,
        id: &str,
        records: I,
        now: Duration,
        received: Instant,
        closing: bool,
    ) -> Option<I> {
        match self.sampler.route(id) {
            Route::Forward => Some(records),
            Route::Hold if closing => Some(records),
            Route::Hold => {
                self.sampler.hold(id, records, now, received);
                None
            }
            Route::Drop => {
                let bytes: usize = records.into_iter().map(|r| r.size()).sum();
                self.stats.sampled_out_lines.add(1);
                self.stats.sampled_out_bytes.add(bytes as u64);
                None
            }
        }
    }

    /// An invocation's outcome (its runtimeDone or report): what of its
    /// held lines goes to the queue.
    pub fn outcome(&mut self, e: &Event) -> Option<Forward> {
        let id = e.request_id()?;
        let release = self.sampler.outcome(id, Outcome::of(e.view.status()))?;
        self.released(release)
    }

    /// Holds past the maximum hold time at thawed time `now`, forwarded.
    pub fn expired(&mut self, now: Duration) -> Vec<Forward> {
        if self.sampler.next_expiry().is_none_or(|t| t > now) {
            return Vec::new();
        }
        let released = self.sampler.expired(now);
        self.all_released(released)
    }

    /// Past half the memory cap, the oldest holds are forwarded, so the
    /// queue can always drain below the cap and the listener (and the
    /// outcomes it brings) is never stopped by holds.
    pub fn relieve(&mut self) -> Vec<Forward> {
        let mut out = Vec::new();
        while self.sampler.bytes() > self.max_held {
            match self.sampler.release_oldest() {
                Some(r) => out.extend(self.released(r)),
                None => break,
            }
        }
        out
    }

    /// SHUTDOWN: every hold, forwarded (never lost for lack of an outcome).
    pub fn release_all(&mut self) -> Vec<Forward> {
        let released = self.sampler.release_all();
        self.all_released(released)
    }

    /// Bytes held (they count against the memory cap).
    pub fn bytes(&self) -> usize {
        self.sampler.bytes()
    }

    /// Thawed time at which the oldest hold is due for release.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.sampler.next_expiry()
    }

    fn all_released(&self, released: Vec<Release>) -> Vec<Forward> {
        released
            .into_iter()
            .filter_map(|r| self.released(r))
            .collect()
    }

    /// Held lines leave the hold: counted, and forwarded unless sampled out.
    fn released(&self, r: Release) -> Option<Forward> {
        let s = &self.stats;
        match r.why {
            Why::SampledOut => {
                s.sampled_out_invocations.add(1);
                s.sampled_out_lines.add(r.lines);
                s.sampled_out_bytes.add(r.bytes);
                return None;
            }
            Why::Failed => s.kept_failed.add(1),
            Why::Undecided if r.first_undecided => s.forwarded_undecided.add(1),
            Why::Undecided => {}
        }
        (!r.records.is_empty()).then_some(Forward {
            records: r.records,
            arrived: r.arrived,
        })
    }
}
