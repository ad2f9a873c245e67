//! The dispatcher thread: owns the queue of records, decides when to send
//! (the flush policy), sends through `sender`, resends what failed, and
//! counts what is lost.
//!
//! It takes events from the listener and orders from the main thread. The
//! main thread only calls `event/next` after the dispatcher has confirmed a
//! `Pause`, and from then until the next `Resume` the dispatcher starts no
//! request: a request in flight when Lambda freezes the sandbox would be
//! broken on thaw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver, Sender};

use crate::batch::{fit_event, Limits, Queue, Record};
use crate::config::{Config, FlushMode, Types};
use crate::kinesis::{record_error_retryable, Response, Retry};
use crate::partition::Keys;
use crate::rng::Rng;
use crate::sender::KinesisClient;
use crate::stats::Stats;
use crate::telemetry::{Event, Kind};

/// Orders from the main thread.
pub enum Control {
    /// An invocation started: the sandbox is thawed, sending may resume.
    Resume {
        request_id: String,
        deadline: Instant,
    },
    /// The main thread wants to call `event/next`. If `runtime_done` names a
    /// request, first wait (until `wait_until`) for its `platform.runtimeDone`
    /// and apply the flush policy, finishing by `flush_deadline`. Then stop
    /// sending and reply.
    Pause {
        runtime_done: Option<String>,
        wait_until: Instant,
        flush_deadline: Instant,
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
        reply: Sender<()>,
    },
    Shutdown {
        until: Instant,
        deadline: Instant,
        reply: Sender<()>,
    },
}

pub struct Dispatcher {
    events: Receiver<Vec<Event>>,
    control: Receiver<Control>,
    client: KinesisClient,
    stats: Arc<Stats>,
    flush: FlushMode,
    types: Types,
    limits: Limits,
    max_record_bytes: usize,
    buffer_limit: usize,
    batch_max_age: Duration,
    flush_timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,

    queue: Queue,
    keys: Keys,
    rng: Rng,
    waiting: Waiting,
    paused: bool,
    current_request: Option<String>,
    invoke_deadline: Option<Instant>,
    last_runtime_done: Option<Box<str>>,
    last_report: Option<Box<str>>,
    /// Thawed time: freezes do not age a batch.
    thawed: ThawClock,
    /// Thawed time at which the oldest queued record arrived.
    oldest: Option<Duration>,
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
    pub fn new(
        cfg: &Config,
        events: Receiver<Vec<Event>>,
        control: Receiver<Control>,
        stats: Arc<Stats>,
    ) -> Dispatcher {
        let mut rng = Rng::from_os();
        let keys = Keys::new(cfg.partition_key, Rng::seeded(rng.next_u64()));
        Dispatcher {
            events,
            control,
            client: KinesisClient::new(cfg),
            stats,
            flush: cfg.flush,
            types: cfg.types,
            limits: Limits {
                max_records: cfg.max_records_per_request,
                max_bytes: cfg.max_bytes_per_request,
            },
            max_record_bytes: cfg.max_record_bytes,
            buffer_limit: cfg.buffer_limit_bytes,
            batch_max_age: cfg.batch_max_age,
            flush_timeout: cfg.flush_timeout,
            max_attempts: cfg.max_attempts,
            backoff_base: cfg.backoff_base,
            backoff_cap: cfg.backoff_cap,
            queue: Queue::default(),
            keys,
            rng,
            waiting: Waiting::None,
            paused: false,
            current_request: None,
            invoke_deadline: None,
            last_runtime_done: None,
            last_report: None,
            thawed: ThawClock {
                banked: Duration::ZERO,
                since: Some(Instant::now()),
            },
            oldest: None,
            retry_after: None,
            failed_rounds: 0,
            reported: Vec::new(),
            last_error: None,
            resigned: false,
        }
    }

    /// The partition key of this execution environment (for the start log).
    pub fn environment_key(&self) -> &str {
        self.keys.environment()
    }

