//! Telemetry API bodies: splitting a POSTed JSON array into events, byte for
//! byte, and recognising the few platform events the lifecycle depends on.
//!
//! An event's JSON is kept exactly as Lambda sent it; only the fields needed
//! for flushing (`type`, `record.requestId`) are looked at. Unknown types and
//! fields are carried along untouched. A body that is not a JSON array becomes
//! one marker event holding the body, so nothing is lost and Lambda is not
//! asked to redeliver it.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::slices::Text;

/// Event type of the marker that carries a body we could not split.
pub const UNPARSED_TYPE: &str = "kinesis-telemetry-extension.unparsed";

/// One telemetry event, its JSON verbatim (a range of the POSTed body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub json: Text,
    pub kind: Kind,
    /// `record.requestId` of platform events that carry one.
    pub request_id: Option<Box<str>>,
}

/// What the lifecycle needs to know about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    RuntimeDone,
    Report,
    /// Lambda dropped telemetry before delivering it to us.
    LogsDropped,
    OtherPlatform,
    Function,
    Extension,
    /// Unknown or missing type; forwarded like the rest.
    Other,
}

impl Kind {
    fn of(ty: &str) -> Kind {
        match ty {
            "platform.start" => Kind::Start,
            "platform.runtimeDone" => Kind::RuntimeDone,
            "platform.report" => Kind::Report,
            "platform.logsDropped" => Kind::LogsDropped,
            "function" => Kind::Function,
            "extension" => Kind::Extension,
            t if t.starts_with("platform.") => Kind::OtherPlatform,
            _ => Kind::Other,
        }
    }

    pub fn is_platform(self) -> bool {
        matches!(
            self,
            Kind::Start
                | Kind::RuntimeDone
                | Kind::Report
                | Kind::LogsDropped
                | Kind::OtherPlatform
        )
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    record: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PlatformRecord<'a> {
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<std::borrow::Cow<'a, str>>,
}

/// What a JSON log record may say of its request: the runtimes' loggers
/// write `requestId` (some `AWSRequestId`).
#[derive(Deserialize)]
struct LogRecord<'a> {
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "AWSRequestId", borrow, default)]
    aws_request_id: Option<std::borrow::Cow<'a, str>>,
}

/// The request a function or extension log event names in its own record
/// (`None` for text records and records without one). On Lambda Managed
/// Instances invocations interleave, so this is the only way to tell.
pub fn log_request_id(json: &str) -> Option<Box<str>> {
    let head = serde_json::from_str::<Head>(json).ok()?;
    let raw = head.record?.get();
    // A JSON line may arrive as a string holding its JSON text (AWS's
    // runtime interface emulator on Managed Instances): the same fields.
    let text: String;
    let record = if raw.starts_with('"') {
        text = serde_json::from_str::<String>(raw).ok()?;
        if !text.trim_start().starts_with('{') {
            return None;
        }
        &text
    } else {
        raw
    };
    let record = serde_json::from_str::<LogRecord>(record).ok()?;
    record
        .request_id
        .or(record.aws_request_id)
        .filter(|id| !id.is_empty())
        .map(|id| Box::from(id.as_ref()))
}

impl Event {
    /// Classifies one event from its raw JSON, which lies inside `body`.
    pub fn from_raw(raw: &RawValue, body: &Arc<Vec<u8>>) -> Event {
        let json = raw.get();
        // Log lines are most events and need no request id: when Lambda's
        // usual layout shows their type, skip the second parse.
        if let Some(kind) = quick_type(json).map(Kind::of).filter(|k| !k.is_platform()) {
            return Event {
                json: Text::slice_of(body, json),
                kind,
                request_id: None,
            };
        }
        let (kind, request_id) = match serde_json::from_str::<Head>(json) {
            Ok(head) => {
                let kind = head.ty.as_deref().map_or(Kind::Other, Kind::of);
                let request_id = if kind.is_platform() {
                    head.record
                        .and_then(|r| serde_json::from_str::<PlatformRecord>(r.get()).ok())
                        .and_then(|r| r.request_id)
                        .map(|id| Box::from(id.as_ref()))
                } else {
                    None
                };
                (kind, request_id)
            }
            // Not an object: still an event Lambda sent; forward it.
            Err(_) => (Kind::Other, None),
        };
        Event {
            json: Text::slice_of(body, json),
            kind,
            request_id,
        }
    }
}

