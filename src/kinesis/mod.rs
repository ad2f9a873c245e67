//! Kinesis: the `PutRecords` wire format, the HTTP client that sends it, SigV4
//! signing and where credentials come from.

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod sigv4;
pub mod tls;
pub mod wire;
