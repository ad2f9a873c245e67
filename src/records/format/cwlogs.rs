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
//! carry, and their defaults. `platform_line`: a platform event as the
//! text line CloudWatch shows for it (`START`, `END`, `REPORT`, ...), when
//! `Platform::Text` asks for those.

use std::borrow::Cow;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json::push_string;
use crate::lambda::telemetry::Kind;
use crate::lambda::view::{members, Reading, View};
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

/// How platform events become messages (`KINESIS_TELEMETRY_CWLOGS_PLATFORM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// The line CloudWatch shows (`platform_line`), else the JSON.
    Text,
    /// The event's JSON.
    Json,
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
/// platform event as `platform_line` shows it when `platform` is `Text`
/// and it has a line; any other event (the extension's own too) as its
/// JSON text. `timestamp`: ms from the event's `time`. `id`: see `id`. A
/// message too long for `max` is cut (CloudWatch too cuts events over its
/// limit).
pub fn log_event(
    json: &str,
    kind: Kind,
    platform: Platform,
    environment: u64,
    sequence: u64,
    max: usize,
) -> String {
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
        (k, Some(r)) if k.is_platform() && platform == Platform::Text => {
            // (the view's reading of the type, not a field of `Parts`: an
            // odd `type`, twice or not a string, must not cost the event
            // its time and record)
            let view = View::read(json, Reading::default());
            platform_line(view.event_type(json).unwrap_or(""), r.get()).map(Cow::Owned)
        }
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

/// A platform event (its `type` and `record`) as the line CloudWatch shows
/// for it, byte for byte as Lambda writes them to CloudWatch Logs:
/// - `platform.initStart`: `INIT_START Runtime Version: …\tRuntime Version ARN: …\n`
///   (`RESTORE_START` for `platform.restoreStart`);
/// - `platform.start`: `START RequestId: … Version: …\n`;
/// - `platform.runtimeDone`: `END RequestId: …\n`;
/// - `platform.report`: `REPORT RequestId: …\tDuration: 1.23 ms\tBilled
///   Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 50 MB\t` then
///   `Init Duration: … ms\t` or `Restore Duration: … ms\tBilled Restore
///   Duration: … ms\t` where the metrics have them, then `\n`; a failed
///   invocation (a `status` other than `success`) ends `Status: timeout\n`
///   or `Status: error\tError Type: …\n` instead; a traced one (`tracing`
///   with an `X-Amzn-Trace-Id`) adds `XRAY TraceId: …\tSegmentId:
///   …\tSampled: true\t\n`;
/// - `platform.initReport`: `INIT_REPORT Init Duration: … ms\n`
///   (`RESTORE_REPORT Restore Duration:` for `platform.restoreReport`),
///   failed: `…ms\tPhase: init\tStatus: error\tError Type: …\n`.
///
/// `None` for other events (CloudWatch shows no line for them) and for a
/// record without what its line needs (request id, version, runtime
/// version, duration; a string with escapes counts as absent, see
/// `members`): those stay JSON.
pub fn platform_line(ty: &str, record: &str) -> Option<String> {
    let [id, version, status, error, metrics, tracing, runtime, arn, phase] = members(
        record,
        [
            "requestId",
            "version",
            "status",
            "errorType",
            "metrics",
            "tracing",
            "runtimeVersion",
            "runtimeVersionArn",
            "phase",
        ],
    );
    let s = &mut String::with_capacity(160);
    let failed = status.filter(|s| *s != "success");
    let metrics = metrics.unwrap_or("");
    let (what, label) = match ty {
        "platform.start" => {
            put(s, &["START RequestId: ", id?, " Version: ", version?, "\n"]);
            return Some(take(s));
        }
        "platform.runtimeDone" => {
            put(s, &["END RequestId: ", id?, "\n"]);
            return Some(take(s));
        }
        "platform.report" => {
            report(s, id?, metrics, failed, error);
            if let Some(t) = tracing {
                xray(s, t);
            }
            return Some(take(s));
        }
        "platform.initStart" | "platform.initReport" => ("INIT", "Init"),
        "platform.restoreStart" | "platform.restoreReport" => ("RESTORE", "Restore"),
        _ => return None,
    };
    if ty.ends_with("Start") {
        put(s, &[what, "_START Runtime Version: ", runtime?]);
        if let Some(arn) = arn {
            put(s, &["\tRuntime Version ARN: ", arn]);
        }
    } else {
        put(s, &[what, "_REPORT ", label, " Duration: "]);
        push_ms(s, members(metrics, ["durationMs"])[0]?, 2)?;
        s.push_str(" ms");
        if let Some(status) = failed {
            let phase = phase.unwrap_or(if what == "INIT" { "init" } else { "restore" });
            put(s, &["\tPhase: ", phase, "\tStatus: ", status]);
            if let Some(e) = error {
                put(s, &["\tError Type: ", e]);
            }
        }
    }
    s.push('\n');
    Some(take(s))
}

/// A `REPORT` line (see `platform_line`).
fn report(s: &mut String, id: &str, metrics: &str, failed: Option<&str>, error: Option<&str>) {
    put(s, &["REPORT RequestId: ", id, "\t"]);
    let figures = members(
        metrics,
        [
            "durationMs",
            "billedDurationMs",
            "memorySizeMB",
            "maxMemoryUsedMB",
            "initDurationMs",
            "restoreDurationMs",
            "billedRestoreDurationMs",
        ],
    );
    const LABELS: [(&str, usize, &str); 7] = [
        ("Duration", 2, " ms\t"),
        ("Billed Duration", 0, " ms\t"),
        ("Memory Size", 0, " MB\t"),
        ("Max Memory Used", 0, " MB\t"),
        ("Init Duration", 2, " ms\t"),
        ("Restore Duration", 2, " ms\t"),
        ("Billed Restore Duration", 0, " ms\t"),
    ];
    for ((label, decimals, unit), n) in LABELS.into_iter().zip(figures) {
        let Some(n) = n else { continue };
        let at = s.len();
        put(s, &[label, ": "]);
        match push_ms(s, n, decimals) {
            Some(()) => s.push_str(unit),
            None => s.truncate(at),
        }
    }
    if let Some(status) = failed {
        put(s, &["Status: ", status]);
        // (CloudWatch names no error type for a timeout)
        if let Some(e) = error.filter(|_| status != "timeout") {
            put(s, &["\tError Type: ", e]);
        }
    }
    s.push('\n');
}

fn put(s: &mut String, parts: &[&str]) {
    parts.iter().for_each(|p| s.push_str(p));
}

fn take(s: &mut String) -> String {
    std::mem::take(s)
}

/// `XRAY TraceId: <root>\tSegmentId: <parent>\tSampled: true\t\n` of a
/// report's `tracing` (an `X-Amzn-Trace-Id` header with a `Root`; the
/// segment is the header's `Parent`, else the record's `spanId`).
fn xray(s: &mut String, tracing: &str) {
    let [span, ty, value] = members(tracing, ["spanId", "type", "value"]);
    let Some(header) = value.filter(|_| ty == Some("X-Amzn-Trace-Id")) else {
        return;
    };
    let part = |key: &str| {
        let mut parts = header.split(';').filter_map(|p| p.trim().split_once('='));
        parts.find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim())
    };
    let (Some(root), Some(segment)) = (part("Root"), part("Parent").or(span)) else {
        return;
    };
    let sampled = if part("Sampled") == Some("1") {
        "true"
    } else {
        "false"
    };
    put(s, &["XRAY TraceId: ", root, "\tSegmentId: ", segment]);
    put(s, &["\tSampled: ", sampled, "\t\n"]);
}

