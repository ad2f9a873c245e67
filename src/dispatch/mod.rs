//! The dispatcher thread and its parts: when to send (flush), how old the
//! buffer is (age), when to wake (timers), the memory cap shared with the
//! listener (backlog), how to retry (retry), which failures were logged
//! (report), and the extension's own metrics (metrics, emf).

pub mod age;
pub mod backlog;
pub mod buffer;
pub mod control;
pub mod dispatcher;
pub mod emf;
pub mod flush;
pub mod invocations;
pub mod metrics;
pub mod report;
pub mod retry;
pub mod sampling;
pub mod send;
pub mod timers;
