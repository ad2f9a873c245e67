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

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver, Sender};

use crate::config::{Config, FlushMode, HashKeyMode};
use crate::dispatch::flush::{self, EndOfInvoke, History};
use crate::dispatch::retry::{backoff, Budget};
use crate::kinesis::client::{KinesisClient, TRANSPORT_ERROR};
use crate::kinesis::wire::{settle, Response, Retry};
use crate::lambda::telemetry::{self, Delivery, Kind};
use crate::records::pack::{self, Format};
use crate::records::queue::{Limits, Queue, Record};
use crate::records::shape::{Shaped, Shaper};
use crate::rng::Rng;
use crate::stats::Stats;

/// Without an invoke deadline, background sends end after this many
/// `flush_timeout`s.
const SEND_WINDOWS_WITHOUT_INVOKE: u32 = 2;

/// Report key for "nothing could be sent" (no credentials).
const CANNOT_SEND: &str = "CredentialsError";

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
        until: Instant,
        deadline: Instant,
        reply: Sender<()>,
    },
}

pub struct Dispatcher {
    events: Receiver<Delivery>,
    control: Receiver<Control>,
    client: KinesisClient,
    stats: Arc<Stats>,
    flush: FlushMode,
    flush_interval: Duration,
    max_delay: Duration,
    format: Format,
    hash_key: HashKeyMode,
    limits: Limits,
    max_record_bytes: usize,
    buffer_limit: usize,
    batch_max_age: Duration,
    flush_timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    budget: Budget,
    metrics_interval: Option<Duration>,
    /// Thawed time of the last metrics record, and records sent by then.
    last_metrics: (Duration, u64),
    /// Fields that identify this environment in metrics records.
    context: Vec<(&'static str, String)>,

    queue: Queue,
    shaper: Shaper,
    rng: Rng,
    history: History,
    last_invoke: Option<Instant>,
    waiting: Waiting,
    paused: bool,
    current_request: Option<String>,
    invoke_deadline: Option<Instant>,
    last_runtime_done: Option<Box<str>>,
    last_report: Option<Box<str>>,
    /// Thawed time: freezes do not age a batch.
    thawed: ThawClock,
    /// Thawed time at which the oldest queued record arrived (batch age).
    oldest: Option<Duration>,
    /// Wall time at which it arrived (periodic flushing, data delay).
    oldest_wall: Option<Instant>,
    /// No background send before this (after a failed one).
    retry_after: Option<Instant>,
    failed_rounds: u32,
    /// Error codes already logged at error level (logged once each).
    reported: Vec<String>,
    /// The last retryable failure, for the logs when retries run out.
    last_error: Option<String>,
    /// A re-signed retry is pending: a second signature or credential
    /// refusal in a row is final (a wrong secret, not a skewed clock).
    resigned: bool,
    /// Shutting down: retries are bounded by the deadline, not the budget.
    final_flush: bool,
    /// The first request since a thaw has not succeeded yet: its transport
    /// error may be a connection that died during the freeze.
    after_thaw: bool,
    /// Whether the last round had records accepted.
    progress: bool,
    /// The last round could not send at all (no credentials).
    blocked: bool,
    /// Rounds in a row that left records to resend (the backoff exponent).
    troubled_rounds: u32,
}

/// Time that only advances while the sandbox is thawed (between `Resume`
/// and `Pause`), so a batch's age is not inflated by freezes.
struct ThawClock {
    banked: Duration,
    since: Option<Instant>,
}

impl ThawClock {
    fn now(&self) -> Duration {
        self.banked + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
    fn stop(&mut self) {
        self.banked = self.now();
        self.since = None;
    }
    fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }
}

impl Dispatcher {
    /// `context`: `(name, value)` pairs identifying the environment in
    /// metrics records (function name, version, account).
    pub fn new(
        cfg: &Config,
        events: Receiver<Delivery>,
        control: Receiver<Control>,
        stats: Arc<Stats>,
        mut context: Vec<(&'static str, String)>,
        environment: &str,
    ) -> Dispatcher {
        let mut rng = Rng::from_os();
        let shaper = Shaper::new(cfg, environment, Rng::seeded(rng.next_u64()), &context);
        context.push(("environmentKey", environment.to_string()));
        Dispatcher {
            events,
            control,
            client: KinesisClient::new(cfg),
            stats,
            flush: cfg.flush,
            flush_interval: cfg.flush_interval,
            max_delay: cfg.max_delay,
            format: cfg.format,
            hash_key: cfg.hash_key,
            limits: Limits {
                max_records: cfg.max_records_per_request,
                // A request in flight is held twice (records + base64 body) on
                // top of the buffer: keep it to a quarter of the buffer cap, so
                // memory stays near the cap (never below one record).
                max_bytes: cfg
                    .max_bytes_per_request
                    .min((cfg.buffer_limit_bytes / 4).max(cfg.max_record_bytes)),
            },
            max_record_bytes: cfg.max_record_bytes,
            buffer_limit: cfg.buffer_limit_bytes,
            batch_max_age: cfg.batch_max_age,
            flush_timeout: cfg.flush_timeout,
            max_attempts: cfg.max_attempts,
            backoff_base: cfg.backoff_base,
            backoff_cap: cfg.backoff_cap,
            budget: Budget::new(cfg.retry_budget),
            metrics_interval: cfg.metrics_interval,
            last_metrics: (Duration::ZERO, 0),
            context,
            queue: Queue::default(),
            shaper,
            rng,
            history: History::default(),
            last_invoke: None,
            waiting: Waiting::None,
            // Paused until the first INVOKE: the main thread calls next
            // right after init without a handshake.
            paused: true,
            current_request: None,
            invoke_deadline: None,
            last_runtime_done: None,
            last_report: None,
            thawed: ThawClock {
                banked: Duration::ZERO,
                since: None,
            },
            oldest: None,
            oldest_wall: None,
            retry_after: None,
            failed_rounds: 0,
            reported: Vec::new(),
            last_error: None,
            resigned: false,
            final_flush: false,
            after_thaw: false,
            progress: false,
            blocked: false,
            troubled_rounds: 0,
        }
    }

    /// Runs until SHUTDOWN has been handled or the main thread is gone.
    pub fn run(mut self) {
        if let Err(e) = self.client.warm_up() {
            self.report_once(
                CANNOT_SEND,
                "cannot send yet",
                &format!("{e}; retrying later"),
            );
        }
        let no_events = never();
        loop {
            if !self.paused && matches!(self.waiting, Waiting::None | Waiting::RuntimeDone { .. }) {
                self.send_due();
            }
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
            let full = self.queue.bytes() >= self.buffer_limit;
            let events = if full { &no_events } else { &self.events };
            let timeout = self.next_timer();
            select! {
                recv(self.control) -> msg => match msg {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                },
                recv(events) -> msg => match msg {
                    Ok(batch) => self.ingest(batch),
                    // The listener is gone; keep serving the main thread.
                    Err(_) => self.events = never(),
                },
                default(timeout) => {}
            }
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
                if matches!(self.waiting, Waiting::None) {
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
                self.thawed.start();
                self.waiting = Waiting::Shutdown {
                    until: wait_until,
                    deadline,
                    reply,
                };
            }
        }
    }

    fn resume(&mut self, request_id: String, deadline: Instant) {
        self.paused = false;
        self.thawed.start();
        let now = Instant::now();
        self.history.invoke(self.last_invoke.map(|t| now - t));
        self.last_invoke = Some(now);
        self.current_request = Some(request_id);
        self.invoke_deadline = Some(deadline);
        // Connections from before a freeze may be dead; a failure on one is
        // retried at once rather than waiting out a backoff.
        self.retry_after = None;
        self.after_thaw = true;
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
            self.flush,
            &self.history,
            self.flush_interval,
            self.max_delay,
            self.oldest_age(),
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
        self.thawed.stop();
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
                let done = self.last_runtime_done.as_deref() == Some(request_id.as_str());
                // With the buffer full we read no events, so runtimeDone
                // cannot arrive: flush what we have instead of waiting.
                let blocked = self.queue.bytes() >= self.buffer_limit;
                if !done && !blocked && Instant::now() < until {
                    self.waiting = Waiting::RuntimeDone {
                        request_id,
                        until,
                        flush_deadline,
                        then,
                        reply,
                    };
                    return false;
                }
                if blocked && !done {
                    log::debug!(
                        "buffer full while waiting for runtimeDone of {request_id}; flushing now"
                    );
                } else if !done {
                    log::warn!(
                        "no platform.runtimeDone for request {request_id} in time; flushing what is buffered"
                    );
                }
                let deadline = flush_deadline.min(Instant::now() + self.flush_timeout);
                match then {
                    EndOfInvoke::FlushAll => self.flush_all(deadline),
                    _ => self.send_due_until(deadline, None),
                }
                self.pause(reply);
                false
            }
            Waiting::Shutdown {
                until,
                deadline,
                reply,
            } => {
                let last_report_in = match &self.current_request {
                    Some(id) => self.last_report.as_deref() == Some(id.as_str()),
                    None => true,
                };
                if !last_report_in && Instant::now() < until {
                    self.waiting = Waiting::Shutdown {
                        until,
                        deadline,
                        reply,
                    };
                    return false;
                }
                self.final_flush = true;
                self.flush_all(deadline);
                // The metrics record goes last, so it counts the final flush.
                self.enqueue_metrics(true);
                self.flush_all(deadline);
                self.drain_events();
                let left = self.queue.drain();
                // Deliveries answered 200 but still in the channel: ours,
                // and lost with the rest. (Once this thread ends, the
                // channel is closed and the listener answers 503.)
                for late in self.events.try_iter() {
                    self.stats.dropped_shutdown.add(late.events.len() as u64);
                }
                if !left.is_empty() {
                    self.stats.dropped_shutdown.add(left.len() as u64);
                    log::error!(
                        "shutdown deadline: {} records ({} bytes) could not be delivered in time and are lost (last error: {})",
                        left.len(),
                        left.iter().map(Record::size).sum::<usize>(),
                        self.last_error.as_deref().unwrap_or("none")
                    );
                }
                let _ = reply.send(());
                true
            }
        }
    }