/// The type of an event laid out as Lambda writes them,
/// `{"time":"…","type":"…",…`, without parsing; `None` for anything else.
fn quick_type(json: &str) -> Option<&str> {
    let rest = json.strip_prefix("{\"time\":\"")?;
    let rest = &rest[rest.find('"')?..];
    let rest = rest.strip_prefix("\",\"type\":\"")?;
    let ty = &rest[..rest.find('"')?];
    (!ty.contains('\\')).then_some(ty)
}

/// The `type` field of an event.
pub fn event_type(json: &str) -> Option<String> {
    serde_json::from_str::<Head>(json)
        .ok()?
        .ty
        .map(|t| t.into_owned())
}

#[derive(Deserialize)]
struct DurationHead {
    record: DurationRecord,
}

#[derive(Deserialize)]
struct DurationRecord {
    metrics: Option<DurationMetrics>,
}

#[derive(Deserialize)]
struct DurationMetrics {
    #[serde(rename = "durationMs")]
    duration_ms: Option<f64>,
}

/// `record.metrics.durationMs` of a `platform.runtimeDone` event.
pub fn runtime_duration_ms(json: &str) -> Option<f64> {
    serde_json::from_str::<DurationHead>(json)
        .ok()?
        .record
        .metrics?
        .duration_ms
}

#[derive(Deserialize)]
struct StatusHead<'a> {
    #[serde(borrow)]
    record: StatusRecord<'a>,
}

#[derive(Deserialize)]
struct StatusRecord<'a> {
    #[serde(borrow, default)]
    status: Option<std::borrow::Cow<'a, str>>,
}

/// `record.status` of a `platform.runtimeDone` or `platform.report` event
/// (`success`, `error`, `failure`, `timeout`).
pub fn status(json: &str) -> Option<std::borrow::Cow<'_, str>> {
    serde_json::from_str::<StatusHead>(json).ok()?.record.status
}

#[derive(Deserialize)]
struct DroppedHead {
    record: DroppedRecord,
}

#[derive(Deserialize)]
struct DroppedRecord {
    #[serde(rename = "droppedRecords", default)]
    records: u64,
    #[serde(rename = "droppedBytes", default)]
    bytes: u64,
}

/// `(droppedRecords, droppedBytes)` of a `platform.logsDropped` event.
pub fn logs_dropped(json: &str) -> Option<(u64, u64)> {
    serde_json::from_str::<DroppedHead>(json)
        .ok()
        .map(|h| (h.record.records, h.record.bytes))
}

/// The events of one Telemetry API body, stamped when the body arrived (so
/// a batch's age counts from its arrival, not from when it was dequeued).
#[derive(Debug)]
pub struct Delivery {
    pub received: std::time::Instant,
    pub events: Vec<Event>,
    /// Size of the body the events are ranges of.
    pub body_bytes: usize,
}

/// Why a body could not be split into events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError(pub String);

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "telemetry body is not a JSON array of events: {}",
            self.0
        )
    }
}

/// Splits a Telemetry API body (a JSON array) into its events.
/// Each event is a range of `body`, which the events share.
pub fn split_body(body: &Arc<Vec<u8>>) -> Result<Vec<Event>, SplitError> {
    let raws: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| SplitError(e.to_string()))?;
    Ok(raws
        .into_iter()
        .map(|raw| Event::from_raw(raw, body))
        .collect())
}

