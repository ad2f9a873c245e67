//! Kinesis: the `PutRecords` wire format, the HTTP client that sends it, SigV4
//! signing, where credentials come from, and what the stage is configured
//! with (`settings`).

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod proxy;
pub mod settings;
pub mod sigv4;
pub mod tls;
pub mod wire;
