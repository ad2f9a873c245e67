//! The extension's own health as CloudWatch metrics
//! (`KINESIS_TELEMETRY_EMF`): one line in CloudWatch's Embedded Metric
//! Format on stdout each time the metrics record is written (see
//! `metrics`). Lambda sends the extension's stdout to the function's log
//! group, where CloudWatch Logs turns the line into metrics: no API call,
//! no permission, no connection.
//!
//! What the line holds (docs/record-formats.md, "The extension's own
//! records"): the counters an operator alerts on, each as its increase
//! since the previous line (so CloudWatch's Sum over any period is the
//! count in that period, across environments), and the post-runtime time
//! of the invokes since then (median and maximum). Dimensions: the function
//! name, and with `KINESIS_TELEMETRY_EMF_VERSION_DIMENSION` also the
//! function name with the version.
//!
//! The line also reaches the Telemetry API as an `extension` event; the
//! shaper recognises it by `EMF_TYPE` and does not forward it
//! (`ownEmfLines`): the stream already has the same figures in the metrics
//! record, and a forwarded line would keep the periodic record due forever
//! on an idle environment (each line an event that calls for the next).

use std::fmt::Write;

/// `type` of the EMF line, and how the shaper recognises it among
/// `extension` events.
pub const EMF_TYPE: &str = "kinesis-telemetry-extension.emf";

/// Counters in the line (the metrics record's names), unit Count.
pub const COUNTS: [&str; 14] = [
    "eventsReceived",
    "recordsSent",
    "droppedRejected",
    "droppedShutdown",
    "refusedAtCap",
    "parkedRequests",
    "droppedAccessDenied",
    "droppedStreamNotFound",
    "droppedKms",
    "droppedCredentials",
    "droppedSignature",
    "duplicateRisk",
    "lambdaDroppedRecords",
    "sampledOutLines",
];

/// The sum of the per-rule redaction counters, when redaction is on.
pub const REDACTIONS: &str = "redactions";

/// Post-runtime time of the interval's invokes, unit Milliseconds (the
/// metrics record has them under the same names).
pub const POST_RUNTIME_MEDIAN: &str = "postRuntimeMedianMs";
pub const POST_RUNTIME_MAX: &str = "postRuntimeMaxMs";

/// Dimension names (PascalCase, as Lambda's own metrics name theirs; the
/// metrics are camelCase, so none can be taken for the other).
const FUNCTION_NAME: &str = "FunctionName";
const FUNCTION_VERSION: &str = "FunctionVersion";

/// Configuration (`KINESIS_TELEMETRY_EMF*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Write the line (`KINESIS_TELEMETRY_EMF`).
    pub on: bool,
    pub namespace: String,
    /// Also the dimension set (function name, version).
    pub version_dimension: bool,
}

/// Why `namespace` is not a CloudWatch namespace (`None`: it is one).
/// CloudWatch's rules: 1–255 of letters, digits, `.`, `-`, `_`, `/`, `#`,
/// `:` and space, not only spaces, not starting with `:` or `AWS/`.
pub fn namespace_problem(namespace: &str) -> Option<&'static str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    if namespace.is_empty() || namespace.len() > 255 {
        Some("1 to 255 characters")
    } else if !namespace.chars().all(ok) {
        Some("letters, digits, `.`, `-`, `_`, `/`, `#`, `:` and spaces only")
    } else if namespace.trim().is_empty() {
        Some("not only spaces")
    } else if namespace.starts_with("AWS/") || namespace.starts_with(':') {
        Some("not starting with `AWS/` (reserved for AWS) or `:`")
    } else {
        None
    }
}

/// Post-runtime time of an interval's invokes, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostRuntime {
    pub median: f64,
    pub max: f64,
}

/// What one line says: the identity, and the interval's figures.
pub struct Line<'a> {
    pub settings: &'a Settings,
    pub function_name: &'a str,
    pub function_version: &'a str,
    pub environment: &'a str,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub final_: bool,
    /// `(name, increase since the previous line)`, unit Count.
    pub counts: &'a [(&'a str, u64)],
    /// `None`: no invoke ended in the interval (or Managed Instances).
    pub post_runtime: Option<PostRuntime>,
}

impl Line<'_> {
    /// The line (JSON, no newline).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(1400);
        let _ = write!(s, "{{\"_aws\":{{\"Timestamp\":{},", self.timestamp_ms);
        s.push_str("\"CloudWatchMetrics\":[{\"Namespace\":");
        crate::json::push_string(&mut s, &self.settings.namespace);
        let _ = write!(s, ",\"Dimensions\":[[\"{FUNCTION_NAME}\"]");
        if self.settings.version_dimension {
            let _ = write!(s, ",[\"{FUNCTION_NAME}\",\"{FUNCTION_VERSION}\"]");
        }
        s.push_str("],\"Metrics\":[");
        let ms = self
            .post_runtime
            .iter()
            .flat_map(|_| [POST_RUNTIME_MEDIAN, POST_RUNTIME_MAX].map(|n| (n, "Milliseconds")));
        let counts = self.counts.iter().map(|(n, _)| (*n, "Count"));
        for (i, (name, unit)) in counts.chain(ms).enumerate() {
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(s, "{comma}{{\"Name\":\"{name}\",\"Unit\":\"{unit}\"}}");
        }
        s.push_str("]}]},");
        // The dimensions' values, what marks the line as ours, the rest.
        let _ = write!(s, "\"{FUNCTION_NAME}\":");
        crate::json::push_string(&mut s, self.function_name);
        if self.settings.version_dimension {
            let _ = write!(s, ",\"{FUNCTION_VERSION}\":");
            crate::json::push_string(&mut s, self.function_version);
        }
        let _ = write!(s, ",\"type\":\"{EMF_TYPE}\",\"environmentId\":");
        crate::json::push_string(&mut s, self.environment);
        let _ = write!(s, ",\"final\":{}", self.final_);
        for (name, v) in self.counts {
            let _ = write!(s, ",\"{name}\":{v}");
        }
        if let Some(p) = self.post_runtime {
            // (serde_json's float writer: already linked, unlike `{}`'s)
            let ms = |v: f64| serde_json::Value::from(v).to_string();
            let _ = write!(s, ",\"{POST_RUNTIME_MEDIAN}\":{}", ms(p.median));
            let _ = write!(s, ",\"{POST_RUNTIME_MAX}\":{}", ms(p.max));
        }
        s.push('}');
        s
    }
}