    /// When the loop must wake up by itself.
    fn next_timer(&self) -> Duration {
        let now = Instant::now();
        let mut t = Duration::from_secs(3600);
        match &self.waiting {
            Waiting::RuntimeDone { until, .. } | Waiting::Shutdown { until, .. } => {
                t = t.min(until.saturating_duration_since(now));
            }
            Waiting::None => {}
        }
        if !self.paused {
            if let Some(after) = self.retry_after {
                t = t.min(after.saturating_duration_since(now));
            }
            // `send_due` stops at its time limit even with full requests
            // left; nothing else may wake us (the listener may have finished
            // posting): go round again at once, or when the backoff ends.
            let sending = matches!(self.waiting, Waiting::None | Waiting::RuntimeDone { .. })
                && self.invoke_deadline.is_none_or(|d| now < d);
            if sending && self.retry_after.is_none() && self.full_request_due() {
                t = Duration::ZERO;
            }
            if let Some(every) = self.metrics_interval {
                t = t.min((self.last_metrics.0 + every).saturating_sub(self.thawed.now()));
            }
            if let (FlushMode::Batch, Some(oldest)) = (self.flush, self.oldest) {
                let due = oldest + self.batch_max_age;
                t = t.min(due.saturating_sub(self.thawed.now()));
            }
            if let Some(oldest) = self.oldest_wall.filter(|_| self.periodic_now()) {
                t = t.min((oldest + self.flush_interval).saturating_duration_since(now));
            }
        }
        t
    }

