//! The orders the main thread gives the dispatcher (one message per
//! lifecycle event: each handover between the threads is a wake-up paid on
//! every invoke), and the waits they start, which end when an event arrives
//! or a time passes.

use std::time::Instant;

use crossbeam_channel::Sender;

use crate::dispatch::flush::EndOfInvoke;

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
pub enum Waiting {
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