/// The counts of the next line: each of `COUNTS` (and `redactions` when
/// on) read from `snapshot`, less its value at the previous line
/// (`last`, updated).
pub fn increases(
    snapshot: &[(&'static str, u64)],
    redactions: Option<u64>,
    last: &mut Vec<u64>,
) -> Vec<(&'static str, u64)> {
    let value = |name: &str| snapshot.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let now: Vec<(&'static str, u64)> = COUNTS
        .iter()
        .map(|n| (*n, value(n).unwrap_or(0)))
        .chain(redactions.map(|r| (REDACTIONS, r)))
        .collect();
    last.resize(now.len(), 0);
    let out = now
        .iter()
        .zip(last.iter())
        .map(|((n, v), before)| (*n, v.saturating_sub(*before)))
        .collect();
    *last = now.iter().map(|(_, v)| *v).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(version_dimension: bool) -> Settings {
        Settings {
            on: true,
            namespace: "Ns".into(),
            version_dimension,
        }
    }

    #[test]
    fn the_line_declares_every_metric_it_carries() {
        let s = settings(true);
        let line = Line {
            settings: &s,
            function_name: "fn \"x\"",
            function_version: "$LATEST",
            environment: "env1",
            timestamp_ms: 1_700_000_000_123,
            final_: false,
            counts: &[("recordsSent", 7), ("droppedShutdown", 0)],
            post_runtime: Some(PostRuntime {
                median: 1.5,
                max: 12.0,
            }),
        }
        .render();
        assert!(line.starts_with(r#"{"_aws":{"Timestamp":1700000000123,"#));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let d = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(d["Namespace"], "Ns");
        assert_eq!(
            d["Dimensions"],
            serde_json::json!([["FunctionName"], ["FunctionName", "FunctionVersion"]])
        );
        assert_eq!(v["FunctionName"], "fn \"x\"");
        assert_eq!(v["FunctionVersion"], "$LATEST");
        assert_eq!(v["type"], EMF_TYPE);
        for m in d["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(v[name].is_number(), "{name} declared, not present");
        }
        assert_eq!(d["Metrics"].as_array().unwrap().len(), 4);
        assert_eq!(v["recordsSent"], 7);
        assert_eq!(v[POST_RUNTIME_MAX], 12.0);
        assert_eq!(d["Metrics"][3]["Unit"], "Milliseconds");
        assert_eq!(d["Metrics"][0]["Unit"], "Count");

        // Without the version dimension or post-runtime figures: neither.
        let s = settings(false);
        let line = Line {
            settings: &s,
            function_name: "f",
            function_version: "1",
            environment: "e",
            timestamp_ms: 1,
            final_: true,
            counts: &[("recordsSent", 1)],
            post_runtime: None,
        }
        .render();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let d = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(d["Dimensions"], serde_json::json!([["FunctionName"]]));
        assert!(v.get("FunctionVersion").is_none() && v.get(POST_RUNTIME_MAX).is_none());
        assert_eq!(d["Metrics"].as_array().unwrap().len(), 1);
        assert_eq!(v["final"], true);
    }

    #[test]
    fn counts_are_increases_since_the_last_line() {
        let mut last = Vec::new();
        let snap = |sent: u64| vec![("recordsSent", sent), ("bodies", 99)];
        let first = increases(&snap(5), None, &mut last);
        assert_eq!(first.len(), COUNTS.len());
        assert!(first.contains(&("recordsSent", 5)));
        assert!(first.contains(&("eventsReceived", 0)), "absent: 0");
        let second = increases(&snap(8), Some(3), &mut last);
        assert!(second.contains(&("recordsSent", 3)));
        assert_eq!(second.last(), Some(&(REDACTIONS, 3)));
        let third = increases(&snap(8), Some(4), &mut last);
        assert!(third.contains(&("recordsSent", 0)) && third.contains(&(REDACTIONS, 1)));
    }

    #[test]
    fn namespaces_follow_cloudwatch_rules() {
        for ok in ["KinesisTelemetryExtension", "team/app-1", "a b#c:d_e.f"] {
            assert_eq!(namespace_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "AWS/Lambda",
            ":x",
            "   ",
            "ümlaut",
            "a\"b",
            &"x".repeat(256),
        ] {
            assert!(namespace_problem(bad).is_some(), "{bad}");
        }
    }
}