    fn ingest(&mut self, delivery: Delivery) {
        let queued_before = self.queue.len();
        for e in delivery.events {
            match e.kind {
                Kind::RuntimeDone => {
                    self.last_runtime_done = e.request_id.clone();
                    if let Some(ms) = telemetry::runtime_duration_ms(&e.json) {
                        self.history.duration(ms);
                    }
                }
                Kind::Report => self.last_report = e.request_id.clone(),
                Kind::LogsDropped => {
                    if let Some((records, bytes)) = telemetry::logs_dropped(&e.json) {
                        self.stats.lambda_dropped_records.add(records);
                        self.stats.lambda_dropped_bytes.add(bytes);
                        // Once at WARN: each log line is itself telemetry.
                        let detail = format!("{records} records ({bytes} bytes) before delivering them: the sink or this extension fell behind; totals are in the metrics record");
                        self.report_at(
                            log::Level::Warn,
                            "platform.logsDropped",
                            "Lambda dropped telemetry",
                            &detail,
                        );
                    }
                }
                _ => {}
            }
            let size = e.json.len();
            let queued = match self.shaper.shape(e, self.current_request.as_deref()) {
                Shaped::Filtered => {
                    self.stats.filtered_events.add(1);
                    false
                }
                Shaped::Record(r) => {
                    self.queue.push(r);
                    true
                }
                Shaped::Fragments(records) => {
                    self.stats.fragmented_events.add(1);
                    log::warn!(
                        "an event of {size} bytes exceeds KINESIS_TELEMETRY_MAX_RECORD_BYTES ({}); sent as {} fragment records",
                        self.max_record_bytes,
                        records.len()
                    );
                    for r in records {
                        self.queue.push(r);
                    }
                    true
                }
            };
            if queued && self.oldest.is_none() {
                self.oldest = Some(self.thawed.now());
                self.oldest_wall = Some(delivery.received);
            }
        }
        let added = self.queue.len() - queued_before;
        self.queue.release_body(added, delivery.body_bytes);
    }