/// A JSON number as CloudWatch prints it: rounded to `decimals` (0 or 2)
/// places (without the standard library's float formatting, which would
/// cost the binary kilobytes). `None` if not a number from 0 to 2^53.
fn push_ms(s: &mut String, number: &str, decimals: usize) -> Option<()> {
    let n: f64 = number.parse().ok()?;
    let scale = if decimals == 2 { 100.0 } else { 1.0 };
    let v = (n * scale).round();
    if !(0.0..=9_007_199_254_740_992.0).contains(&v) {
        return None;
    }
    let v = v as u64;
    let _ = match decimals {
        2 => write!(s, "{}.{:02}", v / 100, v % 100),
        _ => write!(s, "{v}"),
    };
    Some(())
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
    let (secs, nanos) = crate::time::epoch(time)?;
    secs.checked_mul(1000)?
        .checked_add(u64::from(nanos / 1_000_000))
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
        serde_json::from_str(&log_event(json, kind, Platform::Json, 7, 42, 1 << 20)).unwrap()
    }

    #[test]
    fn odd_heads_keep_time_and_record_and_far_times_stay_exact() {
        // A `type` twice (only a stranger on the port sends that): the
        // time and the line are still read, not replaced by now and the
        // whole event.
        let e = event(
            r#"{"time":"2026-11-30T00:00:01.234Z","type":"function","type":"function","record":"x"}"#,
            Kind::Function,
        );
        assert_eq!(
            (&e["timestamp"], &e["message"]),
            (&1_795_996_801_234u64.into(), &"x".into())
        );
        // Past the year 2554 nanoseconds overflow 64 bits; milliseconds do not.
        assert_eq!(
            epoch_millis("3000-01-01T00:00:00.5Z"),
            Some(32_503_680_000_500)
        );
    }

    /// `platform_line` of a record.
    fn line(ty: &str, record: &str) -> Option<String> {
        platform_line(&format!("platform.{ty}"), record)
    }

    // The expected lines are CloudWatch's own, from AWS's documentation
    // (`aws logs get-log-events` of a Lambda function's stream in the
    // Lambda Developer Guide's logging pages; its "Example log format" for
    // the XRAY line, tabs as in the others) and from CloudWatch output
    // published by users (a timeout, an out-of-memory error, a failed
    // init, INIT_START), each record the Telemetry API event of the same
    // invocation.

    #[test]
    fn start_end_and_report_as_cloudwatch_writes_them() {
        let id = "4ce9340a-b765-490f-ad8a-02ab3415e2bf";
        let start = format!(r#"{{"requestId":"{id}","version":"$LATEST"}}"#);
        assert_eq!(
            line("start", &start).unwrap(),
            format!("START RequestId: {id} Version: $LATEST\n")
        );
        let done =
            format!(r#"{{"requestId":"{id}","status":"success","metrics":{{"durationMs":20.1}}}}"#);
        assert_eq!(
            line("runtimeDone", &done).unwrap(),
            format!("END RequestId: {id}\n")
        );
        let report = r#"{"requestId":"8f507cfc-xmpl-4697-b07a-ac58fc914c95","status":"success",
            "metrics":{"durationMs":15.74,"billedDurationMs":16,"memorySizeMB":128,"maxMemoryUsedMB":56,"initDurationMs":130.49},
            "tracing":{"spanId":"5a2b8c1d9e0f3a4b","type":"X-Amzn-Trace-Id","value":"Root=1-5e34a614-10bdxmplf1fb44f07bc535a1;Parent=07f5xmpl2d1f6f85;Sampled=1"}}"#;
        assert_eq!(
            line("report", report).unwrap(),
            "REPORT RequestId: 8f507cfc-xmpl-4697-b07a-ac58fc914c95\tDuration: 15.74 ms\t\
             Billed Duration: 16 ms\tMemory Size: 128 MB\tMax Memory Used: 56 MB\t\
             Init Duration: 130.49 ms\t\n\
             XRAY TraceId: 1-5e34a614-10bdxmplf1fb44f07bc535a1\tSegmentId: 07f5xmpl2d1f6f85\tSampled: true\t\n"
        );
        // Whole numbers with their two places; not sampled; a warm start.
        let report = r#"{"requestId":"972f23e6-efab-4897-80a0-12b8f8a28190","status":"success",
            "metrics":{"durationMs":100,"billedDurationMs":200,"memorySizeMB":128,"maxMemoryUsedMB":75},
            "tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5d88ad26-af7e1cf86161c0887567eed0;Parent=2ea934c013374041;Sampled=0"}}"#;
        assert_eq!(
            line("report", report).unwrap(),
            "REPORT RequestId: 972f23e6-efab-4897-80a0-12b8f8a28190\tDuration: 100.00 ms\t\
             Billed Duration: 200 ms\tMemory Size: 128 MB\tMax Memory Used: 75 MB\t\n\
             XRAY TraceId: 1-5d88ad26-af7e1cf86161c0887567eed0\tSegmentId: 2ea934c013374041\tSampled: false\t\n"
        );
    }

    #[test]
    fn failed_invocations_end_with_their_status() {
        let timeout = r#"{"requestId":"6960f94b-add0-473c-ab1a-f854a3f92817","status":"timeout","errorType":"Sandbox.Timedout",
            "metrics":{"durationMs":3000.0,"billedDurationMs":3000,"memorySizeMB":128,"maxMemoryUsedMB":35}}"#;
        // (CloudWatch's timeout line shows no error type)
        assert_eq!(
            line("report", timeout).unwrap(),
            "REPORT RequestId: 6960f94b-add0-473c-ab1a-f854a3f92817\tDuration: 3000.00 ms\t\
             Billed Duration: 3000 ms\tMemory Size: 128 MB\tMax Memory Used: 35 MB\tStatus: timeout\n"
        );
        let oom = r#"{"requestId":"68038378-e817-489b-97dc-1709db3d7631","status":"error","errorType":"Runtime.OutOfMemory",
            "metrics":{"durationMs":8948.731,"billedDurationMs":8949,"memorySizeMB":2048,"maxMemoryUsedMB":2048,"initDurationMs":495.038}}"#;
        assert_eq!(
            line("report", oom).unwrap(),
            "REPORT RequestId: 68038378-e817-489b-97dc-1709db3d7631\tDuration: 8948.73 ms\t\
             Billed Duration: 8949 ms\tMemory Size: 2048 MB\tMax Memory Used: 2048 MB\t\
             Init Duration: 495.04 ms\tStatus: error\tError Type: Runtime.OutOfMemory\n"
        );
        let init = r#"{"initializationType":"on-demand","phase":"invoke","status":"error","errorType":"Runtime.Unknown","metrics":{"durationMs":998.147}}"#;
        assert_eq!(
            line("initReport", init).unwrap(),
            "INIT_REPORT Init Duration: 998.15 ms\tPhase: invoke\tStatus: error\tError Type: Runtime.Unknown\n"
        );
    }

    #[test]
    fn init_and_restore_lines() {
        let arn = "arn:aws:lambda:sa-east-1::runtime:a3304f2b48f740276b97ad9c52a9cc36a0bd9b44fecf74d0f1416aafb74e92fc";
        let start = format!(
            r#"{{"initializationType":"on-demand","phase":"init","runtimeVersion":"python:3.11.v25","runtimeVersionArn":"{arn}","functionName":"f","functionVersion":"$LATEST"}}"#
        );
        assert_eq!(
            line("initStart", &start).unwrap(),
            format!("INIT_START Runtime Version: python:3.11.v25\tRuntime Version ARN: {arn}\n")
        );
        assert_eq!(
            line("restoreStart", &start).unwrap(),
            format!("RESTORE_START Runtime Version: python:3.11.v25\tRuntime Version ARN: {arn}\n")
        );
        let ok = r#"{"initializationType":"provisioned-concurrency","phase":"init","status":"success","metrics":{"durationMs":1450.322}}"#;
        assert_eq!(
            line("initReport", ok).unwrap(),
            "INIT_REPORT Init Duration: 1450.32 ms\n"
        );
        let restored = r#"{"status":"success","metrics":{"durationMs":474.156}}"#;
        assert_eq!(
            line("restoreReport", restored).unwrap(),
            "RESTORE_REPORT Restore Duration: 474.16 ms\n"
        );
        let report = r#"{"requestId":"0e5c8424","status":"success","metrics":{"durationMs":159.87,"billedDurationMs":278,
            "memorySizeMB":1024,"maxMemoryUsedMB":88,"restoreDurationMs":562.43,"billedRestoreDurationMs":118}}"#;
        assert_eq!(
            line("report", report).unwrap(),
            "REPORT RequestId: 0e5c8424\tDuration: 159.87 ms\tBilled Duration: 278 ms\t\
             Memory Size: 1024 MB\tMax Memory Used: 88 MB\tRestore Duration: 562.43 ms\t\
             Billed Restore Duration: 118 ms\t\n"
        );
    }

    #[test]
    fn events_without_a_line_stay_json() {
        for (ty, record) in [
            ("start", r#"{"version":"$LATEST"}"#),
            ("start", r#"{"requestId":"r"}"#),
            (
                "start",
                r#"{"requestId":"r","requestId":"s","version":"1"}"#,
            ),
            ("runtimeDone", r#""text""#),
            ("report", r#"{"status":"success"}"#),
            ("initStart", r#"{"runtimeVersionArn":"arn"}"#),
            ("initReport", r#"{"metrics":{"durationMs":"soon"}}"#),
            ("initRuntimeDone", r#"{"status":"success"}"#),
            (
                "telemetrySubscription",
                r#"{"name":"x","state":"Subscribed","types":["platform"]}"#,
            ),
            (
                "logsDropped",
                r#"{"reason":"r","droppedRecords":1,"droppedBytes":2}"#,
            ),
            (
                "extension",
                r#"{"name":"x","state":"Ready","events":["INVOKE"]}"#,
            ),
            ("somethingNew", r#"{"requestId":"r"}"#),
        ] {
            assert_eq!(line(ty, record), None, "{ty} {record}");
        }
        // A figure that is not a number is left out; a report without
        // metrics still names its request; a string with escapes (never
        // in Lambda's values) counts as absent.
        let odd = r#"{"requestId":"r1","metrics":{"durationMs":"x","billedDurationMs":-1,"memorySizeMB":128}}"#;
        assert_eq!(
            line("report", odd).unwrap(),
            "REPORT RequestId: r1\tMemory Size: 128 MB\t\n"
        );
        assert_eq!(
            line("start", r#"{"requestId":"r\u0031","version":"1"}"#),
            None
        );
        assert_eq!(
            line("report", r#"{"requestId":"r","status":"failure"}"#).unwrap(),
            "REPORT RequestId: r\tStatus: failure\n"
        );
        let e = |platform| {
            let json = r#"{"time":"2026-11-30T01:02:03.456Z","type":"platform.start","record":{"requestId":"r","version":"7"}}"#;
            let s = log_event(json, Kind::Start, platform, 7, 1, 1 << 20);
            serde_json::from_str::<serde_json::Value>(&s).unwrap()["message"].clone()
        };
        assert_eq!(e(Platform::Text), "START RequestId: r Version: 7\n");
        assert!(e(Platform::Json).as_str().unwrap().starts_with("{\"time\""));
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
        let s = log_event(&ev, Kind::Function, Platform::Text, 7, 1, 4000);
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
                log_event(&ev, Kind::Function, Platform::Text, 7, i, 1 << 20).into_bytes(),
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
