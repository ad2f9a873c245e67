//! What the dispatcher holds, and the memory cap over it: deliveries taken
//! and not yet shaped, the queue of records, lines held for sampling, the
//! buffer's age. Events are shaped here (filters, redaction, envelope via
//! `records::shape`), in slices the dispatcher bounds in time, so that no
//! amount of CPU work holds an invoke. `BufferSettings`: the memory cap,
//! the record limit, sampling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dispatch::age::BufferAge;
use crate::dispatch::backlog::Backlog;
use crate::dispatch::report::{EveryPeriod, Reported};
use crate::dispatch::sampling::{Forward, Sampling, SamplingSettings};
use crate::lambda::telemetry::{Delivery, Event, Kind};
use crate::lambda::view::Figures;
use crate::records::queue::{Queue, Record};
use crate::records::shape::{Shaped, Shaper};
use crate::stats::Stats;

/// At most one WARN line a minute about fragmented events.
const FRAGMENT_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the buffer is configured with.
#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    /// The memory cap (`KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES`).
    pub cap: usize,
    pub max_record_bytes: usize,
    /// Outcome-aware sampling; `None`: off.
    pub sampling: Option<SamplingSettings>,
}

pub struct Buffer {
    /// Records waiting to be sent, in order.
    pub queue: Queue,
    /// How old the oldest of them is.
    pub age: BufferAge,
    shaper: Shaper,
    /// Outcome-aware sampling, when on: log lines held until their
    /// invocation's outcome.
    sampling: Option<Sampling>,
    /// Deliveries taken whose events are not shaped yet, oldest first, and
    /// their body bytes (they count against the memory cap).
    unshaped: VecDeque<Unshaped>,
    unshaped_bytes: usize,
    /// The memory cap, shared with the listener.
    backlog: Arc<Backlog>,
    cap: usize,
    max_record_bytes: usize,
    stats: Arc<Stats>,
    /// Lambda's own warnings already logged.
    reported: Reported,
    /// The WARN line about fragmented events.
    fragments_log: EveryPeriod,
    /// SHUTDOWN: nothing is held for sampling any more.
    closing: bool,
}

/// A delivery taken from the listener, its events not all shaped yet.
struct Unshaped {
    events: std::vec::IntoIter<Event>,
    received: Instant,
    body_bytes: usize,
    /// Records its events added to the queue so far.
    queued: usize,
}

impl Buffer {
    pub fn new(
        cfg: &BufferSettings,
        shaper: Shaper,
        backlog: Arc<Backlog>,
        stats: Arc<Stats>,
    ) -> Buffer {
        Buffer {
            queue: Queue::default(),
            age: BufferAge::default(),
            shaper,
            sampling: cfg.sampling.map(|s| Sampling::new(&s, stats.clone())),
            unshaped: VecDeque::new(),
            unshaped_bytes: 0,
            backlog,
            cap: cfg.cap,
            max_record_bytes: cfg.max_record_bytes,
            stats,
            reported: Reported::default(),
            fragments_log: EveryPeriod::new(FRAGMENT_LOG_EVERY),
            closing: false,
        }
    }

    /// A delivery from the listener, to be shaped later, in order.
    pub fn take(&mut self, delivery: Delivery) {
        let body_bytes = delivery.body_bytes;
        self.unshaped_bytes += body_bytes;
        self.unshaped.push_back(Unshaped {
            events: delivery.events.into_iter(),
            received: delivery.received,
            body_bytes,
            queued: 0,
        });
        // Held first, then out of flight: in between the body counts
        // twice, never not at all (or a second body could pass the cap).
        self.publish();
        self.backlog.taken(body_bytes);
    }

    /// Whether events are waiting to be shaped.
    pub fn has_unshaped(&self) -> bool {
        !self.unshaped.is_empty()
    }

    /// Shapes events taken, oldest first, until none is left or `until`
    /// (checked after each event), or once `enough` says the queue holds
    /// enough. `current`: the invocation the lifecycle is in.
    pub fn shape(
        &mut self,
        until: Instant,
        enough: impl Fn(&Queue) -> bool,
        current: Option<&str>,
    ) {
        if self.unshaped.is_empty() {
            return;
        }
        while let Some(u) = self.unshaped.front_mut() {
            let received = u.received;
            match u.events.next() {
                Some(e) => {
                    let before = self.queue.len();
                    self.shape_one(e, received, current);
                    let added = self.queue.len().saturating_sub(before);
                    if let Some(u) = self.unshaped.front_mut() {
                        u.queued += added;
                    }
                }
                None => {
                    let done = self.unshaped.pop_front().expect("front exists");
                    self.unshaped_bytes -= done.body_bytes;
                    let added = done.queued.min(self.queue.len());
                    self.queue.release_body(added, done.body_bytes);
                    self.relieve_holds();
                    continue;
                }
            }
            if Instant::now() >= until || enough(&self.queue) {
                break;
            }
        }
        self.publish();
    }

    /// SHUTDOWN's deadline: the events not even shaped are dropped; how
    /// many.
    pub fn drop_unshaped(&mut self) -> usize {
        let n = self.unshaped.iter().map(|u| u.events.len()).sum();
        self.unshaped.clear();
        self.unshaped_bytes = 0;
        n
    }

