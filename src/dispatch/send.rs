//! One request at a time: takes a request's worth of records from the
//! queue, sends it through the client, settles each record (stored, to
//! resend, lost) and, with the retrier, decides what comes next. Counts and
//! logs what happened. `SendSettings`: retries, request limits, record format.

use std::sync::Arc;
use std::time::Instant;

use crate::dispatch::report::Reported;
use crate::dispatch::retry::{GaveUp, Next, Policy, Retrier, Round};
use crate::kinesis::client::{PutOutcome, PutRecords};
use crate::kinesis::error::{Cause, Failure, Retry};
use crate::kinesis::wire::{settle, RecordCodes};
use crate::records::format::{self, cwlogs, Format, Packer, Wire};
use crate::records::queue::{Queue, Record, RequestLimits};
use crate::rng::Rng;
use crate::stats::Stats;

/// What sending is configured with: retries, request size, record format.
#[derive(Debug, Clone)]
pub struct SendSettings {
    pub retry: Policy,
    /// The most one request carries (`request_limits`).
    pub limits: RequestLimits,
    pub format: Format,
    /// The names `cwlogs` records carry.
    pub cwlogs: cwlogs::Names,
    pub max_record_bytes: usize,
    pub hash_key: HashKeyMode,
}

/// Explicit hash keys (`KINESIS_TELEMETRY_HASH_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKeyMode {
    /// Kinesis hashes the partition key.
    None,
    /// A random 128-bit hash key per record: an even spread over shards.
    Random,
}

/// The sending side of the dispatcher.
pub struct Requests<C> {
    client: C,
    retrier: Retrier,
    reported: Reported,
    stats: Arc<Stats>,
    limits: RequestLimits,
    format: Packer,
    max_record_bytes: usize,
    random_hash_keys: bool,
    /// Random explicit hash keys.
    rng: Rng,
    /// The last retryable failure, for the logs when retries run out.
    last_error: Option<String>,
    /// Why records are parked (`None`: they are not).
    parked: Option<Cause>,
}

impl<C: PutRecords> Requests<C> {
    /// `format`: the packer for `cfg.format` (see `Format::packer`).
    pub fn new(
        cfg: &SendSettings,
        format: Packer,
        client: C,
        stats: Arc<Stats>,
        mut rng: Rng,
    ) -> Requests<C> {
        Requests {
            client,
            retrier: Retrier::new(cfg.retry, Rng::seeded(rng.next_u64())),
            reported: Reported::default(),
            stats,
            limits: cfg.limits,
            format,
            max_record_bytes: cfg.max_record_bytes,
            random_hash_keys: cfg.hash_key == HashKeyMode::Random,
            rng,
            last_error: None,
            parked: None,
        }
    }

    /// Fetches what the first request needs (credentials) ahead of it.
    pub fn warm_up(&mut self) {
        if let Err(f) = self.client.warm_up() {
            let detail = format!("{}; retrying later", f.message());
            self.reported.error(f.code(), "cannot send yet", &detail);
        }
    }

    /// The retry state (thaws, flushes, holds).
    pub fn retrier(&mut self) -> &mut Retrier {
        &mut self.retrier
    }

    /// When background sending may start again (`None`: now).
    pub fn held_until(&self) -> Option<Instant> {
        self.retrier.held_until()
    }

    /// Whether `queue` holds a full request.
    pub fn full_request(&self, queue: &Queue) -> bool {
        queue.has_full_batch(self.limits)
    }

    /// What comes after `round` (see `Retrier::after`); says why when
    /// retrying stops. `queued`: records still buffered, for the log.
    pub fn next(&mut self, round: Round, final_flush: bool, queued: usize) -> Next {
        let next = self.retrier.after(round, final_flush);
        let last = self.last_error();
        match next {
            Next::GiveUp(GaveUp::Attempts(n)) => log::warn!(
                "{queued} records still unsent after {n} attempts (last error: {last}); they stay buffered for the next flush",
            ),
            Next::GiveUp(GaveUp::Budget) => {
                self.stats.retries_denied.add(1);
                log::warn!(
                    "retry budget spent (the endpoint keeps failing: {last}); {queued} records wait for the next flush",
                );
            }
            _ => {}
        }
        next
    }

