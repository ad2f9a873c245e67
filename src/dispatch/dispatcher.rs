//! The dispatcher thread: owns the queue of records, decides when to send
//! (the flush policy), sends through `sender`, resends what failed, and
//! counts what is lost.
//!
//! It takes events from the listener and orders from the main thread. It
//! starts paused; after each `Resume` (an INVOKE), the main thread only calls
//! `event/next` once the dispatcher has confirmed a `Pause`, and from then
//! until the next `Resume` the dispatcher starts no request: a request in
//! flight when Lambda freezes the sandbox would be broken on thaw. What to do
//! at each step is decided in `flush`; how events become records, in `shape`
//! and `pack`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver, Sender};

use crate::config::{Config, FlushMode};
use crate::dispatch::age::BufferAge;
use crate::dispatch::backlog::Backlog;
use crate::dispatch::flush::{self, EndOfInvoke};
use crate::dispatch::invocations::Invocations;
use crate::dispatch::report::Reported;
use crate::dispatch::retry::{GaveUp, Next, Round};
use crate::dispatch::send::Requests;
use crate::dispatch::timers::{self, MetricsTimer, SendState};
use crate::kinesis::client::{KinesisClient, PutRecords};
use crate::kinesis::error::Cause;
use crate::lambda::model::Model;
use crate::lambda::telemetry::{self, Delivery, Event, Kind};
use crate::lambda::view::Figures;
use crate::records::queue::{Queue, Record};
use crate::records::sample::{Outcome, Release, Route, Sampler, Why, SCALE};
use crate::records::shape::{Shaped, Shaper};
use crate::rng::Rng;
use crate::stats::Stats;

/// Without an invoke deadline, background sends end after this many
/// `flush_timeout`s.
const SEND_WINDOWS_WITHOUT_INVOKE: u32 = 2;

/// Managed Instances, at SHUTDOWN: the quiet spell waited for beyond
/// Lambda's buffering time.
const QUIET_MARGIN: Duration = Duration::from_millis(50);

/// At most one WARN line a minute about fragmented events.
const FRAGMENT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Events are shaped (filters, redaction, envelope) in slices of at most
/// this much CPU time between looks at the main thread's orders, so that
/// no amount of work holds an invoke (README "Delivery guarantees").
const SHAPE_SLICE: Duration = Duration::from_millis(2);

/// Orders from the main thread.
pub enum Control {
    /// An invocation started: the sandbox is thawed, sending resumes (what
    /// is due goes out at once). Then, as the main thread wants to call
    /// `event/next` again: if `wait_runtime_done`, wait (until `wait_until`)
    /// for the request's `platform.runtimeDone` and apply the flush policy;
    /// stop sending and reply. Background sends end by `deadline`.
    ///
    /// One message, not two: each handover between the threads is a wake-up
    /// paid on every invoke.
    Invoke {
        request_id: String,
        deadline: Instant,
        wait_runtime_done: bool,
        wait_until: Instant,
        reply: Sender<()>,
    },
    /// SHUTDOWN: wait until `wait_until` for the last `platform.report`, send
    /// everything until `deadline`, count what is left, reply and stop.
    Shutdown {
        wait_until: Instant,
        deadline: Instant,
        reply: Sender<()>,
    },
}

/// Waits that end when an event arrives or a time passes.
enum Waiting {
    None,
    RuntimeDone {
        request_id: String,
        until: Instant,
        flush_deadline: Instant,
        then: EndOfInvoke,
        reply: Sender<()>,
    },
    Shutdown {
        /// When SHUTDOWN came.
        since: Instant,
        until: Instant,
        deadline: Instant,
        reply: Sender<()>,
    },
}

