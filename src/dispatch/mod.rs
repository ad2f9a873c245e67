//! The dispatcher thread and its parts: when to send (flush), how old the
//! buffer is (age), how to retry (retry), and which failures were logged
//! (report).

pub mod age;
pub mod dispatcher;
pub mod flush;
pub mod invocations;
pub mod report;
pub mod retry;
pub mod send;
