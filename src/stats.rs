//! Counters shared by the listener and the dispatcher: what came in, what
//! went out, what was retried, and what was lost and why. Summarised in one
//! log line at shutdown and written to the stream as a
//! `kinesis-telemetry-extension.metrics` event (see docs/record-formats.md,
//! "The extension's own records").

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Event type of the extension's own metrics records.
pub const METRICS_TYPE: &str = "kinesis-telemetry-extension.metrics";

/// One counter, shared between threads: `stats.records_sent.add(n)`.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $field:ident => $json:literal ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $field: Counter, )*
            /// Redactions per rule, when redaction is on (`redactions`).
            pub redactions: std::sync::OnceLock<Vec<(String, Counter)>>,
            /// The dispatcher's timed wake-ups (not in the metrics record:
            /// the tests count them across idle spells).
            pub wakeups: Counter,
        }

        impl Stats {
            /// `(camelCase name, value)` of every counter, in a fixed order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![ $( ($json, self.$field.get()), )* ]
            }
        }
    };
}

counters! {
    /// Telemetry API POSTs received.
    bodies => "bodies",
    /// Events split out of them (including markers for unparsed bodies).
    events => "eventsReceived",
    event_bytes => "eventBytes",
    /// Bodies that were not a JSON array (kept as marker records).
    unparsed_bodies => "unparsedBodies",
    /// Bodies over the size limit (counted, contents dropped).
    oversized_bodies => "oversizedBodies",
    oversized_bytes => "oversizedBytes",
    /// Requests refused at the listener: not `POST /`, malformed, a head too large.
    refused_requests => "refusedRequests",
    /// Connections and requests shed at the listener's limits (connections
    /// open at once, body bytes being read at once).
    shed_connections => "shedConnections",
    /// Requests that did not arrive whole in time (slow or stalled clients).
    stalled_requests => "stalledRequests",
    /// Failed accepts (such as running out of file descriptors).
    accept_errors => "acceptErrors",
    /// Events larger than one record, split into fragments.
    fragmented_events => "fragmentedEvents",
    /// Events not forwarded because their type is not configured.
    filtered_events => "filteredEvents",
    /// Telemetry records (events, fragments, markers) acknowledged by Kinesis.
    records_sent => "recordsSent",
    /// Kinesis records they travelled in (fewer with kpl / ndjson-gzip).
    kinesis_records => "kinesisRecords",
    bytes_sent => "bytesSent",
    requests => "requests",
    request_errors => "requestErrors",
    records_retried => "recordsRetried",
    /// Records resent after a failure that may have reached Kinesis anyway
    /// (reset or timeout after sending): possible duplicates.
    duplicate_risk => "duplicateRisk",
    /// Retries not made because the retry budget was spent.
    retries_denied => "retriesDenied",
    /// Records lost to an error that retrying cannot fix.
    dropped_rejected => "droppedRejected",
    /// Records still unsent when the shutdown deadline came.
    dropped_shutdown => "droppedShutdown",
    /// Deliveries the listener refused (503; Lambda delivers them again):
    /// memory at its cap while the dispatcher was paused (it may not send,
    /// nor the listener wait across a freeze).
    refused_at_cap => "refusedAtCap",
    /// Records kept (parked) while Kinesis refused every request for a cause
    /// an operator can fix, still refused at SHUTDOWN: one counter per cause.
    parked_requests => "parkedRequests",
    dropped_access_denied => "droppedAccessDenied",
    dropped_stream_not_found => "droppedStreamNotFound",
    dropped_kms => "droppedKms",
    dropped_credentials => "droppedCredentials",
    dropped_signature => "droppedSignature",
    /// Sampling (`KINESIS_TELEMETRY_SAMPLE_SUCCESS`): log lines of successful
    /// invocations not forwarded, their size as records, and invocations.
    sampled_out_lines => "sampledOutLines",
    sampled_out_bytes => "sampledOutBytes",
    sampled_out_invocations => "sampledOutInvocations",
    /// Invocations the hash would have sampled out, kept because they failed.
    kept_failed => "invocationsKeptFailed",
    /// Held invocations forwarded without an outcome (hold time, buffer cap,
    /// SHUTDOWN, or an outcome without a status).
    forwarded_undecided => "invocationsForwardedUndecided",
    /// What Lambda reported dropping before it reached us (`platform.logsDropped`).
    lambda_dropped_records => "lambdaDroppedRecords",
    lambda_dropped_bytes => "lambdaDroppedBytes",
    /// The extension's own EMF lines (`KINESIS_TELEMETRY_EMF`) that came
    /// back as `extension` events: not forwarded (see `dispatch::emf`).
    own_emf_lines => "ownEmfLines",
}

