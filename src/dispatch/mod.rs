//! The dispatcher thread and its policies: when to send (flush), and how to
//! retry.

pub mod dispatcher;
pub mod flush;
pub mod retry;
