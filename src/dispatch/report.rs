//! Log lines for failures that repeat: the first of each code at its level,
//! the rest at debug (no log storm; the metrics record counts them all);
//! and warnings about events at most once a period, with the count since.

use std::time::{Duration, Instant};

/// The codes already logged.
#[derive(Debug, Default)]
pub struct Reported {
    codes: Vec<String>,
}

impl Reported {
    /// Logs `what: code detail` at error level the first time `code` is seen.
    pub fn error(&mut self, code: &str, what: &str, detail: &str) {
        self.log(log::Level::Error, code, what, detail);
    }

    /// `error` at warn level.
    pub fn warn(&mut self, code: &str, what: &str, detail: &str) {
        self.log(log::Level::Warn, code, what, detail);
    }

    fn log(&mut self, level: log::Level, code: &str, what: &str, detail: &str) {
        if self.codes.iter().any(|c| c == code) {
            log::debug!("{what}: {code} {detail}");
        } else {
            self.codes.push(code.to_string());
            log::log!(
                level,
                "{what}: {code} {detail} (further {code} occurrences are counted, not logged)"
            );
        }
    }
}

/// A warning about something that may happen on every event: logged the
/// first time, then at most once per `every`, with how often it happened
/// meanwhile (each log line is itself telemetry).
#[derive(Debug)]
pub struct EveryPeriod {
    every: Duration,
    count: u64,
    last: Option<Instant>,
}

impl EveryPeriod {
    pub fn new(every: Duration) -> EveryPeriod {
        EveryPeriod {
            every,
            count: 0,
            last: None,
        }
    }

    /// It happened at `now`: `Some(times since the last line)` when a line
    /// is due.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_per_period_counts_what_it_did_not_log() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = EveryPeriod::new(Duration::from_secs(60));
        assert_eq!(w.hit(at(0)), Some(1), "the first is logged");
        for ms in 1..400 {
            assert_eq!(w.hit(at(ms)), None);
        }
        assert_eq!(w.hit(at(59_999)), None);
        assert_eq!(
            w.hit(at(60_000)),
            Some(401),
            "a minute later, with the count"
        );
        assert_eq!(w.hit(at(60_001)), None);
    }
}