impl Stats {
    /// One line with every counter, for the shutdown log.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .snapshot()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for (rule, c) in self.redactions.get().into_iter().flatten() {
            parts.push(format!("redactions.{rule}={}", c.get()));
        }
        parts.join(" ")
    }

    /// Events received, less the extension's own EMF lines among them:
    /// what makes the periodic metrics record due (an EMF line must not
    /// call for the next one).
    pub fn events_not_own(&self) -> u64 {
        // (own lines are counted after the events they are part of)
        let own = self.own_emf_lines.get();
        self.events.get().saturating_sub(own)
    }

    /// The metrics event: `{"time","type","record":{...counters}}`, of the
    /// counters' `snapshot`, with `extra` figures (post-runtime time).
    pub fn metrics_event(
        &self,
        time: &str,
        final_: bool,
        context: &[(&str, &str)],
        snapshot: &[(&'static str, u64)],
        extra: &[(&str, f64)],
    ) -> String {
        let mut record = serde_json::Map::new();
        record.insert("final".into(), final_.into());
        for (k, v) in context {
            record.insert((*k).into(), (*v).into());
        }
        for (k, v) in snapshot {
            record.insert((*k).into(), (*v).into());
        }
        for (k, v) in extra {
            record.insert((*k).into(), (*v).into());
        }
        if let Some(rules) = self.redactions.get() {
            let per_rule: serde_json::Map<String, serde_json::Value> = rules
                .iter()
                .map(|(rule, c)| (rule.clone(), c.get().into()))
                .collect();
            record.insert("redactions".into(), per_rule.into());
        }
        // Envelope fields first, in the order Lambda's events use.
        format!(
            "{{\"time\":{},\"type\":\"{METRICS_TYPE}\",\"record\":{}}}",
            serde_json::Value::from(time),
            serde_json::Value::Object(record)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_event_has_every_counter() {
        let s = Stats::default();
        s.records_sent.add(3);
        s.dropped_shutdown.add(2);
        let event =
            |context: &[(&str, &str)]| s.metrics_event("t", true, context, &s.snapshot(), &[]);
        let e: serde_json::Value = serde_json::from_str(&event(&[("functionName", "f")])).unwrap();
        assert_eq!(e["type"], METRICS_TYPE);
        assert!(event(&[])
            .starts_with(r#"{"time":"t","type":"kinesis-telemetry-extension.metrics","record":{"#));
        assert_eq!(e["record"]["recordsSent"], 3);
        assert_eq!(e["record"]["droppedShutdown"], 2);
        assert_eq!(e["record"]["final"], true);
        assert_eq!(e["record"]["functionName"], "f");
        assert_eq!(
            e["record"].as_object().unwrap().len(),
            s.snapshot().len() + 2
        );
        assert!(s.summary().contains("recordsSent=3"));
        // With redaction on: one counter per rule.
        s.redactions
            .set(vec![("email".into(), Counter::default())])
            .unwrap();
        s.redactions.get().unwrap()[0].1.add(4);
        let e: serde_json::Value = serde_json::from_str(&event(&[])).unwrap();
        assert_eq!(e["record"]["redactions"]["email"], 4);
        // Figures beside the counters (post-runtime time).
        let with = s.metrics_event("t", true, &[], &s.snapshot(), &[("postRuntimeMaxMs", 1.5)]);
        let e: serde_json::Value = serde_json::from_str(&with).unwrap();
        assert_eq!(e["record"]["postRuntimeMaxMs"], 1.5);
        assert!(s.summary().contains("redactions.email=4"));
    }
}
