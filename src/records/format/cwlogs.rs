//! The `cwlogs` record format: records exactly as a CloudWatch Logs
//! subscription filter writes them to Kinesis, so that the consumers of
//! those (Lambda consumers, Firehose, vendors' forwarders) read ours. Each
//! Kinesis record is gzip of `{"messageType":"DATA_MESSAGE","owner",
//! "logGroup","logStream","subscriptionFilters":[…],"logEvents":[…]}`.
//!
//! Shaping (`log_event`) turns each event into its log event
//! `{"id","timestamp","message"}` once, so the id stays the same on every
//! resend; packing (`Head`) puts many in one record with `ndjson_gzip`'s
//! packing. `Names`: the log group, stream and filter name the records
//! carry, and their defaults.

use std::borrow::Cow;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json::push_string;
use crate::lambda::telemetry::Kind;
use crate::records::format::ndjson_gzip::{take_gzip, Frame};
use crate::records::format::{RecordFormat, Wire};
use crate::records::queue::Queue;

/// Room a record keeps for the `DATA_MESSAGE` around one log event
/// (names of at most `MAX_NAME` bytes each, gzip's overhead): a log event
/// is cut to fit the record with it.
pub const RESERVE: usize = 3072;

/// The longest log group, stream or filter name (CloudWatch's limit: 512).
pub const MAX_NAME: usize = 512;

/// The names records carry, as configured (`None`: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
    pub filter: String,
}

/// The default log group of a function: where Lambda sends its logs.
pub fn default_log_group(function_name: &str) -> String {
    format!("/aws/lambda/{function_name}")
}

/// A log stream name in Lambda's form, `YYYY/MM/DD/[version]<32 hex>`,
/// for the environment started on `date` (`YYYY-MM-DD`).
pub fn default_log_stream(date: &str, version: &str, hex32: &str) -> String {
    format!("{}/[{version}]{hex32}", date.replace('-', "/"))
}

/// The head of an environment's records: `names` as configured, else
/// the function's log group and a stream named in Lambda's form for an
/// environment started at `now`. `context`: the enrichment fields
/// (function name, version, account id).
pub fn head(names: &Names, context: &[(&str, String)], now: SystemTime, hex32: &str) -> Head {
    let get = |key: &str| {
        let field = context.iter().find(|(k, _)| *k == key);
        field.map_or("", |(_, v)| v.as_str())
    };
    let group = (names.log_group.clone()).unwrap_or_else(|| default_log_group(get("functionName")));
    let stream = names.log_stream.clone().unwrap_or_else(|| {
        let date = crate::time::rfc3339(now);
        default_log_stream(&date[..10], get("functionVersion"), hex32)
    });
    Head::new(get("accountId"), &group, &stream, &names.filter)
}

/// The cwlogs packer: the `DATA_MESSAGE` head every record starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head(Vec<u8>);

impl Head {
    pub fn new(owner: &str, log_group: &str, log_stream: &str, filter: &str) -> Head {
        let mut s = String::from("{\"messageType\":\"DATA_MESSAGE\",\"owner\":");
        push_string(&mut s, owner);
        s.push_str(",\"logGroup\":");
        push_string(&mut s, log_group);
        s.push_str(",\"logStream\":");
        push_string(&mut s, log_stream);
        s.push_str(",\"subscriptionFilters\":[");
        push_string(&mut s, filter);
        s.push_str("],\"logEvents\":[");
        Head(s.into_bytes())
    }
}

impl Default for Head {
    /// The tests' names.
    fn default() -> Head {
        Head::new(
            "123456789012",
            "/aws/lambda/f",
            "2026/01/01/[$LATEST]0",
            "f",
        )
    }
}

impl RecordFormat for Head {
    fn pack(&self, queue: &mut Queue, room: usize) -> Option<Wire> {
        let frame = Frame {
            head: &self.0,
            between: b",",
            tail: b"]}",
        };
        take_gzip(queue, room, &frame)
    }

    #[cfg(test)]
    fn decode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        #[derive(Deserialize)]
        struct Message<'a> {
            #[serde(rename = "messageType")]
            message_type: &'a str,
            #[serde(borrow, rename = "logEvents")]
            log_events: Vec<&'a RawValue>,
        }
        let plain = crate::records::format::ndjson_gzip::gunzip(data);
        assert!(plain.starts_with(&self.0));
        let m: Message = serde_json::from_slice(&plain).unwrap();
        assert_eq!(m.message_type, "DATA_MESSAGE");
        m.log_events
            .iter()
            .map(|e| e.get().as_bytes().to_vec())
            .collect()
    }
}

/// The parts of a telemetry event a log event (and an `otlp-json` log
/// record) is made of.
#[derive(Deserialize)]
pub(crate) struct Parts<'a> {
    #[serde(borrow)]
    pub time: Option<Cow<'a, str>>,
    /// (`null` too: a JSON line's text)
    #[serde(borrow, default, deserialize_with = "present")]
    pub record: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// One event as its log event `{"id","timestamp","message"}`, at most
