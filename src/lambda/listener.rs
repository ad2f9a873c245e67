//! The Telemetry API's intake: a whole delivery's body, as the front door
//! (`gate`) read it, split into events and handed to the dispatcher over a
//! channel, on the connection's own thread. No HTTP here: the body's bytes
//! were framed once, by the front door, and are split once, here.
//!
//! Every body taken is answered 200, even one that could not be parsed (a
//! 4xx would only make Lambda redeliver the same bytes): it is forwarded as
//! one `unparsed` record. The answer comes as soon as the events are handed
//! over, whatever the dispatcher is doing (a slow Kinesis request included);
//! only when memory is at its cap (`Backlog`) does it wait, and Lambda
//! buffers, then drops and reports `platform.logsDropped`, instead of this
//! process growing. At the cap while the dispatcher is paused it does not
//! wait (the sandbox may freeze): the delivery is refused (503), so Lambda
//! keeps it and delivers it again, counted as `refusedAtCap`.
//! `ListenerSettings`: its port and body limit.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::Sender;

use crate::dispatch::backlog::{Admission, Backlog};
use crate::lambda::telemetry::{self, Delivery};
use crate::lambda::view::Reading;
use crate::stats::Stats;

/// What the listener is configured with.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// 0 lets the OS pick a free port.
    pub port: u16,
    /// Largest Telemetry API body read.
    pub max_body_bytes: usize,
}

/// Stack of a thread that splits bodies: enough for serde_json's 128-level
/// nesting limit (tested in lambda/telemetry.rs).
pub const READER_STACK: usize = 128 * 1024;

/// What became of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Its events are with the dispatcher (200).
    Queued,
    /// Memory at its cap while the dispatcher is paused: not taken (503),
    /// so Lambda keeps it and delivers it again (`refusedAtCap`).
    Refused,
    /// The dispatcher has finished (shutdown): these came after the final
    /// flush (such as our own last log lines). Not taken, so not 200:
    /// Lambda keeps them, and drops them with the environment (503).
    TooLate,
}

/// Where bodies go.
pub struct Intake {
    pub tx: Sender<Delivery>,
    pub backlog: Arc<Backlog>,
    /// How far each event is read (what the configured stages need).
    pub reading: Reading,
    pub stats: Arc<Stats>,
}

impl Intake {
    /// Splits `body` into events (ranges of it) and hands them over.
    pub fn take(&self, body: Vec<u8>) -> Taken {
        let received = Instant::now();
        let stats = &self.stats;
        let body = Arc::new(body);
        let events = telemetry::split_body(&body, self.reading).unwrap_or_else(|e| {
            stats.unparsed_bodies.add(1);
            log::warn!(
                "telemetry listener: {e}; forwarding the {} bytes as one {} record",
                body.len(),
                telemetry::UNPARSED_TYPE
            );
            vec![telemetry::unparsed(&body, &e.0, SystemTime::now())]
        });
        let n = events.len() as u64;
        let body_bytes = body.len();
        // Waits only while memory is at its cap (see `Backlog`). A refused
        // delivery comes again: counted as received only when taken.
        if n > 0 && self.backlog.admit(body_bytes, events.len()) == Admission::Refused {
            self.refused_at_cap(events.len(), body_bytes);
            return Taken::Refused;
        }
        stats.bodies.add(1);
        stats.events.add(n);
        stats
            .event_bytes
            .add(events.iter().map(|e| e.json.len() as u64).sum());
        if n == 0 {
            return Taken::Queued;
        }
        let delivery = Delivery {
            received,
            events,
            body_bytes,
        };
        if self.tx.send(delivery).is_err() {
            log::debug!(
                "telemetry listener: {n} events arrived after the final flush; answered 503"
            );
            return Taken::TooLate;
        }
        Taken::Queued
    }

    /// A delivery refused at the memory cap while the dispatcher is paused
    /// (Lambda delivers it again): counted, logged once.
    fn refused_at_cap(&self, events: usize, body_bytes: usize) {
        let stats = &self.stats;
        if stats.refused_at_cap.get() == 0 {
            log::warn!(
                "memory at KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES while no request may be sent (the environment may freeze): a delivery of {events} events ({body_bytes} bytes) refused with 503, Lambda keeps it and delivers it again after the thaw (if its own buffer overflows it drops and says so: lambdaDroppedRecords); the sink is slower than the function logs: raise the limit or the stream's capacity; totals in refusedAtCap"
            );
        }
        stats.refused_at_cap.add(1);
    }
}
