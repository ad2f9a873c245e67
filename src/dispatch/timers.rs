//! The dispatcher's own wake-ups, each a small type that says when it is
//! next due and is re-armed or cleared by the step that serves it, so that
//! nothing wakes the loop while nothing is due (an idle Managed Instance
//! must cost no CPU: its cores are the function's).
//!
//! The other wake-ups are the waits (`dispatcher::Waiting`, ended by the
//! step that finishes them) and the sampler's hold expiry (`Sampler`,
//! released by `expired`).

use std::time::{Duration, Instant};

/// The periodic metrics record: one per interval of thawed time, and only
/// while telemetry flows (an idle environment writes none, and wakes for
/// none).
#[derive(Debug)]
pub struct MetricsTimer {
    every: Option<Duration>,
    /// Thawed time of the last record.
    last_at: Duration,
    /// Events received from Lambda by then. (Not records sent: the metrics
    /// record is one, and each would call for the next.)
    events_then: u64,
}

impl MetricsTimer {
    pub fn new(every: Option<Duration>) -> MetricsTimer {
        MetricsTimer {
            every,
            last_at: Duration::ZERO,
            events_then: 0,
        }
    }

    /// Thawed time at which a record is due, given the events received so
    /// far; `None` (no wake-up) when none arrived since the last record.
    pub fn due(&self, events_now: u64) -> Option<Duration> {
        let every = self.every?;
        (events_now > self.events_then).then_some(self.last_at + every)
    }

    /// Whether a record is due at thawed time `now`.
    pub fn is_due(&self, now: Duration, events_now: u64) -> bool {
        self.due(events_now).is_some_and(|at| at <= now)
    }

    /// A record was written at `now`: the next is due an interval later,
    /// and only if events arrive meanwhile.
    pub fn served(&mut self, now: Duration, events_now: u64) {
        self.last_at = now;
        self.events_then = events_now;
    }
}

/// What decides when the next request may start by itself (background
/// sending while thawed).
#[derive(Debug, Clone, Copy)]
pub struct SendState {
    /// Sending is allowed now: thawed, no wait that forbids it, before the
    /// invoke's end.
    pub may_send: bool,
    /// Records are queued.
    pub queued: bool,
    /// A whole request is queued, or the memory cap is reached.
    pub full: bool,
    /// When the oldest record is old enough to go (`None`: age alone never
    /// sends it, as in `end` mode).
    pub aged_at: Option<Instant>,
    /// No request before this (a backoff, or parked until the probe).
    pub held_until: Option<Instant>,
}

/// When the next request may start by itself: `None` until something
/// changes (a record arrives, a thaw); a time at or before `now` means now.
/// A step that sends at this time changes what it depends on (the queue,
/// or the hold after a failure), so the time never stays in the past.
pub fn next_send(s: SendState, now: Instant) -> Option<Instant> {
    if !s.may_send || !s.queued {
        return None;
    }
    let ready = if s.full { Some(now) } else { s.aged_at }?;
    Some(s.held_until.map_or(ready, |h| h.max(ready)))
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

    fn state() -> SendState {
        SendState {
            may_send: true,
            queued: true,
            full: false,
            aged_at: None,
            held_until: None,
        }
    }

    #[test]
    fn a_send_is_due_when_full_or_aged_and_not_held() {
        let now = Instant::now();
        let later = now + MS(50);
        assert_eq!(next_send(state(), now), None, "not full, not ageing");
        let full = SendState {
            full: true,
            ..state()
        };
        assert_eq!(next_send(full, now), Some(now));
        let aged = SendState {
            aged_at: Some(later),
            ..state()
        };
        assert_eq!(next_send(aged, now), Some(later));
        let held = SendState {
            held_until: Some(later),
            ..full
        };
        assert_eq!(next_send(held, now), Some(later), "a backoff delays it");
        // A hold in the past does not make a send due by itself: nothing to
        // send means no wake-up, however old the hold.
        let stale_hold = SendState {
            held_until: Some(now - MS(10)),
            ..state()
        };
        assert_eq!(next_send(stale_hold, now), None);
        for blocked in [
            SendState {
                may_send: false,
                ..full
            },
            SendState {
                queued: false,
                ..full
            },
        ] {
            assert_eq!(next_send(blocked, now), None);
        }
    }
}
