//! From events to Kinesis records: shaping (filters, enrichment, partition
//! keys, fragments), the queue of records waiting to be sent, and the record
//! formats a request is packed in.

pub mod format;
pub mod partition;
pub mod prefilter;
pub mod queue;
pub mod redact;
pub mod sample;
pub mod shape;
pub mod trace;