pub struct Dispatcher<C: PutRecords = KinesisClient> {
    events: Receiver<Delivery>,
    control: Receiver<Control>,
    requests: Requests<C>,
    stats: Arc<Stats>,
    cfg: Config,
    model: Model,
    /// Fields that identify this environment in metrics records.
    context: Vec<(&'static str, String)>,

    queue: Queue,
    shaper: Shaper,
    /// Outcome-aware sampling, when on: log lines held until their
    /// invocation's outcome.
    sampler: Option<Sampler>,
    /// Lambda's own warnings already logged.
    reported: Reported,
    age: BufferAge,
    invocations: Invocations,
    waiting: Waiting,
    paused: bool,
    invoke_deadline: Option<Instant>,
    /// When the last telemetry delivery arrived.
    last_delivery: Instant,
    /// Shutting down: retries are bounded by the deadline, not the budget.
    final_flush: bool,
    /// Deliveries taken whose events are not shaped yet, oldest first, and
    /// their body bytes (they count against the memory cap).
    unshaped: VecDeque<Unshaped>,
    unshaped_bytes: usize,
    /// The memory cap shared with the listener.
    backlog: Arc<Backlog>,
    /// The periodic metrics record.
    metrics: MetricsTimer,
    /// Fragmented events since the last WARN about them, and when that was.
    fragments_unlogged: (u64, Option<Instant>),
}

/// A delivery taken from the listener, its events not all shaped yet.
struct Unshaped {
    events: std::vec::IntoIter<Event>,
    received: Instant,
    body_bytes: usize,
    /// Records its events added to the queue so far.
    queued: usize,
}

impl Dispatcher {
    /// `context`: `(name, value)` pairs identifying the environment in
    /// metrics records (function name, version, account).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        model: Model,
        events: Receiver<Delivery>,
        control: Receiver<Control>,
        stats: Arc<Stats>,
        backlog: Arc<Backlog>,
        context: Vec<(&'static str, String)>,
        environment: &str,
    ) -> Dispatcher {
        let client = KinesisClient::new(&cfg);
        Dispatcher::with_client(
            cfg,
            model,
            client,
            events,
            control,
            stats,
            backlog,
            context,
            environment,
        )
    }
}

impl<C: PutRecords> Dispatcher<C> {
    /// `new` with another client (the tests' scripted one).
    #[allow(clippy::too_many_arguments)]
    pub fn with_client(
        cfg: Config,
        model: Model,
        client: C,
        events: Receiver<Delivery>,
        control: Receiver<Control>,
        stats: Arc<Stats>,
        backlog: Arc<Backlog>,
        mut context: Vec<(&'static str, String)>,
        environment: &str,
    ) -> Dispatcher<C> {
        let mut rng = Rng::from_os();
        let shaper = Shaper::new(
            &cfg,
            model,
            environment,
            Rng::seeded(rng.next_u64()),
            &context,
            stats.clone(),
        );
        let sampler =
            (cfg.sample_success < SCALE).then(|| Sampler::new(cfg.sample_success, cfg.sample_hold));
        // Never frozen on Managed Instances: sending runs from the start.
        let mut age = BufferAge::default();
        let paused = match model {
            Model::Default => true,
            Model::ManagedInstances => {
                age.thaw();
                false
            }
        };
        context.push(("environmentId", environment.to_string()));
        Dispatcher {
            events,
            control,
            requests: Requests::new(&cfg, client, stats.clone(), rng),
            stats,
            metrics: MetricsTimer::new(cfg.metrics_interval),
            cfg,
            context,
            queue: Queue::default(),
            shaper,
            sampler,
            reported: Reported::default(),
            age,
            model,
            invocations: Invocations::new(model),
            waiting: Waiting::None,
            // On default Lambda paused until the first INVOKE: the main
            // thread calls next right after init without a handshake.
            paused,
            invoke_deadline: None,
            last_delivery: Instant::now(),
            final_flush: false,
            unshaped: VecDeque::new(),
            unshaped_bytes: 0,
            backlog,
            fragments_unlogged: (0, None),
        }
    }

    /// Runs until SHUTDOWN has been handled or the main thread is gone.
    pub fn run(mut self) {
        self.requests.warm_up();
        let no_events = never();
        loop {
            if self.send_next().is_some_and(|t| t <= Instant::now()) {
                self.send_due();
            }
            self.expire_holds();
            self.write_metrics_if_due();
            // Before blocking: the events that a send took in (it drains the
            // listener's channel first) may be the very ones a wait needs,
            // such as the runtimeDone ending the invoke. Nothing would wake
            // the select below for them, and the invoke would be held until
            // its deadline.
            if self.finish_waiting() {
                return;
            }
            // Over the memory cap, stop reading: the listener then blocks and
            // Lambda buffers (and reports drops) instead of us growing.
            let full = self.over_cap();
            let events = if full { &no_events } else { &self.events };
            // Events to shape: only look for orders and deliveries.
            let timeout = if self.unshaped.is_empty() {
                self.next_timer()
            } else {
                Duration::ZERO
            };
            select! {
                recv(self.control) -> msg => match msg {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                },
                recv(events) -> msg => match msg {
                    Ok(batch) => self.take(batch),
                    // The listener is gone; keep serving the main thread.
                    Err(_) => self.events = never(),
                },
                default(timeout) => {
                    if !timeout.is_zero() {
                        self.stats.wakeups.add(1);
                    }
                }
            }
            self.shape_unshaped(Instant::now() + SHAPE_SLICE, false);
        }
    }

    fn handle(&mut self, c: Control) {
        match c {
            Control::Invoke {
                request_id,
                deadline,
                wait_runtime_done,
                wait_until,
                reply,
            } => {
                let runtime_done = wait_runtime_done.then(|| request_id.clone());
                self.resume(request_id, deadline);
                if self.send_next().is_some_and(|t| t <= Instant::now()) {
                    self.send_due();
                }
                self.pause_after_invoke(runtime_done, wait_until, deadline, reply);
            }
            Control::Shutdown {
                wait_until,
                deadline,
                reply,
            } => {
                self.paused = false;
                self.age.thaw();
                self.waiting = Waiting::Shutdown {
                    since: Instant::now(),
                    until: wait_until,
                    deadline,
                    reply,
                };
            }
        }
    }

    fn resume(&mut self, request_id: String, deadline: Instant) {
        self.paused = false;
        self.age.thaw();
        self.invocations.invoked(request_id);
        self.invoke_deadline = Some(deadline);
        self.requests.retrier().thawed();
    }

    /// The main thread wants to call `event/next`: wait for `runtime_done`'s
    /// platform.runtimeDone first if the flush policy needs it, else pause now.
    fn pause_after_invoke(
        &mut self,
        runtime_done: Option<String>,
        wait_until: Instant,
        flush_deadline: Instant,
        reply: Sender<()>,
    ) {
        let then = flush::end_of_invoke(
            self.cfg.flush,
            &self.invocations.history,
            self.cfg.flush_interval,
            self.cfg.max_delay,
            self.age.wall_age(),
        );
        self.waiting = match runtime_done {
            Some(request_id) if then != EndOfInvoke::PauseNow => Waiting::RuntimeDone {
                request_id,
                until: wait_until,
                flush_deadline,
                then,
                reply,
            },
            _ => {
                self.pause(reply);
                Waiting::None
            }
        };
    }

    fn pause(&mut self, reply: Sender<()>) {
        self.paused = true;
        self.age.freeze();
        let _ = reply.send(());
    }

    /// Completes a wait whose condition or time has come. Returns true when
    /// the dispatcher is done (shutdown handled).
    fn finish_waiting(&mut self) -> bool {
        // Taken by value: a wait that is not over goes back unchanged.
        match std::mem::replace(&mut self.waiting, Waiting::None) {
            Waiting::None => false,
            Waiting::RuntimeDone {
                request_id,
                until,
                flush_deadline,
                then,
                reply,
            } => {
                let done = self.invocations.runtime_done(&request_id);
                // With the buffer full we read no events, so runtimeDone
                // cannot arrive: flush what we have instead of waiting.
                if done || self.over_cap() || Instant::now() >= until {
                    self.end_invoke(&request_id, done, flush_deadline, then);
                    self.pause(reply);
                } else {
                    self.waiting = Waiting::RuntimeDone {
                        request_id,
                        until,
                        flush_deadline,
                        then,
                        reply,
                    };
                }
                false
            }
            Waiting::Shutdown {
                since,
                until,
                deadline,
                reply,
            } => {
                if !self.last_telemetry_in(since) && Instant::now() < until {
                    self.waiting = Waiting::Shutdown {
                        since,
                        until,
                        deadline,
                        reply,
                    };
                    return false;
                }
                self.shut_down(deadline);
                let _ = reply.send(());
                true
            }
        }
    }

    /// Whether the last telemetry is in at SHUTDOWN (which came at `since`):
    /// on default Lambda the current invoke's report. On Managed Instances
    /// invocations run at once: the report of every one started, and a
    /// quiet spell (see `quiet_until`).
    fn last_telemetry_in(&self, since: Instant) -> bool {
        self.invocations.all_reported()
            && (self.model == Model::Default || Instant::now() >= self.quiet_until(since))
    }

    /// Managed Instances: what Lambda still buffered at SHUTDOWN arrives
    /// within its buffering time, so the last telemetry is in once that much
    /// (and a margin) passed since SHUTDOWN and since the last delivery.
    fn quiet_until(&self, since: Instant) -> Instant {
        let quiet = Duration::from_millis(self.cfg.buffering.timeout_ms.into()) + QUIET_MARGIN;
        since.max(self.last_delivery) + quiet
    }

    /// The invoke's end (its runtimeDone came if `done`): applies the flush
    /// policy's `then`.
    fn end_invoke(&mut self, request_id: &str, done: bool, deadline: Instant, then: EndOfInvoke) {
        if !done && self.over_cap() {
            log::debug!("buffer full while waiting for runtimeDone of {request_id}; flushing now");
        } else if !done {
            log::warn!(
                "no platform.runtimeDone for request {request_id} in time; flushing what is buffered"
            );
        }
        let deadline = deadline.min(Instant::now() + self.cfg.flush_timeout);
        match then {
            EndOfInvoke::FlushAll => self.flush_all(deadline),
            _ => self.send_due_until(deadline, None),
        }
    }

    /// SHUTDOWN: the final flush, the final metrics record, and the count
    /// of what could not be delivered by `deadline`.
    fn shut_down(&mut self, deadline: Instant) {
        self.final_flush = true;
        self.drain_events();
        // Lines still waiting for an outcome are forwarded, not lost (and
        // lines shaped from now on are not held: see `place`).
        if let Some(s) = &mut self.sampler {
            for r in s.release_all() {
                self.released(r);
            }
        }
        self.flush_all(deadline);
        // The metrics record goes last, so it counts the final flush.
        self.enqueue_metrics(true);
        self.flush_all(deadline);
        self.drain_events();
        let left = self.queue.drain();
        // Events not even shaped by the deadline: lost like the rest (one
        // record each, as far as the count goes).
        let unshaped: usize = self.unshaped.iter().map(|u| u.events.len()).sum();
        self.unshaped.clear();
        self.unshaped_bytes = 0;
        if unshaped > 0 {
            log::error!("shutdown deadline: {unshaped} events were not even processed in time (too much CPU work per event: redaction patterns?)");
            self.stats.dropped_shutdown.add(unshaped as u64);
        }
        // Deliveries answered 200 but still in the channel: ours, and lost
        // with the rest. (Once this thread ends, the channel is closed and
        // the listener answers 503.)
        for late in self.events.try_iter() {
            self.stats.dropped_shutdown.add(late.events.len() as u64);
        }
        if let (false, Some(cause)) = (left.is_empty(), self.requests.parked()) {
            let counter = match cause {
                Cause::AccessDenied => &self.stats.dropped_access_denied,
                Cause::StreamNotFound => &self.stats.dropped_stream_not_found,
                Cause::Kms => &self.stats.dropped_kms,
                Cause::Credentials => &self.stats.dropped_credentials,
                Cause::Signature => &self.stats.dropped_signature,
            };
            counter.add(left.len() as u64);
            log::error!(
                "shutdown: {} parked records ({} bytes) are lost: Kinesis still refused them ({cause:?}; last error: {})",
                left.len(),
                left.iter().map(Record::size).sum::<usize>(),
                self.requests.last_error()
            );
        } else if !left.is_empty() {
            self.stats.dropped_shutdown.add(left.len() as u64);
            log::error!(
                "shutdown deadline: {} records ({} bytes) could not be delivered in time and are lost (last error: {})",
                left.len(),
                left.iter().map(Record::size).sum::<usize>(),
                self.requests.last_error()
            );
        }
    }

    /// When the loop must wake up by itself: the earliest time any wake-up
    /// source is due (see `timers`). Each is re-armed or cleared by the step
    /// that serves it, so none stays in the past while nothing can be done.
    fn next_timer(&self) -> Duration {
        let now = Instant::now();
        let mut wake: Option<Instant> = match &self.waiting {
            Waiting::RuntimeDone { until, .. } => Some(*until),
            Waiting::Shutdown { until, since, .. } => Some(match self.model {
                Model::ManagedInstances => (*until).min(self.quiet_until(*since)),
                Model::Default => *until,
            }),
            Waiting::None => None,
        };
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        at(self.send_next());
        if !self.paused {
            // Thawed time runs with wall time while not paused.
            let thawed = self.age.thawed_now();
            let in_thawed = |due: Duration| now + due.saturating_sub(thawed);
            at(self.metrics.due(self.stats.events.get()).map(in_thawed));
            at(self
                .sampler
                .as_ref()
                .and_then(Sampler::next_expiry)
                .map(in_thawed));
        }
        wake.map_or(Duration::from_secs(3600), |w| {
            w.saturating_duration_since(now)
        })
    }

    /// When the next background request may start (`None`: not until
    /// something changes). The one place that decides it: the loop's wake-up
    /// and `send_due_until` both ask here.
    fn send_next(&self) -> Option<Instant> {
        let now = Instant::now();
        let sending = matches!(self.waiting, Waiting::None | Waiting::RuntimeDone { .. });
        let state = SendState {
            may_send: !self.paused && sending && self.invoke_deadline.is_none_or(|d| now < d),
            queued: !self.queue.is_empty(),
            full: self.full_request_due(),
            aged_at: self.aged_at(now),
            // Parked: the hold is the probe's time.
            held_until: self.requests.held_until(),
        };
        timers::next_send(state, now)
    }

    /// A delivery from the listener: the lifecycle takes note of its
    /// platform events at once (a runtimeDone ends an invoke's wait however
    /// much work is ahead of it); its events are shaped later, in order
    /// (`shape_unshaped`).
    fn take(&mut self, delivery: Delivery) {
        self.backlog.taken(delivery.body_bytes);
        self.last_delivery = delivery.received;
        for e in &delivery.events {
            self.invocations.saw(e);
        }
        self.unshaped_bytes += delivery.body_bytes;
        self.unshaped.push_back(Unshaped {
            events: delivery.events.into_iter(),
            received: delivery.received,
            body_bytes: delivery.body_bytes,
            queued: 0,
        });
        self.publish_held();
    }

    /// Shapes events taken, oldest first, until none is left or `until`
    /// (checked after each event); with `enough`, also once a whole request
    /// is queued.
    fn shape_unshaped(&mut self, until: Instant, enough: bool) {
        if self.unshaped.is_empty() {
            return;
        }
        while let Some(u) = self.unshaped.front_mut() {
            let received = u.received;
            match u.events.next() {
                Some(e) => {
                    let before = self.queue.len();
                    self.shape(e, received);
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
            if Instant::now() >= until || (enough && self.requests.full_request(&self.queue)) {
                break;
            }
        }
        self.publish_held();
    }

    /// Tells the listener how much the dispatcher holds (the memory cap).
    fn publish_held(&self) {
        self.backlog.holding(self.held_bytes());
    }

    /// One event: what it tells of sampling and Lambda's drops, then its
    /// records, queued (or held, or sampled out).
    fn shape(&mut self, e: Event, received: Instant) {
        match e.view.kind {
            Kind::LogsDropped => self.lambda_dropped(e.view.figures()),
            Kind::RuntimeDone | Kind::Report => self.outcome(&e),
            _ => {}
        }
        let size = e.json.len();
        let current = self.invocations.current.as_deref();
        let (shaped, owner) = self.shaper.shape(e, current);
        match shaped {
            Shaped::Filtered => self.stats.filtered_events.add(1),
            // (no Vec for the one record of almost every event)
            Shaped::Record(r) => self.place([r], owner, received),
            Shaped::Fragments(records) => {
                self.stats.fragmented_events.add(1);
                self.fragmented(size, records.len());
                self.place(records, owner, received);
            }
        }
    }

    /// An event was split into `parts` fragment records: counted always,
    /// logged at WARN once a minute at most (each log line is itself
    /// telemetry).
    fn fragmented(&mut self, size: usize, parts: usize) {
        let (count, last) = &mut self.fragments_unlogged;
        *count += 1;
        if last.is_some_and(|t| t.elapsed() < FRAGMENT_LOG_EVERY) {
            return;
        }
        log::warn!(
            "{count} event(s) exceeded KINESIS_TELEMETRY_MAX_RECORD_BYTES ({}) and were sent as fragment records (the last: {size} bytes in {parts} fragments); at most one such line a minute, totals in fragmentedEvents",
            self.cfg.max_record_bytes,
        );
        *count = 0;
        *last = Some(Instant::now());
    }

    /// Where one event's records go: the queue; or with sampling, for a log
    /// line of an invocation the hash does not keep, the hold (its outcome
    /// not known yet) or nowhere (it succeeded).
    fn place(
        &mut self,
        records: impl IntoIterator<Item = Record>,
        owner: Option<Box<str>>,
        received: Instant,
    ) {
        if let (Some(s), Some(id)) = (&mut self.sampler, owner) {
            match s.route(&id) {
                Route::Forward => {}
                // SHUTDOWN: no outcome will come in time; forwarded.
                Route::Hold if self.final_flush => {}
                Route::Hold => return s.hold(&id, records, self.age.thawed_now(), received),
                Route::Drop => {
                    let bytes: usize = records.into_iter().map(|r| r.size()).sum();
                    self.stats.sampled_out_lines.add(1);
                    self.stats.sampled_out_bytes.add(bytes as u64);
                    return;
                }
            }
        }
        for r in records {
            self.queue.push(r);
        }
        self.age.arrived(received);
    }

    /// An invocation's outcome (its runtimeDone or report): what becomes of
    /// its held lines.
    fn outcome(&mut self, e: &telemetry::Event) {
        let (Some(s), Some(id)) = (&mut self.sampler, e.request_id()) else {
            return;
        };
        if let Some(r) = s.outcome(id, Outcome::of(e.view.status())) {
            self.released(r);
        }
    }

    /// Held lines leave the hold: forwarded, or counted as sampled out.
    fn released(&mut self, r: Release) {
        match r.why {
            Why::SampledOut => {
                self.stats.sampled_out_invocations.add(1);
                self.stats.sampled_out_lines.add(r.lines);
                self.stats.sampled_out_bytes.add(r.bytes);
                return;
            }
            Why::Failed => self.stats.kept_failed.add(1),
            Why::Undecided if r.first_undecided => self.stats.forwarded_undecided.add(1),
            Why::Undecided => {}
        }
        if !r.records.is_empty() {
            for rec in r.records {
                self.queue.push(rec);
            }
            self.age.arrived(r.arrived);
        }
    }

    /// Holds past the maximum hold time are forwarded.
    fn expire_holds(&mut self) {
        let Some(s) = &mut self.sampler else {
            return;
        };
        if s.next_expiry().is_some_and(|t| t <= self.age.thawed_now()) {
            for r in s.expired(self.age.thawed_now()) {
                self.released(r);
            }
        }
    }

    /// Held lines may fill half the buffer cap; past it the oldest holds
    /// are forwarded, so the queue can always drain below the cap and the
    /// listener (and the outcomes it brings) is never stopped by holds.
    fn relieve_holds(&mut self) {
        let half = self.cfg.buffer_limit_bytes / 2;
        while self.sampler.as_ref().is_some_and(|s| s.bytes() > half) {
            match self.sampler.as_mut().and_then(Sampler::release_oldest) {
                Some(r) => self.released(r),
                None => return,
            }
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

    /// Whether buffered data is sent by age now (periodic behaviour).
    fn periodic_now(&self) -> bool {
        let (mode, max_delay) = (self.cfg.flush, self.cfg.max_delay);
        let age = self.age.wall_age();
        flush::periodic(mode, self.model, &self.invocations.history, max_delay, age)
    }

    /// Whether the buffer holds as much as the memory cap allows.
    fn over_cap(&self) -> bool {
        self.held_bytes() >= self.cfg.buffer_limit_bytes
    }

    /// What the dispatcher holds: queued, held for sampling, not yet shaped.
    fn held_bytes(&self) -> usize {
        let held = self.sampler.as_ref().map_or(0, Sampler::bytes);
        self.queue.bytes() + held + self.unshaped_bytes
    }

    /// Takes whatever the listener has handed over, without waiting and
    /// without passing the memory cap.
    fn drain_events(&mut self) {
        while !self.over_cap() {
            match self.events.try_recv() {
                Ok(batch) => self.take(batch),
                Err(_) => break,
            }
        }
    }

    /// Adds a metrics record to the queue (see `Stats::metrics_event`).
    fn enqueue_metrics(&mut self, final_: bool) {
        let now = crate::time::rfc3339(std::time::SystemTime::now());
        let context: Vec<(&str, &str)> =
            self.context.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let json = self.stats.metrics_event(&now, final_, &context);
        let key = self
            .shaper
            .keys
            .key(None, self.invocations.current.as_deref());
        self.queue.push(Record::new(json.into_bytes(), key));
        // It ages like telemetry, so the flush policy sends it on time.
        self.age.arrived(Instant::now());
        self.metrics
            .served(self.age.thawed_now(), self.stats.events.get());
    }

    /// The periodic metrics record, when due (thawed, telemetry flowing).
    fn write_metrics_if_due(&mut self) {
        if !self.paused
            && self
                .metrics
                .is_due(self.age.thawed_now(), self.stats.events.get())
        {
            self.enqueue_metrics(false);
        }
    }

    /// Background sending while thawed (when `send_next` says so): full
    /// batches, batches past their age, anything over the memory cap.
    fn send_due(&mut self) {
        // A window of `flush_timeout` for starting requests; each request
        // gets its own `flush_timeout`, bounded only by the invoke's end, so
        // the window's end never cuts one short (a cut request is a false
        // "no time left"/timeout: a backoff, and duplicates if it got through).
        let now = Instant::now();
        let window = self.cfg.flush_timeout;
        // (no invoke: SHUTDOWN never sends in the background; a long window)
        let hard = self
            .invoke_deadline
            .unwrap_or(now + SEND_WINDOWS_WITHOUT_INVOKE * window);
        self.send_due_until(hard.min(now + window), Some(hard));
    }

    /// Whether a full request (or the memory cap) makes sending due now.
    fn full_request_due(&self) -> bool {
        self.requests.full_request(&self.queue) || self.over_cap()
    }

    /// When the buffered data is old enough to be sent by age (`None`:
    /// empty, or age alone does not send it now).
    fn aged_at(&self, now: Instant) -> Option<Instant> {
        match self.cfg.flush {
            // (thawed time runs with wall time while sending)
            FlushMode::Batch => self
                .age
                .thawed_until(self.cfg.batch_max_age)
                .map(|left| now + left),
            _ if self.periodic_now() => self
                .age
                .oldest_wall()
                .map(|oldest| oldest + self.cfg.flush_interval),
            _ => None,
        }
    }

    /// Sends what is due, starting requests until `deadline`. Each request
    /// ends by `deadline`, or with `per_request` by `flush_timeout` after it
    /// starts (never past the `per_request` bound).
    fn send_due_until(&mut self, deadline: Instant, per_request: Option<Instant>) {
        if !self.requests.probe_due() {
            return; // parked: the probe is not due yet
        }
        while Instant::now() < deadline {
            self.drain_events();
            self.shape_unshaped(deadline, true);
            if self.send_next().is_none_or(|t| t > Instant::now()) {
                return;
            }
            let request_deadline = per_request.map_or(deadline, |hard| {
                hard.min(Instant::now() + self.cfg.flush_timeout)
            });
            let round = self.send_one(request_deadline);
            let next = self.requests.next(round, false, self.queue.len());
            if next != Next::Go {
                self.requests.retrier().hold(next);
                return;
            }
        }
    }

    /// Sends everything queued (and whatever arrives meanwhile), retrying
    /// failures with backoff, until the queue is empty, `deadline` comes, or
    /// the retrier gives up (then the rest waits for the next flush). The
    /// final flush gives up only when nothing can be sent.
    fn flush_all(&mut self, deadline: Instant) {
        // Parked: no request before the probe is due (no post-runtime time),
        // except the final flush's one last attempt.
        if !self.final_flush && !self.requests.probe_due() {
            return;
        }
        self.requests.retrier().fresh_flush();
        loop {
            self.drain_events();
            self.shape_unshaped(deadline, true);
            if self.queue.is_empty() || Instant::now() >= deadline {
                return;
            }
            let round = self.send_one(deadline);
            match self
                .requests
                .next(round, self.final_flush, self.queue.len())
            {
                Next::Go => {}
                Next::Wait(wait) => {
                    // No sleeping into the deadline: a try after it is none.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if wait >= left {
                        return;
                    }
                    std::thread::sleep(wait);
                }
                next @ Next::GiveUp(GaveUp::Parked(_)) => {
                    self.requests.retrier().hold(next);
                    return;
                }
                Next::GiveUp(_) => return,
            }
        }
    }

    /// Sends one request's worth from the front of the queue.
    fn send_one(&mut self, deadline: Instant) -> Round {
        self.drain_events();
        self.shape_unshaped(deadline, true);
        let round = self.requests.send_one(&mut self.queue, deadline);
        if self.queue.is_empty() {
            self.age.emptied();
        }
        self.publish_held();
        round
    }
}

#[cfg(test)]
#[path = "dispatcher_tests.rs"]
mod tests;