/// `split_body` of a copy of `body`.
#[cfg(test)]
pub fn split(body: &[u8]) -> Result<Vec<Event>, SplitError> {
    split_body(&Arc::new(body.to_vec()))
}

/// The marker event for a body that `split` rejected: the body is kept as a
/// JSON string when it is UTF-8, else as base64, with the reason.
pub fn unparsed(body: &[u8], reason: &str, now: std::time::SystemTime) -> Event {
    let mut json = String::with_capacity(body.len() + 160);
    json.push_str("{\"time\":\"");
    json.push_str(&crate::time::rfc3339(now));
    json.push_str("\",\"type\":\"");
    json.push_str(UNPARSED_TYPE);
    json.push_str("\",\"record\":{\"reason\":");
    crate::json::push_string(&mut json, reason);
    json.push_str(",\"bytes\":");
    json.push_str(&body.len().to_string());
    match std::str::from_utf8(body) {
        Ok(text) => {
            json.push_str(",\"body\":");
            crate::json::push_string(&mut json, text);
        }
        Err(_) => {
            json.push_str(",\"bodyBase64\":\"");
            json.push_str(&crate::base64::encode(body));
            json.push('"');
        }
    }
    json.push_str("}}");
    Event {
        json: Text::from(json),
        kind: Kind::Other,
        request_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_name_their_request_when_they_are_json() {
        let id = |j: &str| log_request_id(j).map(String::from);
        let json = r#"{"time":"t","type":"function","record":{"timestamp":"t","level":"INFO","requestId":"r-1","message":"m"}}"#;
        assert_eq!(id(json).as_deref(), Some("r-1"));
        let aws = r#"{"type":"function","record":{"AWSRequestId":"r-2","msg":"x"}}"#;
        assert_eq!(id(aws).as_deref(), Some("r-2"));
        let text = r#"{"type":"function","record":"requestId r-3 in text"}"#;
        assert_eq!(id(text), None);
        let none = r#"{"type":"function","record":{"timestamp":"t","level":"INFO","message":"m"}}"#;
        assert_eq!(id(none), None);
        assert_eq!(id(r#"{"type":"function","record":{"requestId":""}}"#), None);
        assert_eq!(id("42"), None);
        // JSON text inside a string record (AWS's emulator on Managed
        // Instances): the same request id.
        let inside = r#"{"type":"function","record":"{\"timestamp\":\"t\",\"requestId\":\"r-4\",\"message\":\"m\"}\n"}"#;
        assert_eq!(id(inside).as_deref(), Some("r-4"));
        let broken =
            r#"{"type":"function","record":"{\"requestId\":\"r-5\", merged with another line"}"#;
        assert_eq!(id(broken), None, "merged lines are forwarded, just unnamed");
    }
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn splits_verbatim_with_unknown_types_and_text_records() {
        let body = r#"[ {"time":"t","type":"function","record":"plain text \"q\" \u00e9 caf\u00e9"},
            {"type":"platform.runtimeDone","record":{"requestId":"r-1","status":"success","extra":[1,2]}},
            {"type":"platform.somethingNew","record":{"requestId":"r-2"},"new":true},
            {"type":"extension","record":{"level":"INFO","message":"é 🎉"}},
            {"type":"platform.report","record":{"requestId":"r-1"}}, 42, "x" ]"#;
        let events = split(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 7);
        assert_eq!(
            &*events[0].json,
            r#"{"time":"t","type":"function","record":"plain text \"q\" \u00e9 caf\u00e9"}"#
        );
        assert_eq!(events[0].kind, Kind::Function);
        assert_eq!(events[1].kind, Kind::RuntimeDone);
        assert_eq!(events[1].request_id.as_deref(), Some("r-1"));
        assert_eq!(events[2].kind, Kind::OtherPlatform);
        assert_eq!(events[2].request_id.as_deref(), Some("r-2"));
        assert_eq!(
            event_type(&events[2].json).as_deref(),
            Some("platform.somethingNew")
        );
        assert!(events[2].json.contains(r#""new":true"#));
        assert_eq!(events[3].kind, Kind::Extension);
        assert!(events[3].json.contains("é 🎉"));
        assert_eq!(events[4].kind, Kind::Report);
        assert_eq!(&*events[5].json, "42");
        assert_eq!(events[5].kind, Kind::Other);
        assert_eq!(events[6].kind, Kind::Other);
    }

    #[test]
    fn quick_type_only_for_the_usual_layout() {
        assert_eq!(
            quick_type(r#"{"time":"t","type":"function","record":"x"}"#),
            Some("function")
        );
        assert_eq!(quick_type(r#"{"type":"function","time":"t"}"#), None);
        assert_eq!(quick_type(r#"{"time":"t", "type":"function"}"#), None);
        assert_eq!(quick_type(r#"{"time":"t","type":"fun\"c"}"#), None);
        // Platform events still get their request id from the full parse.
        let e =
            split(br#"[{"time":"t","type":"platform.start","record":{"requestId":"r"}}]"#).unwrap();
        assert_eq!(e[0].request_id.as_deref(), Some("r"));
    }

    #[test]
    fn platform_record_that_is_not_an_object_is_kept() {
        let events = split(br#"[{"type":"platform.start","record":"odd"}]"#).unwrap();
        assert_eq!(events[0].kind, Kind::Start);
        assert_eq!(events[0].request_id, None);
        let done = r#"{"type":"platform.runtimeDone","record":{"requestId":"r","metrics":{"durationMs":12.5,"producedBytes":0}}}"#;
        assert_eq!(runtime_duration_ms(done), Some(12.5));
        assert_eq!(runtime_duration_ms("{}"), None);
    }

    #[test]
    fn logs_dropped_counts() {
        let json = r#"{"time":"t","type":"platform.logsDropped","record":{"reason":"Some logs were dropped","droppedRecords":12,"droppedBytes":3400}}"#;
        let events = split(format!("[{json}]").as_bytes()).unwrap();
        assert_eq!(events[0].kind, Kind::LogsDropped);
        assert_eq!(logs_dropped(json), Some((12, 3400)));
        assert_eq!(logs_dropped("{}"), None);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // The listener reads bodies on threads with small stacks (see lambda/listener.rs).
        let t = std::thread::Builder::new()
            .stack_size(crate::lambda::listener::READER_STACK)
            .spawn(|| {
                let deep = "[".repeat(100_000);
                assert!(split(deep.as_bytes()).is_err());
                let ok = format!("[{}1{}]", "[".repeat(120), "]".repeat(120));
                assert_eq!(split(ok.as_bytes()).unwrap().len(), 1);
                let obj = format!("[{}{}]", "{\"a\":".repeat(120), "}".repeat(120));
                assert!(split(obj.as_bytes()).is_err()); // "{"a":}" is not JSON
            })
            .unwrap();
        t.join().unwrap();
    }

    #[test]
    fn rejects_non_arrays() {
        assert!(split(b"{}").is_err());
        assert!(split(b"[1,").is_err());
        assert!(split(b"").is_err());
        assert!(split(&[0xff, 0xfe]).is_err());
        assert_eq!(split(b"[]").unwrap().len(), 0);
    }

    #[test]
    fn unparsed_marker_keeps_the_body() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_107_648_123);
        let e = unparsed(b"{\"half\":", "EOF", t);
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["type"], UNPARSED_TYPE);
        assert_eq!(v["record"]["body"], "{\"half\":");
        assert_eq!(v["record"]["bytes"], 8);
        assert_eq!(v["time"], "2025-11-25T21:54:08.123Z");
        let e = unparsed(&[0xff, 0x00, 0x41], "bad utf-8", t);
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["record"]["bodyBase64"], "/wBB");
    }
}
