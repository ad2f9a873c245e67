//! Counters shared by the listener and the dispatcher: what came in, what
//! went out, what was retried, and what was lost and why. Summarised in one
//! log line at shutdown.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Stats {
    /// Telemetry API POSTs received.
    pub bodies: AtomicU64,
    /// Events split out of them (including markers for unparsed bodies).
    pub events: AtomicU64,
    pub event_bytes: AtomicU64,
    /// Bodies that were not a JSON array (kept as marker records).
    pub unparsed_bodies: AtomicU64,
    /// Bodies over the size limit (counted, contents dropped).
    pub oversized_bodies: AtomicU64,
    pub oversized_bytes: AtomicU64,
    /// Events larger than one record, split into fragments.
    pub fragmented_events: AtomicU64,
    /// Events not forwarded because their type is not configured.
    pub filtered_events: AtomicU64,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    pub records_retried: AtomicU64,
    /// Records lost to an error that retrying cannot fix.
    pub dropped_rejected: AtomicU64,
    /// Records still unsent when the shutdown deadline came.
    pub dropped_shutdown: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// One line with every counter, for the shutdown log.
    pub fn summary(&self) -> String {
        let g = Self::get;
        format!(
            "events received {} ({} bytes in {} bodies), records sent {} ({} bytes, {} requests, {} request errors), retried {}, fragmented {}, unparsed bodies {}, oversized bodies {} ({} bytes), filtered {}, lost: rejected {}, at shutdown {}",
            g(&self.events),
            g(&self.event_bytes),
            g(&self.bodies),
            g(&self.records_sent),
            g(&self.bytes_sent),
            g(&self.requests),
            g(&self.request_errors),
            g(&self.records_retried),
            g(&self.fragmented_events),
            g(&self.unparsed_bodies),
            g(&self.oversized_bodies),
            g(&self.oversized_bytes),
            g(&self.filtered_events),
            g(&self.dropped_rejected),
            g(&self.dropped_shutdown),
        )
    }
}
