//! The `otlp-json` record format: each Kinesis record one OpenTelemetry
//! `ExportLogsServiceRequest` in OTLP's JSON encoding (OTLP/HTTP's JSON
//! mapping: camelCase names, trace and span ids as hex, 64-bit integers as
//! decimal strings, enums as numbers), uncompressed as the OpenTelemetry
//! collector's Kinesis exporter writes its `otlp_json` by default, or
//! gzip-compressed as it does with `compression: gzip`
//! (`KINESIS_TELEMETRY_OTLP_COMPRESSION`).
//!
//! Shaping (`log_record`) turns each event into its `LogRecord` once, so
//! that it is the same on every resend; packing (`Head`) puts as many as fit
//! the record between the resource and scope (`head`) and the tail. What
//! goes where is in docs/record-formats.md (`otlp-json`).

use std::borrow::Cow;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

use crate::json::push_string;
use crate::lambda::telemetry::Kind;
use crate::lambda::view::{text_level, LEVELS};
use crate::records::format::cwlogs::Parts;
use crate::records::format::ndjson_gzip::{take_gzip, Frame};
use crate::records::format::{RecordFormat, Wire};
use crate::records::queue::Queue;

/// The instrumentation scope's name.
pub const SCOPE: &str = "kinesis-telemetry-extension";

/// What closes `logRecords` and the request.
const TAIL: &str = "]}]}]}";

/// Room a record keeps for the resource and scope around its log records
/// (names of the function's size; tags come on top, `reserve`).
const RESERVE: usize = 3072;

/// Room the resource and scope may take: `RESERVE` and each tag's
/// attribute. A record limit of twice this leaves log records room.
pub fn reserve(tags: &[(String, String)]) -> usize {
    let attributes: usize = tags.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
    RESERVE + attributes
}

/// The otlp-json packer: the resource and scope every record starts with,
/// and whether records are gzip-compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head(String, bool);

impl Head {
    /// The same head, its records gzip-compressed when `on`.
    pub fn gzip(self, on: bool) -> Head {
        Head(self.0, on)
    }

    /// Room a log record leaves for the head and tail in one record.
    pub fn overhead(&self) -> usize {
        self.0.len() + TAIL.len()
    }

    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The head of an environment's records. `context`: the enrichment fields
/// (function name, version, account id, region); `environment`: the
/// environment id (`faas.instance`); `memory_mb`: the function's memory;
/// `tags` (`KINESIS_TELEMETRY_TAGS`) come last, and one named as an
/// attribute of ours replaces it.
pub fn head(
    context: &[(&str, String)],
    environment: &str,
    memory_mb: Option<u64>,
    tags: &[(String, String)],
) -> Head {
    let get = |key: &str| {
        let field = context.iter().find(|(k, _)| *k == key);
        field.map_or("", |(_, v)| v.as_str())
    };
    let name = get("functionName");
    let ours = [
        ("service.name", name),
        ("cloud.provider", "aws"),
        ("cloud.platform", "aws_lambda"),
        ("cloud.region", get("region")),
        ("cloud.account.id", get("accountId")),
        ("faas.name", name),
        ("faas.version", get("functionVersion")),
        ("faas.instance", environment),
    ];
    let tagged = |key: &str| tags.iter().any(|(k, _)| k == key);
    let mut s = String::from("{\"resourceLogs\":[{\"resource\":{\"attributes\":[");
    let mut first = true;
    let mut attribute = |s: &mut String, key: &str| {
        if !std::mem::take(&mut first) {
            s.push(',');
        }
        s.push_str("{\"key\":");
        push_string(s, key);
        s.push_str(",\"value\":{");
    };
    for (k, v) in ours {
        if !v.is_empty() && !tagged(k) {
            attribute(&mut s, k);
            s.push_str("\"stringValue\":");
            push_string(&mut s, v);
            s.push_str("}}");
        }
    }
    if let Some(mb) = memory_mb.filter(|_| !tagged("faas.max_memory")) {
        attribute(&mut s, "faas.max_memory");
        let _ = write!(s, "\"intValue\":\"{}\"}}}}", mb.saturating_mul(1 << 20));
    }
    for (k, v) in tags {
        attribute(&mut s, k);
        s.push_str("\"stringValue\":");
        push_string(&mut s, v);
        s.push_str("}}");
    }
    s.push_str("]},\"scopeLogs\":[{\"scope\":{\"name\":");
    push_string(&mut s, SCOPE);
    s.push_str(",\"version\":");
    push_string(&mut s, env!("CARGO_PKG_VERSION"));
    s.push_str("},\"logRecords\":[");
    Head(s, false)
}

impl Default for Head {
    /// The tests' resource.
    fn default() -> Head {
        let context = [("functionName", "f".to_string())];
        head(&context, "env", Some(128), &[])
    }
}

impl RecordFormat for Head {
    /// As many log records as fit `room` between the head and the tail
    /// (`None` when not even the front one does).
    fn pack(&self, queue: &mut Queue, room: usize) -> Option<Wire> {
        if self.1 {
            let frame = Frame {
                head: self.0.as_bytes(),
                between: b",",
                tail: TAIL.as_bytes(),
            };
            return take_gzip(queue, room, &frame);
        }
        let key = queue.front()?.key.clone();
        let mut size = self.overhead() + key.len();
        let mut members = Vec::new();
        while let Some(r) = queue.front() {
            let add = r.data.len() + usize::from(!members.is_empty());
            if size + add > room {
                break;
            }
            size += add;
            members.push(queue.pop_front().expect("front exists"));
        }
        if members.is_empty() {
            return None;
        }
        let mut data = Vec::with_capacity(size - key.len());
        data.extend_from_slice(self.0.as_bytes());
        for (i, r) in members.iter().enumerate() {
            if i > 0 {
                data.push(b',');
            }
            data.extend_from_slice(&r.data);
        }
        data.extend_from_slice(TAIL.as_bytes());
        Some(Wire::packed(data, key, members))
    }

