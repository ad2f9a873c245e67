//! The memory cap shared by the listener and the dispatcher: body bytes
//! taken by the listener and not yet in the dispatcher's hands, and what the
//! dispatcher holds. The listener answers a delivery as soon as its events
//! are handed over; it waits only while the two together are at the cap (the
//! push-back that keeps the process bounded: Lambda then buffers, and drops
//! and reports `platform.logsDropped`, instead of this process growing).
//!
//! So an answer never waits on Kinesis unless memory is full: the
//! dispatcher may be inside a slow request, and deliveries keep flowing.
//! Nor while the dispatcher is paused (default Lambda, between an invoke's
//! end and the freeze): nothing would make room until the next thaw, and a
//! delivery left unanswered across the freeze is broken. What Lambda still
//! sends then is the invoke's tail, bounded by its own buffering.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long the listener sleeps at the cap before it looks again, in case
/// a wake-up was missed (it never is; this only bounds the cost if it were).
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Backlog {
    cap: usize,
    /// Body bytes handed over and not yet taken by the dispatcher.
    in_flight: AtomicUsize,
    /// What the dispatcher holds (queued, held, not yet shaped).
    held: AtomicUsize,
    /// The listener waits at the cap: the dispatcher must wake it.
    waiting: AtomicBool,
    /// The dispatcher is paused: nothing makes room until it resumes.
    paused: AtomicBool,
    lock: Mutex<()>,
    room: Condvar,
}

impl Backlog {
    pub fn new(cap: usize) -> Backlog {
        Backlog {
            cap,
            in_flight: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            lock: Mutex::new(()),
            room: Condvar::new(),
        }
    }

    /// Whether a body can be handed over now: below the cap, or nothing at
    /// all in flight (one body always passes, or a body larger than the
    /// room left could never pass), or the dispatcher paused.
    fn has_room(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        in_flight == 0
            || in_flight + self.held.load(Ordering::Acquire) < self.cap
            || self.paused.load(Ordering::Acquire)
    }

    /// The dispatcher pauses (`true`: the sandbox may freeze from now) or
    /// resumes.
    pub fn paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if paused {
            self.wake();
        }
    }

    /// The listener is about to hand over a body of `bytes`: waits while
    /// memory is at the cap, then counts it in flight.
    pub fn admit(&self, bytes: usize) {
        if !self.has_room() {
            let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.waiting.store(true, Ordering::Release);
            while !self.has_room() {
                guard = match self.room.wait_timeout(guard, RECHECK) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            self.waiting.store(false, Ordering::Release);
        }
        self.in_flight.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The dispatcher took a body of `bytes` (it now counts in `held`).
    pub fn taken(&self, bytes: usize) {
        self.in_flight.fetch_sub(bytes, Ordering::AcqRel);
        self.wake();
    }

    /// The dispatcher now holds `bytes` in all.
    pub fn holding(&self, bytes: usize) {
        let before = self.held.swap(bytes, Ordering::AcqRel);
        if bytes < before {
            self.wake();
        }
    }

    /// Wakes the listener if it waits (no system call otherwise).
    fn wake(&self) {
        if self.waiting.load(Ordering::Acquire) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.room.notify_all();
        }
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn below_the_cap_bodies_pass_without_waiting() {
        let b = Backlog::new(100);
        b.admit(40);
        b.admit(40);
        assert_eq!(b.in_flight(), 80);
        b.taken(80);
        b.holding(90);
        // 0 in flight: one body always passes, however full the dispatcher.
        b.admit(500);
        assert_eq!(b.in_flight(), 500);
    }

    /// A backlog at its cap, and a listener thread waiting to hand over 10
    /// bytes: its channel says when it got through.
    fn at_cap() -> (
        Arc<Backlog>,
        crossbeam_channel::Receiver<()>,
        std::thread::JoinHandle<()>,
    ) {
        let b = Arc::new(Backlog::new(100));
        b.admit(60);
        b.holding(50);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                b.admit(10);
                tx.send(()).unwrap();
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
        rx.recv_timeout(Duration::from_secs(5))
            .expect("woken when room was made");
        waiter.join().unwrap();
        assert_eq!(b.in_flight(), 70);
    }

    #[test]
    fn a_paused_dispatcher_lets_the_listener_answer() {
        let (b, rx, waiter) = at_cap();
        // The invoke ends: nothing will make room before the freeze.
        b.paused(true);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("admitted once paused");
        waiter.join().unwrap();
        b.paused(false);
        assert!(!b.has_room(), "the cap holds again once thawed");
    }
}
