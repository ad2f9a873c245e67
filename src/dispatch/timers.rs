//! When the next background request may start (`next_send`): the one
//! decision that both the dispatcher's wake-up and its sending ask, so that a
//! time in the past always means a request goes (an idle Managed Instance
//! must cost no CPU: its cores are the function's).
//!
//! Every wake-up of the dispatcher says when it is next due and is re-armed
//! or cleared by the step that serves it: this send time (a send changes the
//! queue or the hold), the metrics record (`metrics::Metrics`), the waits
//! (`control::Waiting`, ended by the step that finishes them) and the
//! sampler's hold expiry (`Sampler`, released by `expired`).

use std::time::Instant;

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
    use std::time::Duration;

    const MS: fn(u64) -> Duration = Duration::from_millis;

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