    #[cfg(test)]
    fn decode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        let plain;
        let data = match self.1 {
            true => {
                plain = crate::records::format::ndjson_gzip::gunzip(data);
                &plain[..]
            }
            false => data,
        };
        let text = std::str::from_utf8(data).unwrap();
        assert!(text.starts_with(&self.0) && text.ends_with(TAIL), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["resourceLogs"].as_array().unwrap().len(), 1);
        let records = &text[self.0.len()..text.len() - TAIL.len()];
        let array = format!("[{records}]");
        let list: Vec<&RawValue> = serde_json::from_str(&array).unwrap();
        list.iter().map(|r| r.get().as_bytes().to_vec()).collect()
    }
}

/// What one event's log record says beyond its event.
pub struct Context<'a> {
    /// A JSON log line's level (the view's index in `LEVELS`).
    pub level: Option<u8>,
    /// A platform or unknown event's `type`.
    pub event_name: Option<&'a str>,
    /// The request the event belongs to (`faas.invocation_id`).
    pub request: Option<&'a str>,
    /// Its invocation's trace (`trace::Form::Otlp`).
    pub trace: Option<&'a str>,
}

/// One event as its `LogRecord`, at most `max` bytes. Function and
/// extension lines: the line as `body` (a text line's text, a JSON line's
/// JSON text), the severity its level states (`level`, or a text line's
/// prefix). Other events (platform events, the extension's own): their
/// `type` as `eventName`, their `record`'s JSON text as `body` (the whole
/// event when it has none). Times from the event's `time` (the time observed
/// now when it has none); `faas.invocation_id` and the trace when known. A
/// body too long for `max` is cut.
pub fn log_record(json: &str, kind: Kind, cx: &Context, max: usize) -> String {
    let parts: Option<Parts> = serde_json::from_str(json).ok();
    let time = parts.as_ref().and_then(|p| p.time.as_deref());
    let record = parts.as_ref().and_then(|p| p.record).map(RawValue::get);
    let line = matches!(kind, Kind::Function | Kind::Extension);
    let body: Cow<str> = match record {
        Some(r) if line && r.starts_with('"') => {
            serde_json::from_str::<String>(r).map_or(Cow::Borrowed(r), Cow::Owned)
        }
        Some(r) => Cow::Borrowed(r),
        None => Cow::Borrowed(json),
    };
    let level = match (line, cx.level) {
        (true, Some(l)) => Some(l),
        (true, None) if record.is_some_and(|r| r.starts_with('"')) => text_level(&body),
        _ => None,
    };
    let mut s = String::with_capacity(body.len() + 300);
    match time.and_then(crate::time::epoch_nanos) {
        Some(ns) => {
            let _ = write!(
                s,
                "{{\"timeUnixNano\":\"{ns}\",\"observedTimeUnixNano\":\"{ns}\","
            );
        }
        None => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH);
            let ns = now.map_or(0, |d| d.as_nanos() as u64);
            let _ = write!(s, "{{\"observedTimeUnixNano\":\"{ns}\",");
        }
    }
    if let Some(l) = level {
        let name = LEVELS[usize::from(l)];
        let _ = write!(
            s,
            "\"severityNumber\":{},\"severityText\":\"{name}\",",
            1 + 4 * l
        );
    }
    s.push_str("\"body\":{\"stringValue\":");
    let at = s.len();
    let mut rest = String::from("}");
    let attributes = [
        ("faas.invocation_id", cx.request),
        (
            "lambda.telemetry.type",
            (kind == Kind::Extension).then_some("extension"),
        ),
    ];
    let mut first = true;
    for (k, v) in attributes {
        let Some(v) = v else { continue };
        rest.push_str(if std::mem::take(&mut first) {
            ",\"attributes\":["
        } else {
            ","
        });
        let _ = write!(rest, "{{\"key\":\"{k}\",\"value\":{{\"stringValue\":");
        push_string(&mut rest, v);
        rest.push_str("}}");
    }
    if !first {
        rest.push(']');
    }
    if let Some(t) = cx.trace {
        rest.push(',');
        rest.push_str(t);
    }
    if let Some(name) = cx.event_name.filter(|_| !line) {
        rest.push_str(",\"eventName\":");
        push_string(&mut rest, name);
    }
    rest.push('}');
    let mut text: &str = &body;
    loop {
        s.truncate(at);
        push_string(&mut s, text);
        if s.len() + rest.len() <= max || text.is_empty() {
            s.push_str(&rest);
            return s;
        }
        // As much of the text as its escaping leaves room for (less next
        // time round if escapes are dense where it is cut).
        let room = max.saturating_sub(at + rest.len() + 2);
        let mut cut = (text.len() * room / (s.len() - at)).min(text.len() - 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = &text[..cut];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::format::{take, Format};
    use crate::records::queue::{Record, RequestLimits};
    use serde_json::{json, Value};

    fn record(json: &str, kind: Kind, cx: &Context) -> Value {
        serde_json::from_str(&log_record(json, kind, cx, 1 << 20)).unwrap()
    }

    const NONE: Context = Context {
        level: None,
        event_name: None,
        request: None,
        trace: None,
    };

    #[test]
    fn lines_carry_body_severity_request_and_trace() {
        let ev = r#"{"time":"2026-11-30T01:02:03.456789Z","type":"function","record":"2026-11-30T01:02:03.456Z\tr-1\tERROR\tboom \"x\"\n"}"#;
        let trace =
            r#""flags":1,"traceId":"5759e988bd862e3fe1be46a994272793","spanId":"53995c3f42cd8ad8""#;
        let cx = Context {
            request: Some("r-1"),
            trace: Some(trace),
            event_name: Some("ignored for lines"),
            ..NONE
        };
        let r = record(ev, Kind::Function, &cx);
        assert_eq!(
            r,
            json!({
                "timeUnixNano": "1796000523456789000",
                "observedTimeUnixNano": "1796000523456789000",
                "severityNumber": 17,
                "severityText": "ERROR",
                "body": {"stringValue": "2026-11-30T01:02:03.456Z\tr-1\tERROR\tboom \"x\"\n"},
                "attributes": [{"key": "faas.invocation_id", "value": {"stringValue": "r-1"}}],
                "flags": 1,
                "traceId": "5759e988bd862e3fe1be46a994272793",
                "spanId": "53995c3f42cd8ad8"
            })
        );
        // A JSON line: its JSON text verbatim, the view's level; extension
        // lines say so.
        let line = r#"{"level":"debug", "message":"m"}"#;
        let ev = format!(r#"{{"time":"2026-11-30T01:02:03Z","type":"extension","record":{line}}}"#);
        let cx = Context {
            level: Some(1),
            ..NONE
        };
        let r = record(&ev, Kind::Extension, &cx);
        assert_eq!(r["body"]["stringValue"], line);
        assert_eq!(
            (&r["severityNumber"], &r["severityText"]),
            (&json!(5), &json!("DEBUG"))
        );
        assert_eq!(
            r["attributes"],
            json!([{"key": "lambda.telemetry.type", "value": {"stringValue": "extension"}}])
        );
        assert!(r.get("traceId").is_none() && r.get("eventName").is_none());
        // No level stated: no severity.
        let ev = r#"{"time":"2026-11-30T01:02:03Z","type":"function","record":"plain"}"#;
        let r = record(ev, Kind::Function, &NONE);
        assert!(r.get("severityNumber").is_none() && r.get("attributes").is_none());
    }

    #[test]
    fn events_are_named_with_their_record_as_body() {
        let rec = r#"{"requestId":"r","metrics":{"durationMs":1.5}}"#;
        let ev =
            format!(r#"{{"time":"2026-11-30T01:02:03Z","type":"platform.report","record":{rec}}}"#);
        let cx = Context {
            event_name: Some("platform.report"),
            request: Some("r"),
            ..NONE
        };
        let r = record(&ev, Kind::Report, &cx);
        assert_eq!(r["eventName"], "platform.report");
        assert_eq!(r["body"]["stringValue"], rec);
        assert!(r.get("severityNumber").is_none());
        // No record, no time: the whole event; observed now.
        let ev = r#"{"type":"mystery"}"#;
        let cx = Context {
            event_name: Some("mystery"),
            ..NONE
        };
        let r = record(ev, Kind::Other, &cx);
        assert_eq!(r["body"]["stringValue"], ev);
        assert!(r.get("timeUnixNano").is_none());
        let observed: u64 = r["observedTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(observed > 1_700_000_000_000_000_000);
    }

    #[test]
    fn long_bodies_are_cut_to_fit() {
        let line = "é\"".repeat(5000);
        let ev = format!(
            r#"{{"time":"2026-11-30T01:02:03Z","type":"function","record":{}}}"#,
            serde_json::to_string(&line).unwrap()
        );
        let cx = Context {
            request: Some("r-1"),
            ..NONE
        };
        let s = log_record(&ev, Kind::Function, &cx, 4000);
        assert!(s.len() <= 4000 && s.len() > 3900, "{}", s.len());
        let r: Value = serde_json::from_str(&s).unwrap();
        assert!(line.starts_with(r["body"]["stringValue"].as_str().unwrap()));
        assert_eq!(r["attributes"][0]["value"]["stringValue"], "r-1");
    }

    #[test]
    fn the_head_names_the_function_with_tags_last() {
        let context = [
            ("functionName", "orders".to_string()),
            ("functionVersion", "7".to_string()),
            ("accountId", String::new()),
            ("region", "eu-west-1".to_string()),
        ];
        let tags = [
            ("team".to_string(), "pay\"ments".to_string()),
            ("service.name".to_string(), "orders-api".to_string()),
        ];
        let h = head(&context, "0123abcd", Some(256), &tags);
        let mut text = h.0.clone();
        text.push_str(TAIL);
        let v: Value = serde_json::from_str(&text).unwrap();
        let attrs: Vec<(String, Value)> = v["resourceLogs"][0]["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["key"].as_str().unwrap().to_string(), a["value"].clone()))
            .collect();
        let s = |v: &str| json!({ "stringValue": v });
        assert_eq!(
            attrs,
            [
                ("cloud.provider".into(), s("aws")),
                ("cloud.platform".into(), s("aws_lambda")),
                ("cloud.region".into(), s("eu-west-1")),
                ("faas.name".into(), s("orders")),
                ("faas.version".into(), s("7")),
                ("faas.instance".into(), s("0123abcd")),
                ("faas.max_memory".into(), json!({"intValue": "268435456"})),
                ("team".into(), s("pay\"ments")),
                ("service.name".into(), s("orders-api")),
            ]
        );
        let scope = &v["resourceLogs"][0]["scopeLogs"][0]["scope"];
        assert_eq!(scope["name"], SCOPE);
        assert_eq!(scope["version"], env!("CARGO_PKG_VERSION"));
        assert!(h.overhead() < reserve(&tags));
    }

    #[test]
    fn records_are_requests_within_limits() {
        let mut q = Queue::default();
        for i in 0..3000 {
            let ev = format!(
                r#"{{"time":"2026-11-30T01:02:03Z","type":"function","record":"line {i}"}}"#
            );
            q.push(Record::new(
                log_record(&ev, Kind::Function, &NONE, 1 << 20).into_bytes(),
                "k",
            ));
        }
        let limits = RequestLimits {
            max_records: 500,
            max_bytes: 64 * 1024,
        };
        let packer = Format::OtlpJson.packer(None, None);
        let wires = take(&mut q, limits, &packer, 8 * 1024);
        assert!(wires.len() > 1);
        assert!(wires
            .iter()
            .all(|w| w.size() <= 8 * 1024 && w.size() > 7 * 1024));
        for w in &wires {
            let sent: Vec<Vec<u8>> = w.members.iter().map(|r| r.data.to_vec()).collect();
            assert_eq!(packer.decode(w.data()), sent);
        }
        let v: Value = serde_json::from_slice(wires[1].data()).unwrap();
        let records = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
        assert_eq!(records.as_array().unwrap().len(), wires[1].members.len());
        // Not even the front one fits: none.
        let mut q = Queue::default();
        q.push(Record::new(vec![b'x'; 2000], "k"));
        assert!(Head::default().pack(&mut q, 2000).is_none());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn gzip_records_are_the_same_requests_compressed() {
        let lines = |n: usize| {
            let mut q = Queue::default();
            for i in 0..n {
                let ev = format!(
                    r#"{{"time":"2026-11-30T01:02:03Z","type":"function","record":"line {i} of the order service"}}"#
                );
                let lr = log_record(&ev, Kind::Function, &NONE, 1 << 20);
                q.push(Record::new(lr.into_bytes(), "k"));
            }
            q
        };
        let plain = Head::default();
        let gzip = Head::default().gzip(true);
        let (mut a, mut b) = (lines(400), lines(400));
        let p = plain.pack(&mut a, 1 << 20).unwrap();
        let z = gzip.pack(&mut b, 1 << 20).unwrap();
        assert_eq!(p.members.len(), 400);
        assert_eq!(z.members.len(), 400);
        assert!(z.data().starts_with(&[0x1f, 0x8b]));
        let unzipped = crate::records::format::ndjson_gzip::gunzip(z.data());
        assert_eq!(unzipped, p.data(), "the same request, compressed");
        assert!(z.data().len() * 10 < p.data().len(), "{}", z.data().len());
        // Within the room, by compressed size: many more per record.
        let (mut c, mut d) = (lines(20_000), lines(20_000));
        let w = gzip.pack(&mut c, 16 * 1024).unwrap();
        let unzipped = plain.pack(&mut d, 16 * 1024).unwrap();
        assert!(w.size() <= 16 * 1024);
        let (n, m) = (w.members.len(), unzipped.members.len());
        assert!(n > 5 * m, "{n} gzip, {m} plain");
        let sent: Vec<Vec<u8>> = w.members.iter().map(|r| r.data.to_vec()).collect();
        assert_eq!(gzip.decode(w.data()), sent);
    }
}
