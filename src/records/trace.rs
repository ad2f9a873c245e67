//! The trace an invocation belongs to, for the envelope and `otlp-json`:
//! read from `platform.start`'s `tracing` (an `X-Amzn-Trace-Id` header,
//! `Root=1-…;Parent=…;Sampled=…`), rendered once (`Form`) as the envelope's
//! `traceId` (the X-Ray root) and `traceIdW3C` (the same id as 32 hex
//! digits), or as an OTLP log record's trace context, and remembered per
//! request id for the invocation's other records (bounded).

use std::collections::VecDeque;

use crate::json::push_string;
use crate::lambda::telemetry::Event;

/// Traces remembered at once: invocations in flight on one environment
/// (Managed Instances runs up to 64 per vCPU in one; default Lambda one).
pub const REMEMBERED: usize = 256;

/// The X-Ray root of a trace header, and the same id in W3C form; `None`
/// when the header has no well-formed root (`1-` + 8 hex + `-` + 24 hex,
/// not all zeros).
pub fn ids(header: &str) -> Option<(&str, String)> {
    let root = field(header, "Root")?;
    let b = root.as_bytes();
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    let ok =
        b.len() == 35 && b.starts_with(b"1-") && b[10] == b'-' && hex(&b[2..10]) && hex(&b[11..]);
    let w3c = ok.then(|| format!("{}{}", &root[2..10], &root[11..]).to_ascii_lowercase())?;
    (w3c.bytes().any(|c| c != b'0')).then_some((root, w3c))
}

/// A field's value in a trace header (`None` when absent).
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let (_, v) = header
        .split(';')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)?;
    Some(v.trim())
}

/// The header's `Parent` as a W3C span id (16 hex digits, not all zeros).
fn parent(header: &str) -> Option<String> {
    let p = field(header, "Parent")?;
    let ok = p.len() == 16 && p.bytes().all(|c| c.is_ascii_hexdigit());
    (ok && p.bytes().any(|c| c != b'0')).then(|| p.to_ascii_lowercase())
}

/// How an invocation's trace goes into its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The envelope's `,"traceId":…,"traceIdW3C":…`.
    Envelope,
    /// An OTLP log record's `"flags":…,"traceId":…[,"spanId":…]`: the W3C
    /// trace id, the header's `Parent` as the span id (the segment the
    /// function ran in), and W3C's sampled flag from `Sampled=1`.
    Otlp,
}

/// A `platform.start` event's trace in `form`, ready to splice; `None`
/// when it carries no usable trace.
pub fn of_start(e: &Event, form: Form) -> Option<Box<str>> {
    let header = e.view.trace_header(&e.json)?;
    let (root, w3c) = ids(&header)?;
    let s = match form {
        Form::Envelope => {
            let mut s = String::from(",\"traceId\":");
            push_string(&mut s, root);
            s.push_str(",\"traceIdW3C\":");
            push_string(&mut s, &w3c);
            s
        }
        Form::Otlp => {
            let sampled = field(&header, "Sampled") == Some("1");
            let mut s = format!("\"flags\":{},\"traceId\":\"{w3c}\"", u8::from(sampled));
            if let Some(span) = parent(&header) {
                s.push_str(&format!(",\"spanId\":\"{span}\""));
            }
            s
        }
    };
    Some(s.into())
}

/// Each recent request's envelope fragment (`of_start`), the newest first
/// found; the oldest forgotten past `REMEMBERED`.
#[derive(Default)]
pub struct Traces(VecDeque<(Box<str>, Box<str>)>);

impl Traces {
    pub fn insert(&mut self, request: &str, fragment: Box<str>) {
        self.0.retain(|(r, _)| &**r != request);
        if self.0.len() >= REMEMBERED {
            self.0.pop_back();
        }
        self.0.push_front((request.into(), fragment));
    }

