//! The Lambda side: the Extensions API (lifecycle), and the Telemetry API's
//! destination, from the port it listens on to the events it hands the
//! dispatcher.

pub mod extensions_api;
pub mod gate;
pub mod hosts;
pub mod listener;
pub mod local_http;
pub mod model;
pub mod request_head;
pub mod telemetry;
pub mod view;
