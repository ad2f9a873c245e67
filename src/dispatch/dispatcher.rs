//! The dispatcher thread's orchestration: when to send (the flush policy in
//! `flush`, the next background send in `timers`), the waits the main
//! thread's orders start (`control`), and SHUTDOWN. What it holds and how
//! events become records is `buffer`'s; one request at a time, `send`'s.
//!
//! It takes events from the listener and orders from the main thread. It
//! starts paused; after each INVOKE the main thread only calls `event/next`
//! once the dispatcher has paused again, and from then until the next
//! INVOKE the dispatcher starts no request: a request in flight when Lambda
//! freezes the sandbox would be broken on thaw.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{never, select, Receiver, Sender};

use crate::dispatch::backlog::Backlog;
use crate::dispatch::buffer::{Buffer, BufferSettings};
pub use crate::dispatch::control::Control;
use crate::dispatch::control::Waiting;
use crate::dispatch::flush::{self, EndOfInvoke, FlushMode, FlushSettings};
use crate::dispatch::invocations::Invocations;
use crate::dispatch::metrics::Metrics;
use crate::dispatch::retry::{GaveUp, Next, Round};
use crate::dispatch::send::{Requests, SendSettings};
use crate::dispatch::timers::{self, SendState};
use crate::kinesis::client::{KinesisClient, PutRecords};
use crate::lambda::model::Model;
use crate::lambda::telemetry::Delivery;
use crate::records::format::{cwlogs, Format};
use crate::records::queue::{Queue, Record};
use crate::records::shape::{ShapeSettings, Shaper};
use crate::rng::Rng;
use crate::stats::Stats;

/// Without an invoke deadline, background sends end after this many
/// `flush_timeout`s.
const SEND_WINDOWS_WITHOUT_INVOKE: u32 = 2;

/// At SHUTDOWN, the quiet spell waited for beyond Lambda's buffering time
/// (Managed Instances).
const QUIET_MARGIN: Duration = Duration::from_millis(50);

/// Events are shaped (filters, redaction, envelope) in slices of at most
/// this much CPU time between looks at the main thread's orders, so that
/// no amount of work holds an invoke (docs/delivery.md).
const SHAPE_SLICE: Duration = Duration::from_millis(2);

/// What the dispatcher and its parts are configured with, one value each.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub flush: FlushSettings,
    pub send: SendSettings,
    pub buffer: BufferSettings,
    pub shape: ShapeSettings,
    /// How often counters are also written to the stream while busy
    /// (`None`: only at shutdown).
    pub metrics_interval: Option<Duration>,
    /// The EMF line written with each metrics record.
    pub emf: crate::dispatch::emf::Settings,
}

pub struct Dispatcher<C: PutRecords = KinesisClient> {
    events: Receiver<Delivery>,
    control: Receiver<Control>,
    requests: Requests<C>,
    stats: Arc<Stats>,
    flush: FlushSettings,
    model: Model,

    /// What is held: unshaped events, the queue, sampling's holds.
    buffer: Buffer,
    invocations: Invocations,
    waiting: Waiting,
    paused: bool,
    invoke_deadline: Option<Instant>,
    /// Shutting down: retries are bounded by the deadline, not the budget.
    final_flush: bool,
    /// The metrics record: when due, and its context.
    metrics: Metrics,
}