    pub fn get(&self, request: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(r, _)| &**r == request)
            .map(|(_, f)| &**f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        let body = format!("[{json}]");
        crate::lambda::telemetry::split(body.as_bytes())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn the_root_and_its_w3c_form() {
        let h = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        assert_eq!(
            ids(h),
            Some((
                "1-5759e988-bd862e3fe1be46a994272793",
                "5759e988bd862e3fe1be46a994272793".to_string()
            ))
        );
        // Anywhere in the header, spaced, upper-case hex lowered for W3C.
        let h = "Sampled=0; Root=1-5759E988-BD862E3FE1BE46A994272793 ;Parent=1";
        assert_eq!(ids(h).unwrap().1, "5759e988bd862e3fe1be46a994272793");
    }

    #[test]
    fn malformed_headers_have_no_ids() {
        for h in [
            "",
            "Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=",
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a99427279",
            "Root=1-5759e988-bd862e3fe1be46a9942727933",
            "Root=1-5759e988bd862e3fe1be46a994272793x",
            "Root=1-5759e98g-bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a99427279z",
            "Root=1-00000000-000000000000000000000000",
            "Root=1-5759e988_bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a9942727é",
            "Root",
        ] {
            assert_eq!(ids(h), None, "{h}");
        }
    }

    #[test]
    fn platform_start_gives_the_envelope_fields() {
        let start = r#"{"time":"t","type":"platform.start","record":{"requestId":"r","tracing":{"spanId":"s","type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=5;Sampled=1"}}}"#;
        assert_eq!(
            of_start(&event(start), Form::Envelope).as_deref(),
            Some(
                r#","traceId":"1-5759e988-bd862e3fe1be46a994272793","traceIdW3C":"5759e988bd862e3fe1be46a994272793""#
            )
        );
        for none in [
            r#"{"type":"platform.start","record":{"requestId":"r"}}"#,
            r#"{"type":"platform.start","record":{"tracing":{"type":"other","value":"Root=1-5759e988-bd862e3fe1be46a994272793"}}}"#,
            r#"{"type":"platform.start","record":{"tracing":{"type":"X-Amzn-Trace-Id","value":"Root=bad"}}}"#,
            r#"{"type":"platform.start","record":{"tracing":{"type":"X-Amzn-Trace-Id","value":7}}}"#,
            r#"{"type":"platform.start","record":"text"}"#,
            r#"{"type":"platform.start","record":{"tracing":"Root=1-5759e988-bd862e3fe1be46a994272793"}}"#,
            r#"{"type":"function","record":{"tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793"}}}"#,
        ] {
            assert_eq!(of_start(&event(none), Form::Envelope), None, "{none}");
            assert_eq!(of_start(&event(none), Form::Otlp), None, "{none}");
        }
        // Escaped strings are decoded; a key twice is no value.
        let escaped = r#"{"type":"platform.start","record":{"tracing":{"type":"X-Amzn-Trace-\u0049d","value":"Root=1-5759e988-bd862e3fe1be46a994272793\u003bParent=1"}}}"#;
        assert!(of_start(&event(escaped), Form::Envelope).is_some());
        let twice = r#"{"type":"platform.start","record":{"tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793","value":"x"}}}"#;
        assert_eq!(of_start(&event(twice), Form::Envelope), None);
    }

    #[test]
    fn otlp_form_has_the_w3c_ids_and_sampled_flag() {
        let start = |value: &str| {
            event(&format!(
                r#"{{"type":"platform.start","record":{{"tracing":{{"type":"X-Amzn-Trace-Id","value":"{value}"}}}}}}"#
            ))
        };
        let otlp = |value: &str| of_start(&start(value), Form::Otlp).map(String::from);
        let root = "Root=1-5759E988-bd862e3fe1be46a994272793";
        assert_eq!(
            otlp(&format!("{root};Parent=53995C3F42CD8AD8;Sampled=1")).as_deref(),
            Some(
                r#""flags":1,"traceId":"5759e988bd862e3fe1be46a994272793","spanId":"53995c3f42cd8ad8""#
            )
        );
        // No usable parent: no span id; not sampled: flags 0.
        for (value, flags) in [
            (format!("{root};Sampled=0"), 0),
            (format!("{root};Parent=0000000000000000"), 0),
            (format!("{root};Parent=53995c3f42cd8ad;Sampled=1"), 1),
            (format!("{root};Parent=53995c3f42cd8adx;Sampled=1"), 1),
        ] {
            assert_eq!(
                otlp(&value),
                Some(format!(
                    r#""flags":{flags},"traceId":"5759e988bd862e3fe1be46a994272793""#
                )),
                "{value}"
            );
        }
    }

    #[test]
    fn traces_are_found_by_request_and_bounded() {
        let mut t = Traces::default();
        for i in 0..REMEMBERED + 1 {
            t.insert(&i.to_string(), i.to_string().into());
        }
        assert_eq!(t.get("0"), None);
        assert_eq!(t.get("1"), Some("1"));
        assert_eq!(
            t.get(&REMEMBERED.to_string()),
            Some(&*REMEMBERED.to_string())
        );
        t.insert("1", "again".into());
        assert_eq!((t.get("1"), t.0.len()), (Some("again"), REMEMBERED));
    }
}