/// `max` bytes. `message`: a function or extension line as CloudWatch shows
/// it (a text line verbatim, a JSON-format line as its JSON text); any
/// other event (platform events, the extension's own) as its JSON text.
/// `timestamp`: ms from the event's `time`. `id`: see `id`. A message too
/// long for `max` is cut (CloudWatch too cuts events over its limit).
pub fn log_event(json: &str, kind: Kind, environment: u64, sequence: u64, max: usize) -> String {
    let parts: Option<Parts> = serde_json::from_str(json).ok();
    let millis = parts
        .as_ref()
        .and_then(|p| p.time.as_deref())
        .and_then(epoch_millis)
        .unwrap_or_else(now_millis);
    let line: Option<Cow<str>> = match (kind, parts.as_ref().and_then(|p| p.record)) {
        (Kind::Function | Kind::Extension, Some(r)) => match r.get().starts_with('"') {
            true => serde_json::from_str::<String>(r.get()).ok().map(Cow::Owned),
            false => Some(Cow::Borrowed(r.get())),
        },
        _ => None,
    };
    let mut message: &str = line.as_deref().unwrap_or(json);
    loop {
        let mut s = String::with_capacity(message.len() + 100);
        let _ = write!(
            s,
            "{{\"id\":\"{}\",\"timestamp\":{millis},\"message\":",
            id(millis, environment, sequence)
        );
        push_string(&mut s, message);
        s.push('}');
        if s.len() <= max || message.is_empty() {
            return s;
        }
        let mut cut = message.len().saturating_sub(s.len() - max);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message = &message[..cut];
    }
}

/// A log event id in CloudWatch's form, 56 decimal digits: the event's
/// time in ms (20 digits), the environment's hash (20), the record's
/// sequence in the environment (16). Unique (one sequence per record of an
/// environment) and the same on every resend (made once, when shaped).
pub fn id(millis: u64, environment: u64, sequence: u64) -> String {
    format!(
        "{millis:020}{environment:020}{:016}",
        sequence % 10_u64.pow(16)
    )
}

/// The environment id as the number in log event ids (FNV-1a).
pub fn environment_hash(environment: &str) -> u64 {
    environment.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Milliseconds since the epoch of an RFC 3339 time, with its fraction.
fn epoch_millis(time: &str) -> Option<u64> {
    Some(crate::time::epoch_nanos(time)? / 1_000_000)
}

fn now_millis() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::format::tests::L;
    use crate::records::format::{take, Format};
    use crate::records::queue::{Record, RequestLimits};

    fn event(json: &str, kind: Kind) -> serde_json::Value {
        serde_json::from_str(&log_event(json, kind, 7, 42, 1 << 20)).unwrap()
    }

    #[test]
    fn text_lines_verbatim_json_lines_as_json_platform_events_whole() {
        let e = event(
            r#"{"time":"2026-11-30T01:02:03.456Z","type":"function","record":"hello \"x\"\n"}"#,
            Kind::Function,
        );
        assert_eq!(e["message"], "hello \"x\"\n");
        assert_eq!(e["timestamp"], 1_796_000_523_456_u64);
        let json_line = r#"{"level":"INFO", "message":"m"}"#;
        let ev =
            format!(r#"{{"time":"2026-11-30T01:02:03Z","type":"extension","record":{json_line}}}"#);
        let e = event(&ev, Kind::Extension);
        assert_eq!(e["message"], json_line);
        assert_eq!(e["timestamp"], 1_796_000_523_000_u64);
        let start = r#"{"time":"2026-11-30T01:02:03.4Z","type":"platform.start","record":{"requestId":"r"}}"#;
        let e = event(start, Kind::Start);
        assert_eq!(e["message"], start);
        assert_eq!(e["timestamp"], 1_796_000_523_400_u64);
    }

    #[test]
    fn ids_are_56_digits_unique_per_sequence() {
        let a = id(1_796_000_523_456, environment_hash("env"), 1);
        let b = id(1_796_000_523_456, environment_hash("env"), 2);
        let c = id(1_796_000_523_456, environment_hash("other"), 1);
        assert_eq!(a.len(), 56);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert!(a != b && a != c && b != c);
        assert_eq!(id(u64::MAX, u64::MAX, u64::MAX).len(), 56);
    }

    #[test]
    fn long_messages_are_cut_to_fit() {
        let line = "é".repeat(5000);
        let ev =
            format!(r#"{{"time":"2026-11-30T01:02:03Z","type":"function","record":"{line}"}}"#);
        let s = log_event(&ev, Kind::Function, 7, 1, 4000);
        assert!(s.len() <= 4000, "{}", s.len());
        let e: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(line.starts_with(e["message"].as_str().unwrap()));
    }

    #[test]
    fn default_names_follow_lambda() {
        assert_eq!(default_log_group("fn"), "/aws/lambda/fn");
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            default_log_stream("2026-12-05", "$LATEST", hex),
            format!("2026/12/05/[$LATEST]{hex}")
        );
    }

    #[test]
    fn records_are_data_messages_within_limits() {
        let head = Head::new("1", "/aws/lambda/f", "s", "filter");
        let mut q = Queue::default();
        for i in 0..3000 {
            let ev = format!(
                r#"{{"time":"2026-11-30T01:02:03Z","type":"function","record":"line {i}"}}"#
            );
            q.push(Record::new(
                log_event(&ev, Kind::Function, 7, i, 1 << 20).into_bytes(),
                "k",
            ));
        }
        let limits = RequestLimits {
            max_records: 500,
            max_bytes: 64 * 1024,
        };
        let packer = Format::Cwlogs.packer(Some(head.clone()), None);
        let wires = take(&mut q, limits, &packer, 8 * 1024);
        assert!(wires.iter().all(|w| w.size() <= 8 * 1024));
        let plain = crate::records::format::ndjson_gzip::gunzip(wires[0].data());
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["owner"], "1");
        assert_eq!(v["logGroup"], "/aws/lambda/f");
        assert_eq!(v["logStream"], "s");
        assert_eq!(v["subscriptionFilters"], serde_json::json!(["filter"]));
        let events = v["logEvents"].as_array().unwrap();
        assert_eq!(events.len(), wires[0].members.len());
        assert_eq!(events[1]["message"], "line 1");
        let sent: Vec<Vec<u8>> = wires[0].members.iter().map(|r| r.data.to_vec()).collect();
        assert_eq!(head.decode(wires[0].data()), sent);
        let _ = L;
    }
}