    /// Age of the oldest buffered record, in wall time.
    fn oldest_age(&self) -> Duration {
        self.oldest_wall.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether buffered data is sent by age now (periodic behaviour).
    fn periodic_now(&self) -> bool {
        flush::periodic(self.flush, &self.history, self.max_delay, self.oldest_age())
    }

    /// Moves whatever the listener has queued into our queue, without
    /// waiting and without passing the memory cap.
    fn drain_events(&mut self) {
        while self.queue.bytes() < self.buffer_limit {
            match self.events.try_recv() {
                Ok(batch) => self.ingest(batch),
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
        let key = self.shaper.keys.key(None, self.current_request.as_deref());
        self.queue.push(Record::new(json.into_bytes(), key));
        self.last_metrics = (self.thawed.now(), self.stats.records_sent.get());
    }

    /// Background sending while thawed: full batches, batches past their
    /// age (batch mode), anything over the memory cap, and periodic metrics
    /// while records are flowing.
    fn send_due(&mut self) {
        if let Some(every) = self.metrics_interval {
            let (at, sent) = self.last_metrics;
            if self.thawed.now() >= at + every && self.stats.records_sent.get() > sent {
                self.enqueue_metrics(false);
            }
        }
        if self.retry_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // A window of `flush_timeout` for starting requests; each request
        // gets its own `flush_timeout`, bounded only by the invoke's end, so
        // the window's end never cuts one short (a cut request is a false
        // "no time left"/timeout: a backoff, and duplicates if it got through).
        let now = Instant::now();
        // (no invoke: SHUTDOWN never sends in the background; a long window)
        let hard = self
            .invoke_deadline
            .unwrap_or(now + SEND_WINDOWS_WITHOUT_INVOKE * self.flush_timeout);
        self.send_due_until(hard.min(now + self.flush_timeout), Some(hard));
    }

    /// Whether a full request (or the memory cap) makes sending due now.
    fn full_request_due(&self) -> bool {
        self.queue.has_full_batch(self.limits) || self.queue.bytes() >= self.buffer_limit
    }

    /// Sends what is due, starting requests until `deadline`. Each request
    /// ends by `deadline`, or with `per_request` by `flush_timeout` after it
    /// starts (never past the `per_request` bound).
    fn send_due_until(&mut self, deadline: Instant, per_request: Option<Instant>) {
        while !self.queue.is_empty() && Instant::now() < deadline {
            let aged = match self.flush {
                FlushMode::Batch => self
                    .oldest
                    .is_some_and(|o| self.thawed.now() >= o + self.batch_max_age),
                _ => self.periodic_now() && self.oldest_age() >= self.flush_interval,
            };
            let due = aged || self.full_request_due();
            if !due {
                return;
            }
            let request_deadline = per_request.map_or(deadline, |hard| {
                hard.min(Instant::now() + self.flush_timeout)
            });
            if let Some(retry) = self.send_one(request_deadline) {
                let wait = if self.may_retry(retry) {
                    self.backoff(retry)
                } else {
                    self.failed_rounds = 0;
                    self.backoff_cap
                };
                self.retry_after = Some(Instant::now() + wait);
                return;
            }
        }
    }

    /// Whether to retry after a round that left records to resend: within
    /// `max_attempts` rounds without progress, and (except for the final
    /// flush) paid for by the retry budget. A round in which Kinesis took
    /// some records (shard throttling) is progress: it costs neither.
    fn may_retry(&mut self, retry: Retry) -> bool {
        if self.blocked {
            return false;
        }
        if self.progress {
            return true;
        }
        if self.failed_rounds >= self.max_attempts {
            log::warn!(
                "{} records still unsent after {} attempts (last error: {}); they stay buffered for the next flush",
                self.queue.len(),
                self.failed_rounds,
                self.last_error.as_deref().unwrap_or("none")
            );
            return false;
        }
        if self.final_flush || self.budget.spend(retry == Retry::Transient) {
            return true;
        }
        self.stats.retries_denied.add(1);
        log::warn!(
            "retry budget spent (the endpoint keeps failing: {}); {} records wait for the next flush",
            self.last_error.as_deref().unwrap_or("none"),
            self.queue.len()
        );
        false
    }

    /// Sends everything queued (and whatever arrives meanwhile), retrying
    /// failures with backoff, until the queue is empty, `deadline` comes, or
    /// `max_attempts` rounds in a row failed (then the rest waits for the next
    /// flush).
    fn flush_all(&mut self, deadline: Instant) {
        // Each flush starts its backoff afresh: an outage costs every invoke
        // the same bounded time, not ever-longer sleeps.
        self.failed_rounds = 0;
        self.troubled_rounds = 0;
        loop {
            self.drain_events();
            if self.queue.is_empty() || Instant::now() >= deadline {
                return;
            }
            if let Some(retry) = self.send_one(deadline) {
                // The final flush keeps trying until its deadline.
                if (!self.final_flush || self.blocked) && !self.may_retry(retry) {
                    self.failed_rounds = 0;
                    return;
                }
                let wait = self.backoff(retry);
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(wait.min(left));
            }
        }
    }

    fn backoff(&mut self, retry: Retry) -> Duration {
        // A transport error on the first request after a thaw is usually a
        // pooled connection that died in the freeze: retry at once, on a
        // fresh connection.
        if retry == Retry::Transient && self.after_thaw && self.troubled_rounds == 1 {
            return Duration::ZERO;
        }
        backoff(
            &mut self.rng,
            retry,
            self.troubled_rounds,
            self.backoff_base,
            self.backoff_cap,
        )
    }

    /// Sends one request's worth from the front of the queue. Records that
    /// failed in a retryable way go back to the front in order; the rest are
    /// sent or counted as lost. Returns how to retry when something is left
    /// to retry.
    fn send_one(&mut self, deadline: Instant) -> Option<Retry> {
        self.drain_events();
        let mut wires = pack::take(
            &mut self.queue,
            self.limits,
            self.format,
            self.max_record_bytes,
        );
        if wires.is_empty() {
            return None;
        }
        for w in &mut wires {
            if self.hash_key == HashKeyMode::Random {
                let h = u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64());
                w.hash_key = Some(h.to_string().into_boxed_str());
            }
            for r in &mut w.members {
                r.attempts += 1;
                if r.attempts > 1 {
                    self.stats.records_retried.add(1);
                }
            }
        }
        let outcome = self.client.put_records(&wires, deadline);
        if outcome.sent {
            self.stats.requests.add(1);
        }
        self.progress = false;
        self.blocked = false;
        let retry = match outcome.response {
            Response::Records(codes) => {
                self.budget.success();
                self.resigned = false;
                let settled = settle(wires, codes);
                self.progress = settled.stored > 0;
                self.stats.kinesis_records.add(settled.stored as u64);
                self.stats.bytes_sent.add(settled.stored_bytes as u64);
                self.stats.records_sent.add(settled.stored_members as u64);
                for (code, members) in &settled.rejected {
                    self.stats.dropped_rejected.add(*members as u64);
                    self.report_once(code, "a record was rejected", "");
                }
                let resend = settled.resend.len();
                let retry = settled.retry_code.map(|c| {
                    log::debug!("{resend} records failed with {c}; retrying them");
                    self.last_error = Some(format!("{resend} records failed with {c}"));
                    Retry::Throttled
                });
                self.queue.push_front_all(settled.resend);
                retry
            }
            Response::Error(e) => {
                if outcome.sent {
                    self.stats.request_errors.add(1);
                }
                let members: Vec<Record> = wires.into_iter().flat_map(|w| w.members).collect();
                let retry = self.retry_for(&e);
                if retry.is_retryable() {
                    if !outcome.sent {
                        // Nothing went out (no credentials): retrying now
                        // cannot help; the next flush tries again.
                        self.blocked = true;
                        self.report_once(CANNOT_SEND, "cannot send yet", &e.message);
                    }
                    self.last_error = Some(e.to_string());
                    log::debug!(
                        "PutRecords failed ({e}); will retry {} records",
                        members.len()
                    );
                    if outcome.ambiguous {
                        self.stats.duplicate_risk.add(members.len() as u64);
                    }
                    if e.code == TRANSPORT_ERROR {
                        self.client.reset_connections();
                    }
                    self.queue.push_front_all(members);
                    Some(retry)
                } else {
                    self.stats.dropped_rejected.add(members.len() as u64);
                    let what = format!("PutRecords failed, {} records lost", members.len());
                    self.report_once(&e.code, &what, &format!("{e}; to fix: {}", e.advice()));
                    None
                }
            }
        };
        self.after_thaw = self.after_thaw && retry.is_some() && self.troubled_rounds == 0;
        match retry {
            Some(_) => {
                self.troubled_rounds += 1;
                if self.progress {
                    self.failed_rounds = 0;
                } else {
                    self.failed_rounds += 1;
                }
            }
            None => self.troubled_rounds = 0,
        }
        if self.queue.is_empty() {
            self.oldest = None;
            self.oldest_wall = None;
        }
        if retry.is_none() {
            self.failed_rounds = 0;
            self.retry_after = None;
        }
        retry
    }

    /// How to treat a whole-request error. Signature refusals are re-signed
    /// once (clock skew) and final the second time in a row (a wrong secret);
    /// expired credentials are refreshed when they come from an endpoint.
    fn retry_for(&mut self, e: &crate::kinesis::wire::ApiError) -> Retry {
        let retry = e.retry();
        if !matches!(retry, Retry::Resign | Retry::RefreshCredentials) {
            return retry;
        }
        if retry == Retry::RefreshCredentials && self.client.refresh_credentials() {
            log::info!("Kinesis answered {}: fetching new credentials", e.code);
            return retry;
        }
        if self.resigned {
            self.resigned = false;
            return Retry::Never;
        }
        self.resigned = true;
        retry
    }

    /// Logs a non-retryable failure at error level the first time its code
    /// is seen, at debug level after that (no log storm).
    fn report_once(&mut self, code: &str, what: &str, detail: &str) {
        self.report_at(log::Level::Error, code, what, detail);
    }

    /// `report_once` at a chosen level.
    fn report_at(&mut self, level: log::Level, code: &str, what: &str, detail: &str) {
        if self.reported.iter().any(|c| c == code) {
            log::debug!("{what}: {code} {detail}");
        } else {
            self.reported.push(code.to_string());
            log::log!(
                level,
                "{what}: {code} {detail} (further {code} occurrences are counted, not logged)"
            );
        }
    }
}