    /// One event: what it tells of sampling and Lambda's drops, then its
    /// records, queued (or held, or sampled out).
    fn shape_one(&mut self, e: Event, received: Instant, current: Option<&str>) {
        match e.view.kind {
            Kind::LogsDropped => self.lambda_dropped(e.view.figures()),
            Kind::RuntimeDone | Kind::Report => self.outcome(&e),
            _ => {}
        }
        let size = e.json.len();
        let (shaped, owner) = self.shaper.shape(e, current);
        match shaped {
            Shaped::Filtered => self.stats.filtered_events.add(1),
            Shaped::OwnEmf => self.stats.own_emf_lines.add(1),
            // (no Vec for the one record of almost every event)
            Shaped::Record(r) => self.place([r], owner, received),
            Shaped::Fragments(records) => {
                self.fragmented(size, records.len());
                self.place(records, owner, received);
            }
        }
    }

    /// An event was split into `parts` fragment records: counted always,
    /// logged at WARN once a minute at most.
    fn fragmented(&mut self, size: usize, parts: usize) {
        self.stats.fragmented_events.add(1);
        if let Some(n) = self.fragments_log.hit(Instant::now()) {
            log::warn!(
                "{n} event(s) exceeded KINESIS_TELEMETRY_MAX_RECORD_BYTES ({}) and were sent as fragment records (the last: {size} bytes in {parts} fragments); at most one such line a minute, totals in fragmentedEvents",
                self.max_record_bytes,
            );
        }
    }

    /// Where one event's records go: the queue; or with sampling, for a log
    /// line of an invocation the hash does not keep, the hold or nowhere.
    fn place<I: IntoIterator<Item = Record>>(
        &mut self,
        records: I,
        owner: Option<Box<str>>,
        received: Instant,
    ) {
        let records = match (&mut self.sampling, owner) {
            (Some(s), Some(id)) => {
                let now = self.age.thawed_now();
                match s.place(&id, records, now, received, self.closing) {
                    Some(records) => records,
                    None => return,
                }
            }
            _ => records,
        };
        for r in records {
            self.queue.push(r);
        }
        self.age.arrived(received);
    }

    /// A record of the extension's own (metrics): queued, and ageing like
    /// telemetry so the flush policy sends it on time.
    pub fn push_own(&mut self, r: Record) {
        let r = self.shaper.own(r);
        self.queue.push(r);
        self.age.arrived(Instant::now());
    }

    /// An invocation's outcome (its runtimeDone or report): what becomes of
    /// its held lines.
    fn outcome(&mut self, e: &Event) {
        if let Some(f) = self.sampling.as_mut().and_then(|s| s.outcome(e)) {
            self.forward([f]);
        }
    }

    /// Held lines forwarded: into the queue.
    fn forward(&mut self, forwards: impl IntoIterator<Item = Forward>) {
        for f in forwards {
            for r in f.records {
                self.queue.push(r);
            }
            self.age.arrived(f.arrived);
        }
    }

    /// Holds past the maximum hold time are forwarded.
    pub fn expire_holds(&mut self) {
        if let Some(s) = &mut self.sampling {
            let expired = s.expired(self.age.thawed_now());
            self.forward(expired);
        }
    }

    /// Thawed time at which the oldest hold is due for release.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.sampling.as_ref().and_then(Sampling::next_expiry)
    }

    /// Holds past half the memory cap are forwarded (see `Sampling::relieve`).
    fn relieve_holds(&mut self) {
        if let Some(s) = &mut self.sampling {
            let relieved = s.relieve();
            self.forward(relieved);
        }
    }

    /// SHUTDOWN: lines still waiting for an outcome are forwarded, not lost,
    /// and lines shaped from now on are not held.
    pub fn close(&mut self) {
        self.closing = true;
        if let Some(s) = &mut self.sampling {
            let released = s.release_all();
            self.forward(released);
        }
    }

    /// Lambda reports (`platform.logsDropped`) telemetry it dropped.
    fn lambda_dropped(&mut self, figures: Figures) {
        if let Figures::Dropped { records, bytes } = figures {
            self.stats.lambda_dropped_records.add(records);
            self.stats.lambda_dropped_bytes.add(bytes);
            // Once at WARN: each log line is itself telemetry.
            let detail = format!("{records} records ({bytes} bytes) before delivering them: the sink or this extension fell behind; totals are in the metrics record");
            self.reported
                .warn("platform.logsDropped", "Lambda dropped telemetry", &detail);
        }
    }

    /// Whether the buffer holds as much as the memory cap allows.
    pub fn over_cap(&self) -> bool {
        self.held_bytes() >= self.cap
    }

    /// What is held: queued, held for sampling, not yet shaped.
    fn held_bytes(&self) -> usize {
        let held = self.sampling.as_ref().map_or(0, Sampling::bytes);
        self.queue.bytes() + held + self.unshaped_bytes
    }

    /// The dispatcher pauses (the sandbox may freeze) or resumes: the
    /// listener must not wait for room meanwhile (see `Backlog`).
    pub fn paused(&self, paused: bool) {
        self.backlog.paused(paused);
    }

    /// Tells the listener how much is held (the memory cap); after a send.
    /// A delivery refused at the memory cap has not come again yet.
    pub fn refused_pending(&self) -> bool {
        self.backlog.refused_events() > 0
    }

    /// The events of that delivery (0: none pending).
    pub fn refused_events(&self) -> usize {
        self.backlog.refused_events()
    }

    pub fn publish(&self) {
        self.backlog.holding(self.held_bytes());
    }

    /// The partition key of the extension's own records.
    pub fn own_key(&mut self, current: Option<&str>) -> Arc<str> {
        self.shaper.keys.key(None, current)
    }
}