    /// Runs until SHUTDOWN has been handled or the main thread is gone.
    pub fn run(mut self) {
        let no_events = never();
        loop {
            if !self.paused && matches!(self.waiting, Waiting::None | Waiting::RuntimeDone { .. }) {
                self.send_due();
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
            if self.finish_waiting() {
                return;
            }
        }
    }

    fn handle(&mut self, c: Control) {
        match c {
            Control::Resume {
                request_id,
                deadline,
            } => {
                self.paused = false;
                self.thawed.start();
                self.current_request = Some(request_id);
                self.invoke_deadline = Some(deadline);
                // Connections from before a freeze may be dead; a failure on
                // one is retried at once rather than waiting out a backoff.
                self.retry_after = None;
            }
            Control::Pause {
                runtime_done,
                wait_until,
                flush_deadline,
                reply,
            } => {
                self.waiting = match runtime_done {
                    Some(request_id) => Waiting::RuntimeDone {
                        request_id,
                        until: wait_until,
                        flush_deadline,
                        reply,
                    },
                    None => {
                        self.pause(reply);
                        Waiting::None
                    }
                };
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

    fn pause(&mut self, reply: Sender<()>) {
        self.paused = true;
        self.thawed.stop();
        let _ = reply.send(());
    }

    /// Completes a wait whose condition or time has come. Returns true when
    /// the dispatcher is done (shutdown handled).
    fn finish_waiting(&mut self) -> bool {
        let now = Instant::now();
        match &self.waiting {
            Waiting::None => false,
            Waiting::RuntimeDone {
                request_id, until, ..
            } => {
                let done = self.last_runtime_done.as_deref() == Some(request_id.as_str());
                if !done && now < *until {
                    return false;
                }
                if !done {
                    log::warn!(
                        "no platform.runtimeDone for request {request_id} in time; flushing what is buffered"
                    );
                }
                let Waiting::RuntimeDone {
                    flush_deadline,
                    reply,
                    ..
                } = std::mem::replace(&mut self.waiting, Waiting::None)
                else {
                    unreachable!()
                };
                let deadline = flush_deadline.min(Instant::now() + self.flush_timeout);
                match self.flush {
                    FlushMode::End => self.flush_all(deadline),
                    FlushMode::Batch => self.send_due_until(deadline),
                }
                self.pause(reply);
                false
            }
            Waiting::Shutdown { until, .. } => {
                let last_report_in = match &self.current_request {
                    Some(id) => self.last_report.as_deref() == Some(id.as_str()),
                    None => true,
                };
                if !last_report_in && now < *until {
                    return false;
                }
                let Waiting::Shutdown {
                    deadline, reply, ..
                } = std::mem::replace(&mut self.waiting, Waiting::None)
                else {
                    unreachable!()
                };
                self.flush_all(deadline);
                self.drain_events();
                let left = self.queue.drain();
                if !left.is_empty() {
                    Stats::add(&self.stats.dropped_shutdown, left.len() as u64);
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
            if let (FlushMode::Batch, Some(oldest)) = (self.flush, self.oldest) {
                let due = oldest + self.batch_max_age;
                t = t.min(due.saturating_sub(self.thawed.now()));
            }
        }
        t
    }

    fn ingest(&mut self, events: Vec<Event>) {
        for e in events {
            match e.kind {
                Kind::RuntimeDone => self.last_runtime_done = e.request_id.clone(),
                Kind::Report => self.last_report = e.request_id.clone(),
                _ => {}
            }
            let wanted = match e.kind {
                k if k.is_platform() => self.types.platform,
                Kind::Function => self.types.function,
                Kind::Extension => self.types.extension,
                _ => true,
            };
            if !wanted {
                Stats::add(&self.stats.filtered_events, 1);
                continue;
            }
            let key = self
                .keys
                .key(e.request_id.as_deref(), self.current_request.as_deref());
            if e.json.len() + key.len() <= self.max_record_bytes {
                self.queue.push(Record::new(e.json.into_boxed_bytes(), key));
            } else {
                Stats::add(&self.stats.fragmented_events, 1);
                let rng = &mut self.rng;
                let parts = fit_event(&e.json, key.len(), self.max_record_bytes, || rng.hex(8));
                log::warn!(
                    "an event of {} bytes exceeds KINESIS_TELEMETRY_MAX_RECORD_BYTES ({}); sent as {} fragment records",
                    e.json.len(),
                    self.max_record_bytes,
                    parts.len()
                );
                for p in parts {
                    self.queue.push(Record::new(p, key.clone()));
                }
            }
            if self.oldest.is_none() {
                self.oldest = Some(self.thawed.now());
            }
        }
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

    /// Background sending while thawed: full batches, batches past their
    /// age (batch mode), and anything over the memory cap.
    fn send_due(&mut self) {
        if self.retry_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let deadline = match self.invoke_deadline {
            Some(d) => d.min(Instant::now() + self.flush_timeout),
            None => Instant::now() + self.flush_timeout,
        };
        self.send_due_until(deadline);
    }

    fn send_due_until(&mut self, deadline: Instant) {
        while !self.queue.is_empty() && Instant::now() < deadline {
            let aged = self.flush == FlushMode::Batch
                && self
                    .oldest
                    .is_some_and(|o| self.thawed.now() >= o + self.batch_max_age);
            let due = aged
                || self.queue.has_full_batch(self.limits)
                || self.queue.bytes() >= self.buffer_limit;
            if !due {
                return;
            }
            if let Some(retry) = self.send_one(deadline) {
                self.failed_rounds += 1;
                let wait = self.backoff(retry);
                self.retry_after = Some(Instant::now() + wait);
                return;
            }
        }
    }

    /// Sends everything queued (and whatever arrives meanwhile), retrying
    /// failures with backoff, until the queue is empty, `deadline` comes, or
    /// `max_attempts` rounds in a row failed (then the rest waits for the next
    /// flush).
    fn flush_all(&mut self, deadline: Instant) {
        self.failed_rounds = 0;
        loop {
            self.drain_events();
            if self.queue.is_empty() || Instant::now() >= deadline {
                return;
            }
            if let Some(retry) = self.send_one(deadline) {
                self.failed_rounds += 1;
                if self.failed_rounds >= self.max_attempts {
                    log::warn!(
                        "{} records still unsent after {} attempts (last error: {}); they stay buffered for the next flush",
                        self.queue.len(),
                        self.failed_rounds,
                        self.last_error.as_deref().unwrap_or("none")
                    );
                    self.failed_rounds = 0;
                    return;
                }
                let wait = self.backoff(retry);
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(wait.min(left));
            }
        }
    }

    /// Exponential backoff with full jitter: uniform in [0, min(cap, base·2^n)].
    fn backoff(&mut self, retry: Retry) -> Duration {
        if retry == Retry::Resign {
            return Duration::ZERO;
        }
        let exp = self.failed_rounds.saturating_sub(1).min(20);
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << exp)
            .min(self.backoff_cap);
        Duration::from_micros(self.rng.below_or_eq(ceiling.as_micros() as u64))
    }

    /// Sends one batch from the front of the queue. Records that failed in a
    /// retryable way go back to the front in order; the rest are sent or
    /// counted as lost. Returns how to retry when something is left to retry.
    fn send_one(&mut self, deadline: Instant) -> Option<Retry> {
        self.drain_events();
        let mut batch = self.queue.take_batch(self.limits);
        if batch.is_empty() {
            return None;
        }
        for r in &mut batch {
            r.attempts += 1;
            if r.attempts > 1 {
                Stats::add(&self.stats.records_retried, 1);
            }
        }
        Stats::add(&self.stats.requests, 1);
        let result = self.client.put_records(&batch, deadline);
        let retry = match result {
            Response::Records(codes) => {
                let mut again = Vec::new();
                let mut retry_code = None;
                for (r, code) in batch.into_iter().zip(codes) {
                    match code {
                        None => {
                            Stats::add(&self.stats.records_sent, 1);
                            Stats::add(&self.stats.bytes_sent, r.size() as u64);
                        }
                        Some(c) if record_error_retryable(&c) => {
                            retry_code.get_or_insert(c);
                            again.push(r);
                        }
                        Some(c) => {
                            Stats::add(&self.stats.dropped_rejected, 1);
                            self.report_once(&c, "a record was rejected", "");
                        }
                    }
                }
                let retry = retry_code.map(|c| {
                    log::debug!("{} records failed with {c}; retrying them", again.len());
                    self.last_error = Some(format!("{} records failed with {c}", again.len()));
                    Retry::Throttled
                });
                self.queue.push_front_all(again);
                retry
            }
            Response::Error(e) => {
                Stats::add(&self.stats.request_errors, 1);
                let mut retry = e.retry();
                if matches!(retry, Retry::Resign | Retry::RefreshCredentials) {
                    // Re-signing helps once (clock skew); the env credentials
                    // cannot be refreshed, so a repeat is final.
                    if self.resigned {
                        retry = Retry::Never;
                    }
                    self.resigned = !self.resigned;
                }
                if retry.is_retryable() {
                    self.last_error = Some(e.to_string());
                    log::debug!(
                        "PutRecords failed ({e}); will retry {} records",
                        batch.len()
                    );
                    self.queue.push_front_all(batch);
                    Some(retry)
                } else {
                    Stats::add(&self.stats.dropped_rejected, batch.len() as u64);
                    let what = format!("PutRecords failed, {} records lost", batch.len());
                    self.report_once(&e.code, &what, &format!("{e}; to fix: {}", e.advice()));
                    None
                }
            }
        };
        if self.queue.is_empty() {
            self.oldest = None;
        }
        if retry.is_none() {
            self.resigned = false;
            self.failed_rounds = 0;
            self.retry_after = None;
        }
        retry
    }

    /// Logs a non-retryable failure at error level the first time its code
    /// is seen, at debug level after that (no log storm).
    fn report_once(&mut self, code: &str, what: &str, detail: &str) {
        if self.reported.iter().any(|c| c == code) {
            log::debug!("{what}: {code} {detail}");
        } else {
            self.reported.push(code.to_string());
            log::error!("{what}: {code} {detail} (further {code} errors are counted, not logged)");
        }
    }
}
