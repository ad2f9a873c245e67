//! Log set-up: `env_logger` writing to stderr, which Lambda captures into the
//! function's log stream (and the Telemetry API's `extension` stream).
//! (stdout carries only the EMF lines, `dispatch::emf`.)
//!
//! Level: `RUST_LOG` when set (env_logger's syntax, e.g. `debug` for
//! everything or `kinesis_telemetry_extension=debug` for ours), else
//! `AWS_LAMBDA_LOG_LEVEL` (Lambda's advanced logging controls) for the
//! extension's own messages, else info.
//!
//! Format: `[name] LEVEL message`, or with `AWS_LAMBDA_LOG_FORMAT=JSON` one
//! JSON object per line (`timestamp`, `level`, `message`, `extension`), so
//! the function's log-level filtering and CloudWatch queries work on them.

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
    if json_format(
        std::env::var(config::AWS_LAMBDA_LOG_FORMAT.var)
            .ok()
            .as_deref(),
    ) {
        let name = name.to_string();
        builder.format(move |buf, record| {
            let line = json_line(
                std::time::SystemTime::now(),
                record.level(),
                &record.args().to_string(),
                &name,
            );
            writeln!(buf, "{line}")
        });
    } else {
        let prefix = format!("[{name}]");
        builder.format(move |buf, record| {
            writeln!(buf, "{prefix} {} {}", record.level(), record.args())
        });
    }
    builder.target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}

/// Whether Lambda's log format is JSON (`AWS_LAMBDA_LOG_FORMAT`).
fn json_format(v: Option<&str>) -> bool {
    v.is_some_and(|f| f.trim().eq_ignore_ascii_case("JSON"))
}

/// One log line as Lambda's JSON log format has it.
fn json_line(at: std::time::SystemTime, level: log::Level, message: &str, name: &str) -> String {
    let mut s = String::with_capacity(message.len() + name.len() + 80);
    s.push_str("{\"timestamp\":\"");
    s.push_str(&crate::time::rfc3339(at));
    s.push_str("\",\"level\":\"");
    s.push_str(level.as_str());
    s.push_str("\",\"message\":");
    crate::json::push_string(&mut s, message);
    s.push_str(",\"extension\":");
    crate::json::push_string(&mut s, name);
    s.push('}');
    s
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

    #[test]
    fn json_lines_are_json_with_the_level() {
        assert!(json_format(Some("JSON")) && json_format(Some(" json ")));
        assert!(!json_format(Some("Text")) && !json_format(None));
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let line = json_line(at, log::Level::Warn, "a \"quoted\"\nline", "ext");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert_eq!(v["extension"], "ext");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
    }
}