    /// The last retryable failure, for the logs.
    pub fn last_error(&self) -> &str {
        self.last_error.as_deref().unwrap_or("none")
    }

    /// Sends one request's worth from the front of `queue`. Records that
    /// failed in a retryable way go back to the front in order; the rest are
    /// sent or counted as lost.
    pub fn send_one(&mut self, queue: &mut Queue, deadline: Instant) -> Round {
        let wires = self.take_request(queue);
        if wires.is_empty() {
            return Round::Done;
        }
        match self.client.put_records(&wires, deadline) {
            PutOutcome::Answered(codes) => {
                self.stats.requests.add(1);
                self.answered(queue, wires, codes)
            }
            PutOutcome::NotSent(f) => self.failed(queue, wires, f, Sent::No),
            PutOutcome::Failed(f) => self.failed(queue, wires, f, Sent::Yes),
            PutOutcome::MaybeDelivered(f) => self.failed(queue, wires, f, Sent::Maybe),
        }
    }

    /// Takes the next request's records from the queue and counts their
    /// attempts.
    fn take_request(&mut self, queue: &mut Queue) -> Vec<Wire> {
        let mut wires = format::take(queue, self.limits, &self.format, self.max_record_bytes);
        for w in &mut wires {
            if self.random_hash_keys {
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
        wires
    }

    /// Kinesis answered 200: counts what was stored and rejected, and puts
    /// what it asks to resend back at the front of the queue.
    fn answered(&mut self, queue: &mut Queue, wires: Vec<Wire>, codes: RecordCodes) -> Round {
        self.retrier.answered();
        if let Some(cause) = self.parked.take() {
            log::info!(
                "Kinesis accepts requests again ({cause:?} resolved): sending the {} parked records",
                queue.len() + wires.len()
            );
        }
        let settled = settle(wires, codes);
        self.stats.kinesis_records.add(settled.stored as u64);
        self.stats.bytes_sent.add(settled.stored_bytes as u64);
        self.stats.records_sent.add(settled.stored_members as u64);
        for (code, members) in &settled.rejected {
            self.stats.dropped_rejected.add(*members as u64);
            self.reported.error(code, "a record was rejected", "");
        }
        let resend = settled.resend.len();
        queue.push_front_all(settled.resend);
        match settled.retry_code {
            None => Round::Done,
            Some(c) => {
                log::debug!("{resend} records failed with {c}; retrying them");
                self.last_error = Some(format!("{resend} records failed with {c}"));
                Round::Failed {
                    retry: Retry::Throttled,
                    progress: settled.stored > 0,
                    blocked: false,
                }
            }
        }
    }

    /// The request failed as a whole: its records go back to the front of
    /// the queue to be retried, or are counted as lost.
    fn failed(&mut self, queue: &mut Queue, wires: Vec<Wire>, f: Failure, sent: Sent) -> Round {
        if sent != Sent::No {
            self.stats.requests.add(1);
            self.stats.request_errors.add(1);
        }
        let members: Vec<Record> = wires.into_iter().flat_map(|w| w.members).collect();
        let retry = self.retry_for(&f);
        if !retry.is_retryable() {
            self.stats.dropped_rejected.add(members.len() as u64);
            let what = format!("PutRecords failed, {} records lost", members.len());
            let detail = format!("{f}; to fix: {}", f.advice());
            self.reported.error(f.code(), &what, &detail);
            return Round::Done;
        }
        if retry == Retry::Park {
            self.park(&f, members.len());
        } else if sent == Sent::No {
            // Nothing went out (no credentials): retrying now cannot help;
            // the next flush tries again.
            self.reported
                .error(f.code(), "cannot send yet", f.message());
        }
        self.last_error = Some(f.to_string());
        log::debug!(
            "PutRecords failed ({f}); will retry {} records",
            members.len()
        );
        if sent == Sent::Maybe {
            self.stats.duplicate_risk.add(members.len() as u64);
        }
        queue.push_front_all(members);
        Round::Failed {
            retry,
            progress: false,
            blocked: sent == Sent::No,
        }
    }

    /// Records stay buffered behind a refusal an operator can fix: says so
    /// once per code, with what to do.
    fn park(&mut self, f: &Failure, records: usize) {
        self.stats.parked_requests.add(1);
        if self.parked.is_none() {
            log::debug!("parking {records} records behind {f}");
        }
        self.parked = Cause::of(f.code()).or(Some(Cause::Credentials));
        let what = match f {
            Failure::AssumeRole(_) => {
                "AssumeRole refused; records are kept and sent once a probe request is accepted"
            }
            _ => "PutRecords refused; records are kept and sent once a probe request is accepted",
        };
        let detail = format!("{f}; to fix: {}", f.advice());
        self.reported.error(f.code(), what, &detail);
    }

    /// SHUTDOWN's deadline came with `left` unsent: counted under the cause
    /// that parked them, or as `droppedShutdown`, and logged once.
    pub fn lost_at_shutdown(&self, left: &[Record]) {
        if left.is_empty() {
            return;
        }
        let bytes: usize = left.iter().map(Record::size).sum();
        let last = self.last_error();
        let Some(cause) = self.parked else {
            self.stats.dropped_shutdown.add(left.len() as u64);
            return log::error!(
                "shutdown deadline: {} records ({bytes} bytes) could not be delivered in time and are lost (last error: {last})",
                left.len()
            );
        };
        let s = &self.stats;
        let counter = match cause {
            Cause::AccessDenied => &s.dropped_access_denied,
            Cause::StreamNotFound => &s.dropped_stream_not_found,
            Cause::Kms => &s.dropped_kms,
            Cause::Credentials => &s.dropped_credentials,
            Cause::Signature => &s.dropped_signature,
        };
        counter.add(left.len() as u64);
        log::error!(
            "shutdown: {} parked records ({bytes} bytes) are lost: Kinesis still refused them ({cause:?}; last error: {last})",
            left.len()
        );
    }

    /// Whether sending may start now: not parked, or a probe is due.
    pub fn probe_due(&self) -> bool {
        self.retrier.probe_due()
    }

    /// How to treat a whole-request failure. Signature refusals are re-signed
    /// once (clock skew), expired credentials refreshed when they come from
    /// an endpoint; a second refusal in a row, or one while parked, parks.
    fn retry_for(&mut self, f: &Failure) -> Retry {
        let retry = f.retry();
        if !matches!(retry, Retry::Resign | Retry::RefreshCredentials) {
            return retry;
        }
        if self.retrier.parked() {
            return Retry::Park; // one request per probe interval
        }
        if retry == Retry::RefreshCredentials && self.client.refresh_credentials() {
            let by = match f {
                Failure::AssumeRole(_) => "STS",
                _ => "Kinesis",
            };
            log::info!("{by} answered {}: fetching new credentials", f.code());
            return retry;
        }
        if self.retrier.refused_again() {
            return Retry::Park;
        }
        retry
    }
}

/// Whether a failed request went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// No: nothing left this process.
    No,
    /// Yes, and it did not store anything.
    Yes,
    /// Yes, and it may have stored everything (a resend risks duplicates).
    Maybe,
}

/// The most one request carries: the configured request limits, and a
/// quarter of the memory cap `buffer_cap`.
pub fn request_limits(
    max_records: usize,
    max_bytes: usize,
    buffer_cap: usize,
    max_record_bytes: usize,
) -> RequestLimits {
    RequestLimits {
        max_records,
        // A request in flight is held twice (records + base64 body) on top
        // of the buffer: keep it to a quarter of the buffer cap, so memory
        // stays near the cap (never below one record).
        max_bytes: max_bytes.min((buffer_cap / 4).max(max_record_bytes)),
    }
}
