//! The memory cap shared by the listener and the dispatcher: body bytes
//! taken by the listener and not yet in the dispatcher's hands, and what the
//! dispatcher holds. The listener answers a delivery as soon as its events
//! are handed over; it waits only while the two together are at the cap (the
//! push-back that keeps the process bounded: Lambda then buffers, and drops
//! and reports `platform.logsDropped`, instead of this process growing).
//!
//! So an answer never waits on Kinesis unless memory is full: the
//! dispatcher may be inside a slow request, and deliveries keep flowing.
//! Nor while the dispatcher is paused: nothing would make room until the
//! next thaw, and a delivery left unanswered across the freeze is broken.
//! A pause can begin before the invoke's runtime ends (with `PauseNow` the
//! dispatcher pauses at the INVOKE), so Lambda may go on delivering all the
//! invoke logs until the freeze: at the cap, a paused dispatcher's
//! deliveries are refused at once (503, counted as `refusedAtCap`), never
//! held: Lambda keeps them and delivers them again after the thaw (the
//! push-back, as when the listener waits). Memory stays at the cap plus one
//! body, paused or not.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long the listener sleeps at the cap before it looks again, in case
/// a wake-up was missed (it never is; this only bounds the cost if it were).
const RECHECK: Duration = Duration::from_millis(100);

/// What becomes of a body the listener is about to hand over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted in flight: hand it over.
    Admitted,
    /// Memory is at its cap and the dispatcher paused: refuse it now
    /// (Lambda delivers it again).
    Refused,
}

/// The listener's standing against the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Admit,
    /// At the cap: the running dispatcher will make room.
    Wait,
    /// At the cap, the dispatcher paused: nothing makes room before the
    /// thaw, and the delivery may not wait across the freeze.
    Refuse,
}

/// Whether a body can be handed over: while below the cap, whatever its
/// size (so memory is at most the cap plus one body). At the cap, a running
/// dispatcher makes room; a paused one does not.
fn room(in_flight: usize, held: usize, cap: usize, paused: bool) -> Room {
    if in_flight + held < cap {
        Room::Admit
    } else if paused {
        Room::Refuse
    } else {
        Room::Wait
    }
}

#[derive(Debug)]
pub struct Backlog {
    cap: usize,
    /// Body bytes handed over and not yet taken by the dispatcher.
    in_flight: AtomicUsize,
    /// What the dispatcher holds (queued, held, not yet shaped).
    held: AtomicUsize,
    /// Listener threads waiting at the cap: the dispatcher must wake them.
    /// (Sequentially consistent with the counts and `paused`: a waker that
    /// sees none waiting changed what a waiter checks before it waits.)
    waiting: AtomicUsize,
    /// The dispatcher is paused: nothing makes room until it resumes.
    paused: AtomicBool,
    /// The events of a delivery refused with none taken since (0: none;
    /// a delivery handed over has at least one): Lambda will deliver it
    /// again (what SHUTDOWN waits for, `refused_events`).
    refused: AtomicUsize,
    lock: Mutex<()>,
    room: Condvar,
}

impl Backlog {
    pub fn new(cap: usize) -> Backlog {
        Backlog {
            cap,
            in_flight: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
            lock: Mutex::new(()),
            room: Condvar::new(),
        }
    }

    /// Where the listener stands now (see `room`).
    fn room_now(&self, in_flight: usize) -> Room {
        room(
            in_flight,
            self.held.load(SeqCst),
            self.cap,
            self.paused.load(SeqCst),
        )
    }

    /// Counts `bytes` in flight if the cap allows it now (compare and swap:
    /// two listener threads cannot both take the last room).
    fn try_admit(&self, bytes: usize) -> Room {
        let mut in_flight = self.in_flight.load(SeqCst);
        loop {
            let room = self.room_now(in_flight);
            if room != Room::Admit {
                return room;
            }
            match self
                .in_flight
                .compare_exchange_weak(in_flight, in_flight + bytes, SeqCst, SeqCst)
            {
                Ok(_) => return Room::Admit,
                Err(now) => in_flight = now,
            }
        }
    }

    /// The dispatcher pauses (`true`: the sandbox may freeze from now) or
    /// resumes.
    pub fn paused(&self, paused: bool) {
        self.paused.store(paused, SeqCst);
        if paused {
            // Always: a listener must not wait across the freeze (once
            // an invoke, so the system call costs nothing).
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.room.notify_all();
        }
    }

