//! Kinesis: the `PutRecords` wire format, the HTTP client that sends it, SigV4
//! signing, where credentials come from (and the role assumed for another
//! account's stream, `sts`), and what the stage is configured
//! with (`settings`).

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod proxy;
pub mod settings;
pub mod sigv4;
pub mod sts;
pub mod tls;
pub mod wire;
