//! Telemetry API bodies: splitting a POSTed JSON array into events, byte for
//! byte, and recognising the few platform events the lifecycle depends on.
//!
//! An event's JSON is kept exactly as Lambda sent it; what the stages need
//! of it is read once, here, into its `View` (`lambda/view.rs`). Unknown
//! types and fields are carried along untouched. A body that is not a JSON array becomes
//! one marker event holding the body, so nothing is lost and Lambda is not
//! asked to redeliver it.

use std::sync::Arc;

use serde_json::value::RawValue;

pub use crate::lambda::view::Kind;
use crate::lambda::view::{Reading, View};
use crate::slices::Text;

/// Event type of the marker that carries a body we could not split.
pub const UNPARSED_TYPE: &str = "kinesis-telemetry-extension.unparsed";

/// One telemetry event, its JSON verbatim (a range of the POSTed body), and
/// what the stages need of it, read once when the body was split.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub json: Text,
    pub view: View,
}

impl Event {
    /// Reads one event from its raw JSON, which lies inside `body`.
    pub fn from_raw(raw: &RawValue, body: &Arc<Vec<u8>>, reading: Reading) -> Event {
        let json = raw.get();
        Event {
            json: Text::slice_of(body, json),
            view: View::read(json, reading),
        }
    }

    /// The request the event names (see `View`).
    pub fn request_id(&self) -> Option<&str> {
        self.view.request_id(&self.json)
    }
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

/// Splits a Telemetry API body (a JSON array) into its events, each read
/// as `reading` asks. Each event is a range of `body`, which the events
/// share.
pub fn split_body(body: &Arc<Vec<u8>>, reading: Reading) -> Result<Vec<Event>, SplitError> {
    let raws: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| SplitError(e.to_string()))?;
    Ok(raws
        .into_iter()
        .map(|raw| Event::from_raw(raw, body, reading))
        .collect())
}

/// `split_body` of a copy of `body`, everything read.
#[cfg(test)]
pub fn split(body: &[u8]) -> Result<Vec<Event>, SplitError> {
    split_body(&Arc::new(body.to_vec()), Reading::ALL)
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
        view: View::of_kind(Kind::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let kind = |i: usize| events[i].view.kind;
        assert_eq!(kind(0), Kind::Function);
        assert_eq!(kind(1), Kind::RuntimeDone);
        assert_eq!(events[1].request_id(), Some("r-1"));
        assert_eq!(kind(2), Kind::OtherPlatform);
        assert_eq!(events[2].request_id(), Some("r-2"));
        let ty = events[2].view.platform_type(&events[2].json);
        assert_eq!(ty, Some("platform.somethingNew"));
        assert!(events[2].json.contains(r#""new":true"#));
        assert_eq!(kind(3), Kind::Extension);
        assert!(events[3].json.contains("é 🎉"));
        assert_eq!(kind(4), Kind::Report);
        assert_eq!(&*events[5].json, "42");
        assert_eq!(kind(5), Kind::Other);
        assert_eq!(kind(6), Kind::Other);
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
                                                         // JSON text inside a string record is read here too (its
                                                         // request id): nested as deep as serde_json allows, or deeper.
                for depth in [126, 100_000] {
                    let text = format!(
                        r#"{{\"requestId\":\"r\",\"a\":{}1{}}}"#,
                        "[".repeat(depth),
                        "]".repeat(depth)
                    );
                    let body = format!(r#"[{{"type":"function","record":"{text}"}}]"#);
                    let e = split(body.as_bytes()).unwrap().remove(0);
                    assert_eq!(e.request_id(), Some("r"));
                }
            })
            .unwrap();
        t.join().unwrap();
    }

    #[test]
    fn events_stay_small() {
        // Most events are log lines: what few have is boxed apart (view.rs).
        assert!(std::mem::size_of::<Event>() <= 56);
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