impl<C: PutRecords> Dispatcher<C> {
    /// `context`: `(name, value)` pairs identifying the environment in
    /// metrics records (function name, version, account); `client`: Kinesis
    /// (`KinesisClient`), or the tests' scripted one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: DispatchSettings,
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
            &cfg.shape,
            model,
            environment,
            Rng::seeded(rng.next_u64()),
            &context,
            stats.clone(),
        );
        let otlp = shaper.otlp_head().cloned();
        let mut buffer = Buffer::new(&cfg.buffer, shaper, backlog, stats.clone());
        // Never frozen on Managed Instances: sending runs from the start.
        let paused = match model {
            Model::Default => true,
            Model::ManagedInstances => {
                buffer.age.thaw();
                false
            }
        };
        buffer.paused(paused);
        let head = (cfg.send.format == Format::Cwlogs).then(|| {
            let hex = rng.hex(16); // (32 hex digits)
            cwlogs::head(&cfg.send.cwlogs, &context, SystemTime::now(), &hex)
        });
        let packer = cfg.send.format.packer(head, otlp);
        context.push(("environmentId", environment.to_string()));
        Dispatcher {
            events,
            control,
            requests: Requests::new(&cfg.send, packer, client, stats.clone(), rng),
            stats,
            metrics: Metrics::new(cfg.metrics_interval, context, &cfg.emf),
            flush: cfg.flush,
            buffer,
            model,
            invocations: Invocations::new(model),
            waiting: Waiting::None,
            // On default Lambda paused until the first INVOKE: the main
            // thread calls next right after init without a handshake.
            paused,
            invoke_deadline: None,
            final_flush: false,
        }
    }

    /// Runs until SHUTDOWN has been handled or the main thread is gone.
    pub fn run(mut self) {
        self.requests.warm_up();
        let no_events = never();
        loop {
            if self.send_due_now() {
                self.send_due();
            }
            self.buffer.expire_holds();
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
            let full = self.buffer.over_cap();
            let events = if full { &no_events } else { &self.events };
            // Events to shape: only look for orders and deliveries.
            let timeout = if !self.buffer.has_unshaped() {
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
            self.shape(Instant::now() + SHAPE_SLICE, false);
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
                // What is due goes out at once, including whole requests in
                // events not shaped yet (within the flush bound).
                let bound = deadline.min(Instant::now() + self.flush.flush_timeout);
                self.shape(bound, true);
                if self.send_due_now() {
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
                self.buffer.paused(false);
                self.buffer.age.thaw();
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
        self.buffer.paused(false);
        self.buffer.age.thaw();
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
            self.flush.mode,
            &self.invocations.history,
            self.flush.flush_interval,
            self.flush.max_delay,
            self.buffer.age.wall_age(),
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
                self.invoke_over(Instant::now(), reply);
                Waiting::None
            }
        };
    }

    /// The invoke is over (the end-of-invoke policy was decided at
    /// `decided`): notes the post-runtime time, from the runtimeDone's
    /// arrival (or the decision, when it had not come) to now, and pauses.
    fn invoke_over(&mut self, decided: Instant, reply: Sender<()>) {
        let current = self.invocations.current.as_deref();
        let since = current.and_then(|id| self.invocations.runtime_done_at(id));
        let post_runtime = Instant::now().saturating_duration_since(since.unwrap_or(decided));
        self.metrics.invoke_ended(post_runtime);
        self.pause(reply);
    }

    fn pause(&mut self, reply: Sender<()>) {
        self.paused = true;
        self.buffer.paused(true);
        self.buffer.age.freeze();
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
                let decided = Instant::now();
                if done || self.buffer.over_cap() || decided >= until {
                    self.end_invoke(&request_id, done, flush_deadline, then);
                    self.invoke_over(decided, reply);
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
                let waits = shutdown_waits(
                    Instant::now(),
                    until,
                    deadline,
                    self.invocations.last_telemetry_in(since, self.buffering()),
                    self.buffer.refused_pending(),
                );
                if waits {
                    if self.buffer.refused_pending() {
                        // Room for what Lambda delivers again: what is held
                        // goes out now (SHUTDOWN sends nothing by age, and
                        // the listener waits at the cap meanwhile).
                        self.flush_all(redelivery_until(deadline));
                    }
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

    /// Lambda's buffering time: what it still held arrives within it.
    fn buffering(&self) -> Duration {
        self.flush.lambda_timeout + QUIET_MARGIN
    }

    /// The invoke's end (its runtimeDone came if `done`): applies the flush
    /// policy's `then`.
    fn end_invoke(&mut self, request_id: &str, done: bool, deadline: Instant, then: EndOfInvoke) {
        if !done && self.buffer.over_cap() {
            log::debug!("buffer full while waiting for runtimeDone of {request_id}; flushing now");
        } else if !done {
            log::warn!(
                "no platform.runtimeDone for request {request_id} in time; flushing what is buffered"
            );
        }
        let deadline = deadline.min(Instant::now() + self.flush.flush_timeout);
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
        self.buffer.close();
        self.flush_all(deadline);
        // The metrics record goes last, so it counts the final flush.
        self.enqueue_metrics(true);
        self.flush_all(deadline);
        self.drain_events();
        let left = self.buffer.queue.drain();
        // Events not even shaped by the deadline: lost like the rest (one
        // record each, as far as the count goes).
        let unshaped = self.buffer.drop_unshaped();
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
        self.requests.lost_at_shutdown(&left);
        // A delivery refused at the memory cap that Lambda has not delivered
        // again by now: its events go with the environment.
        let refused = self.buffer.refused_events();
        if refused > 0 {
            log::error!("shutdown deadline: a delivery of {refused} events refused at KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES was not delivered again in time and is lost (raise the limit or the stream's capacity)");
            self.stats.dropped_shutdown.add(refused as u64);
        }
        // Nothing is held any more: a delivery waiting at the cap is let
        // through, to the closed channel's 503, not kept to the deadline.
        self.buffer.publish();
    }

    /// When the loop must wake up by itself: the earliest time any wake-up
    /// source is due (see `timers`). Each is re-armed or cleared by the step
    /// that serves it, so none stays in the past while nothing can be done.
    fn next_timer(&self) -> Duration {
        let now = Instant::now();
        let mut wake: Option<Instant> = match &self.waiting {
            Waiting::RuntimeDone { until, .. } => Some(*until),
            Waiting::Shutdown {
                until,
                since,
                deadline,
                ..
            } => Some(match self.model {
                _ if self.buffer.refused_pending() => redelivery_until(*deadline),
                Model::ManagedInstances => {
                    (*until).min(self.invocations.quiet_until(*since, self.buffering()))
                }
                Model::Default => *until,
            }),
            Waiting::None => None,
        };
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        at(self.send_next(now));
        if !self.paused {
            // Thawed time runs with wall time while not paused.
            let thawed = self.buffer.age.thawed_now();
            let in_thawed = |due: Duration| now + due.saturating_sub(thawed);
            at(self.metrics.due(&self.stats).map(in_thawed));
            at(self.buffer.next_expiry().map(in_thawed));
        }
        wake.map_or(Duration::from_secs(3600), |w| {
            w.saturating_duration_since(now)
        })
    }

    /// When the next background request may start (`None`: not until
    /// something changes). The one place that decides it: the loop's wake-up
    /// and `send_due_until` both ask here.
    fn send_next(&self, now: Instant) -> Option<Instant> {
        let sending = matches!(self.waiting, Waiting::None | Waiting::RuntimeDone { .. });
        let state = SendState {
            may_send: !self.paused && sending && self.invoke_deadline.is_none_or(|d| now < d),
            queued: !self.buffer.queue.is_empty(),
            full: self.full_request_due(),
            aged_at: self.aged_at(now),
            // Parked: the hold is the probe's time.
            held_until: self.requests.held_until(),
        };
        timers::next_send(state, now)
    }

    /// Whether a background request is due now (see `send_next`).
    fn send_due_now(&self) -> bool {
        let now = Instant::now();
        self.send_next(now).is_some_and(|t| t <= now)
    }

    /// A delivery from the listener: the lifecycle takes note of its
    /// platform events at once (a runtimeDone ends an invoke's wait however
    /// much work is ahead of it); its events are shaped later, in order.
    fn take(&mut self, delivery: Delivery) {
        self.invocations.delivered(&delivery);
        self.buffer.take(delivery);
    }

    /// Shapes events taken until `until`; with `enough`, also once a whole
    /// request is queued.
    fn shape(&mut self, until: Instant, enough: bool) {
        let requests = &self.requests;
        let full = |q: &Queue| enough && requests.full_request(q);
        let current = self.invocations.current.as_deref();
        self.buffer.shape(until, full, current);
    }

    /// Whether buffered data is sent by age now (periodic behaviour).
    fn periodic_now(&self) -> bool {
        let (mode, max_delay) = (self.flush.mode, self.flush.max_delay);
        let age = self.buffer.age.wall_age();
        flush::periodic(mode, self.model, &self.invocations.history, max_delay, age)
    }

    /// Takes whatever the listener has handed over, without waiting and
    /// without passing the memory cap.
    fn drain_events(&mut self) {
        while !self.buffer.over_cap() {
            match self.events.try_recv() {
                Ok(batch) => self.take(batch),
                Err(_) => break,
            }
        }
    }

    /// Adds a metrics record to the queue (see `metrics`), and writes the
    /// EMF line on stdout when on: Lambda sends it to CloudWatch Logs.
    fn enqueue_metrics(&mut self, final_: bool) {
        let written = (self.metrics).record(self.buffer.age.thawed_now(), &self.stats, final_);
        if let Some(mut line) = written.emf {
            use std::io::Write;
            line.push('\n');
            // One write: a line cut by another writer would not parse.
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
        let key = self.buffer.own_key(self.invocations.current.as_deref());
        self.buffer
            .push_own(Record::new(written.record.into_bytes(), key));
    }

    /// The periodic metrics record, when due (thawed, telemetry flowing).
    fn write_metrics_if_due(&mut self) {
        if !self.paused
            && self
                .metrics
                .is_due(self.buffer.age.thawed_now(), &self.stats)
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
        let window = self.flush.flush_timeout;
        // (no invoke: SHUTDOWN never sends in the background; a long window)
        let hard = self
            .invoke_deadline
            .unwrap_or(now + SEND_WINDOWS_WITHOUT_INVOKE * window);
        self.send_due_until(hard.min(now + window), Some(hard));
    }

    /// Whether a full request (or the memory cap) makes sending due now.
    fn full_request_due(&self) -> bool {
        self.requests.full_request(&self.buffer.queue) || self.buffer.over_cap()
    }

    /// When the buffered data is old enough to be sent by age (`None`:
    /// empty, or age alone does not send it now).
    fn aged_at(&self, now: Instant) -> Option<Instant> {
        match self.flush.mode {
            // (thawed time runs with wall time while sending)
            FlushMode::Batch => self
                .buffer
                .age
                .thawed_until(self.flush.batch_max_age)
                .map(|left| now + left),
            _ if self.periodic_now() => self
                .buffer
                .age
                .oldest_wall()
                .map(|oldest| oldest + self.flush.flush_interval),
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
        loop {
            self.drain_events();
            self.shape(deadline, true);
            let now = Instant::now();
            if now >= deadline || self.send_next(now).is_none_or(|t| t > now) {
                return;
            }
            let request_deadline = per_request.map_or(deadline, |hard| {
                hard.min(Instant::now() + self.flush.flush_timeout)
            });
            let round = self.send_one(request_deadline);
            let next = self.requests.next(round, false, self.buffer.queue.len());
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
            self.shape(deadline, true);
            if self.buffer.queue.is_empty() || Instant::now() >= deadline {
                return;
            }
            let round = self.send_one(deadline);
            match self
                .requests
                .next(round, self.final_flush, self.buffer.queue.len())
            {
                Next::Go => {}
                Next::Wait(wait) => {
                    // No sleeping into the deadline: a try after it is none.
                    // The final flush cuts its last wait short instead, so
                    // that its last try comes just before the deadline.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let sleep = match self.final_flush {
                        true => crate::dispatch::retry::final_sleep(wait, left),
                        false => (wait < left).then_some(wait),
                    };
                    let Some(sleep) = sleep else { return };
                    std::thread::sleep(sleep);
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
    /// Its caller shaped events first, and checked `deadline` after.
    fn send_one(&mut self, deadline: Instant) -> Round {
        let round = self.requests.send_one(&mut self.buffer.queue, deadline);
        if self.buffer.queue.is_empty() {
            self.buffer.age.emptied();
        }
        self.buffer.publish();
        round
    }
}

/// Room the final flush keeps after waiting at SHUTDOWN for a refused
/// delivery to come again (a memory cap's worth of records to send).
const REDELIVERY_MARGIN: Duration = Duration::from_millis(500);

/// The latest a SHUTDOWN waits for a refused delivery to come again.
fn redelivery_until(deadline: Instant) -> Instant {
    deadline.checked_sub(REDELIVERY_MARGIN).unwrap_or(deadline)
}

/// Whether SHUTDOWN still waits before the final flush: for the last
/// telemetry (until `until`), and for a delivery refused at the memory cap
/// to come again (Lambda keeps it and delivers it again; one that came after
/// the final flush would be lost), until `redelivery_until(deadline)`.
fn shutdown_waits(
    now: Instant,
    until: Instant,
    deadline: Instant,
    telemetry_in: bool,
    refused: bool,
) -> bool {
    (!telemetry_in && now < until) || (refused && now < redelivery_until(deadline))
}

#[cfg(test)]
#[path = "dispatcher_tests.rs"]
mod tests;