    /// The listener is about to hand over a body of `bytes` holding
    /// `events` events: waits while
    /// memory is at the cap and the dispatcher runs, then counts it in
    /// flight; or, paused at the cap, tells it to refuse the body.
    pub fn admit(&self, bytes: usize, events: usize) -> Admission {
        let mut room = self.try_admit(bytes);
        if room == Room::Wait {
            let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.waiting.fetch_add(1, SeqCst);
            loop {
                room = self.try_admit(bytes);
                if room != Room::Wait {
                    break;
                }
                guard = match self.room.wait_timeout(guard, RECHECK) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            self.waiting.fetch_sub(1, SeqCst);
        }
        let admission = match room {
            Room::Admit => Admission::Admitted,
            Room::Wait | Room::Refuse => Admission::Refused,
        };
        // (Lambda delivers a refused batch again before the next one.)
        let pending = if admission == Admission::Refused {
            events
        } else {
            0
        };
        self.refused.store(pending, SeqCst);
        admission
    }

    /// The events of a refused delivery that has not come again (0: none).
    pub fn refused_events(&self) -> usize {
        self.refused.load(SeqCst)
    }

    /// The dispatcher took a body of `bytes` (it now counts in `held`).
    pub fn taken(&self, bytes: usize) {
        self.in_flight.fetch_sub(bytes, SeqCst);
        self.wake();
    }

    /// The dispatcher now holds `bytes` in all.
    pub fn holding(&self, bytes: usize) {
        let before = self.held.swap(bytes, SeqCst);
        if bytes < before {
            self.wake();
        }
    }

    /// Wakes the listener if it waits (no system call otherwise).
    fn wake(&self) {
        if self.waiting.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.room.notify_all();
        }
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn room_is_below_the_cap_and_at_it_a_wait_or_a_refusal() {
        assert_eq!(room(0, 0, 100, false), Room::Admit);
        assert_eq!(room(40, 59, 100, false), Room::Admit);
        assert_eq!(room(40, 59, 100, true), Room::Admit);
        // At the cap: the running dispatcher makes room; a paused one not.
        assert_eq!(room(40, 60, 100, false), Room::Wait);
        assert_eq!(room(40, 60, 100, true), Room::Refuse);
        // The dispatcher holds the cap and nothing is in flight: still
        // the cap (not one body more each time the dispatcher takes one).
        assert_eq!(room(0, 100, 100, false), Room::Wait);
        assert_eq!(room(0, 100, 100, true), Room::Refuse);
    }

    #[test]
    fn below_the_cap_bodies_pass_without_waiting() {
        let b = Backlog::new(100);
        assert_eq!(b.admit(40, 1), Admission::Admitted);
        assert_eq!(b.admit(40, 1), Admission::Admitted);
        assert_eq!(b.in_flight(), 80);
        b.taken(80);
        b.holding(90);
        // Below the cap, a body larger than the room left passes: memory
        // is at most the cap plus one body.
        assert_eq!(b.admit(500, 1), Admission::Admitted);
        assert_eq!(b.in_flight(), 500);
    }

    /// A backlog at its cap, and a listener thread waiting to hand over 10
    /// bytes: its channel says how it got through.
    fn at_cap() -> (
        Arc<Backlog>,
        crossbeam_channel::Receiver<Admission>,
        std::thread::JoinHandle<()>,
    ) {
        let b = Arc::new(Backlog::new(100));
        assert_eq!(b.admit(60, 1), Admission::Admitted);
        b.holding(50);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                tx.send(b.admit(10, 1)).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "admitted past the cap"
        );
        (b, rx, waiter)
    }

    #[test]
    fn at_the_cap_the_listener_waits_until_the_dispatcher_makes_room() {
        let (b, rx, waiter) = at_cap();
        // The dispatcher sends records: room again.
        b.holding(10);
        let admission = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("woken when room was made");
        assert_eq!(admission, Admission::Admitted);
        waiter.join().unwrap();
        assert_eq!(b.in_flight(), 70);
    }

    #[test]
    fn a_paused_dispatcher_at_the_cap_has_the_body_refused_not_held() {
        let (b, rx, waiter) = at_cap();
        // The invoke ends: nothing will make room before the freeze, and
        // the listener may not wait across it; nor may memory grow.
        b.paused(true);
        let admission = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("answered once paused");
        assert_eq!(admission, Admission::Refused);
        waiter.join().unwrap();
        assert_eq!(b.in_flight(), 60, "nothing more in flight");
        assert_eq!(
            b.admit(10, 1),
            Admission::Refused,
            "every body while paused"
        );
        // Below the cap a paused dispatcher's bodies pass as ever.
        b.holding(0);
        assert_eq!(b.admit(10, 1), Admission::Admitted);
    }
}
