//! Log set-up: `env_logger` writing to stderr, which Lambda captures into the
//! function's log stream (and the Telemetry API's `extension` stream).
//!
//! Level: `RUST_LOG` when set (env_logger's syntax, e.g. `debug` for
//! everything or `kinesis_telemetry_extension=debug` for ours), else
//! `AWS_LAMBDA_LOG_LEVEL` (Lambda's advanced logging controls) for the
//! extension's own messages, else info.

use std::io::Write;

use log::LevelFilter;

use crate::config;

pub fn init(name: &str) {
    let mut builder = env_logger::Builder::new();
    // Lambda's level applies to this extension's own messages; the HTTP
    // libraries stay at WARN at most (their DEBUG output is per request).
    let lambda = std::env::var(config::AWS_LAMBDA_LOG_LEVEL.var).ok();
    let level = lambda_level(lambda.as_deref());
    builder.filter_level(level.min(LevelFilter::Warn));
    builder.filter_module(env!("CARGO_CRATE_NAME"), level);
    if let Ok(spec) = std::env::var(config::RUST_LOG.var) {
        builder.parse_filters(&spec);
    }
    let prefix = format!("[{name}]");
    builder
        .format(move |buf, record| writeln!(buf, "{prefix} {} {}", record.level(), record.args()));
    builder.target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}

/// Maps Lambda's log levels to ours.
fn lambda_level(v: Option<&str>) -> LevelFilter {
    match v.map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        Some("TRACE") => LevelFilter::Trace,
        Some("DEBUG") => LevelFilter::Debug,
        Some("WARN") => LevelFilter::Warn,
        Some("ERROR" | "FATAL") => LevelFilter::Error,
        _ => LevelFilter::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_levels() {
        assert_eq!(lambda_level(Some("debug")), LevelFilter::Debug);
        assert_eq!(lambda_level(Some("FATAL")), LevelFilter::Error);
        assert_eq!(lambda_level(Some("WARN")), LevelFilter::Warn);
        assert_eq!(lambda_level(None), LevelFilter::Info);
        assert_eq!(lambda_level(Some("nonsense")), LevelFilter::Info);
    }
}
