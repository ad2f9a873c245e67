//! Property tests: the telemetry body splitter, oversized-event fragments,
//! batching and the configuration parser, run on generated input. Failing
//! cases are kept in `proptest-regressions/` and replayed first on every run.
//! `PROPTEST_CASES` bounds the run (256 cases per property by default).

use proptest::prelude::*;

use crate::config;
use crate::lambda::telemetry;
use crate::records::queue::{fit_event, Queue, Record, RequestLimits};

/// Arbitrary JSON text, nested a few levels, with odd strings.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[ -~]{0,20}".prop_map(|s| format!("\"\\u00e9{}\"", s.replace(['"', '\\'], ""))),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(" , "))),
            prop::collection::vec(("[a-zA-Z]{1,8}", inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

proptest! {
    #[test]
    fn split_returns_each_element_verbatim(elems in prop::collection::vec(json_value(), 0..8), ws in "[ \n\t]{0,3}") {
        let body = format!("[{ws}{}{ws}]", elems.join(&format!("{ws},{ws}")));
        let events = telemetry::split(body.as_bytes()).unwrap();
        let got: Vec<&str> = events.iter().map(|e| &*e.json).collect();
        let want: Vec<&str> = elems.iter().map(String::as_str).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn unparsed_marker_is_valid_json(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let e = telemetry::unparsed(&body, "reason", std::time::SystemTime::now());
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        prop_assert_eq!(v["record"]["bytes"].as_u64(), Some(body.len() as u64));
    }

    #[test]
    fn batches_respect_limits_and_order(sizes in prop::collection::vec(1usize..3000, 0..300),
                                        max_records in 1usize..50, max_bytes in 3005usize..20000) {
        let limits = RequestLimits { max_records, max_bytes };
        let mut q = Queue::default();
        for (i, n) in sizes.iter().enumerate() {
            let mut data = (i as u32).to_be_bytes().to_vec();
            data.resize(*n + 4, b'x');
            q.push(Record::new(data, "k"));
        }
        let mut next = 0u32;
        while !q.is_empty() {
            let before = q.bytes();
            let b = q.take_batch(limits);
            prop_assert!(!b.is_empty() && b.len() <= max_records);
            let bytes: usize = b.iter().map(Record::size).sum();
            prop_assert!(bytes <= max_bytes);
            prop_assert_eq!(q.bytes(), before - bytes);
            for r in b {
                prop_assert_eq!(u32::from_be_bytes(r.data[..4].try_into().unwrap()), next);
                next += 1;
            }
        }
        prop_assert_eq!(next as usize, sizes.len());
    }

    #[test]
    fn config_parser_names_the_bad_variable(var in prop::sample::select(all_variables()), value in any::<String>()) {
        let get = |k: &str| -> Option<String> {
            match k {
                _ if k == var => Some(value.clone()),
                "KINESIS_TELEMETRY_STREAM" => Some("s".into()),
                "AWS_REGION" => Some("us-east-1".into()),
                "AWS_ACCESS_KEY_ID" => Some("a".into()),
                "AWS_SECRET_ACCESS_KEY" => Some("b".into()),
                _ => None,
            }
        };
        if let Err(errors) = config::from_env(&get) {
            for e in &errors.errors {
                prop_assert!(e.to_string().contains(&e.var));
            }
            prop_assert!(errors.errors.iter().any(|e| e.var == var
                || (var == "KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST" && e.var == "KINESIS_TELEMETRY_MAX_RECORD_BYTES")));
        }
    }
}

/// Runs `test` on `cases` values of `strategy`; returns how many took each
/// of the two branches the test reports (true, false), so a test can show
/// that both ran.
fn count_branches<S: Strategy>(
    strategy: S,
    test: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) -> (u32, u32) {
    use std::cell::Cell;
    let (yes, no) = (Cell::new(0u32), Cell::new(0u32));
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&strategy, |v| {
            let branch = test(v)?;
            let c = if branch { &yes } else { &no };
            c.set(c.get() + 1);
            Ok(())
        })
        .unwrap();
    (yes.get(), no.get())
}

/// A valid body of events, then up to three single-byte edits (delete,
/// insert, overwrite), so that both parsed and refused bodies come up.
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(json_value(), 0..8),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..4),
    )
        .prop_map(|(elems, edits)| {
            let mut body = format!("[{}]", elems.join(",")).into_bytes();
            for (at, op, byte) in edits {
                let i = at.index(body.len() + 1);
                match op {
                    0 if i < body.len() => {
                        body.remove(i);
                    }
                    1 => body.insert(i, byte),
                    _ if i < body.len() => body[i] = byte,
                    _ => {}
                }
            }
            body
        })
}

#[test]
fn split_never_panics_and_returns_substrings() {
    let (parsed, refused) = count_branches(mutated_body(), |body| {
        let Ok(events) = telemetry::split(&body) else {
            return Ok(false);
        };
        let text = std::str::from_utf8(&body).unwrap();
        for e in events {
            prop_assert!(text.contains(&*e.json));
            // Valid JSON text (a grammar check: 1e320943931260302950 is valid
            // JSON that serde_json's Value cannot hold, and is kept verbatim).
            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&e.json).is_ok());
        }
        Ok(true)
    });
    // Both branches ran, the checked one often.
    assert!(
        parsed >= 64 && refused >= 16,
        "parsed {parsed}, refused {refused}"
    );
}

/// An event's JSON, its partition key's length and the record limit, and
/// whether the event must be split: each side of the limit generated by
/// construction (ASCII or any characters, up to 4 bytes each, the limit's
/// own edges included), so that every run covers both branches whatever the
/// random seed (counting what a mixed generator happened to give did not:
/// about 1 run in 10 fell short of its bound).
fn event_against_limit(split: bool) -> impl Strategy<Value = (String, usize, usize)> {
    (1usize..257, 1024usize..4096).prop_flat_map(move |(key_len, max)| {
        // What the event may take and still fit in one record.
        let room = max - key_len;
        let chars = prop::collection::vec(any::<char>(), 250..5000);
        let json = if split {
            prop_oneof![
                Just("x".repeat(room + 1)).boxed(),
                proptest::string::string_regex(&format!("[ -~]{{{},20000}}", room + 1))
                    .unwrap()
                    .boxed(),
                chars.prop_map(move |c| longer_than(&c, room)).boxed(),
            ]
            .boxed()
        } else {
            prop_oneof![
                Just("x".repeat(room)).boxed(),
                "[ -~]{0,64}".boxed(),
                chars.prop_map(move |c| at_most(&c, room)).boxed(),
            ]
            .boxed()
        };
        (json, Just(key_len), Just(max))
    })
}

/// `chars` repeated until more than `bytes` bytes.
fn longer_than(chars: &[char], bytes: usize) -> String {
    let mut s = String::new();
    for c in chars.iter().cycle() {
        s.push(*c);
        if s.len() > bytes {
            break;
        }
    }
    s
}

/// The first of `chars` that take at most `bytes` bytes.
fn at_most(chars: &[char], bytes: usize) -> String {
    let mut s = String::new();
    for c in chars {
        if s.len() + c.len_utf8() > bytes {
            break;
        }
        s.push(*c);
    }
    s
}

#[test]
fn fragments_fit_and_rebuild() {
    for split in [true, false] {
        let (split_cases, whole_cases) =
            count_branches(event_against_limit(split), |(json, key_len, max)| {
                let parts = fit_event(&json, key_len, max, || "id".into());
                if parts.len() == 1 && &*parts[0] == json.as_bytes() {
                    prop_assert!(json.len() + key_len <= max);
                    return Ok(false);
                }
                let mut rebuilt = String::new();
                for p in &parts {
                    prop_assert!(p.len() + key_len <= max, "fragment of {} bytes", p.len());
                    let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                    rebuilt.push_str(v["data"].as_str().unwrap());
                }
                prop_assert_eq!(rebuilt, json);
                Ok(true)
            });
        // Every case took the branch its side of the limit calls for.
        let (took, other) = if split {
            (split_cases, whole_cases)
        } else {
            (whole_cases, split_cases)
        };
        assert!(took > 0 && other == 0, "split {split}: {took} / {other}");
    }
}

/// Every variable the configuration defines.
fn all_variables() -> Vec<&'static str> {
    config::SETTINGS.iter().map(|s| s.var).collect()
}

/// One telemetry event of each kind the extension forwards (function and
/// extension lines in text and JSON form, platform events, unknown types),
/// with odd text in it.
fn any_event() -> impl Strategy<Value = String> {
    let ty = prop::sample::select(vec![
        "function",
        "extension",
        "platform.start",
        "platform.runtimeDone",
        "platform.report",
        "platform.logsDropped",
        "platform.initStart",
        "something.else",
    ]);
    let text = any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap());
    let record = prop_oneof![text, json_value()];
    (ty, 0u64..4_000_000_000_000, 0u32..1000, record).prop_map(|(ty, secs, ms, record)| {
        let t = crate::time::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs / 1000),
        );
        let time = format!("{}.{ms:03}Z", &t[..19]);
        format!(r#"{{"time":"{time}","type":"{ty}","record":{record}}}"#)
    })
}

proptest! {
    /// Every format gives the consumer back exactly the queued records,
    /// each once and in order, whatever the events and limits; `cwlogs`
    /// log events carry each line as CloudWatch shows it, `otlp-json` log
    /// records each line or record as their body, with its time and type.
    #[test]
    fn every_format_round_trips_every_event_kind(
        events in prop::collection::vec(any_event(), 1..40),
        max_records in 1usize..20,
        max_record in 6144usize..20000,
    ) {
        use crate::records::format::{self, cwlogs, tests::ALL, Format};
        use crate::records::shape::{Shaped, ShapeSettings, Shaper};
        let body = std::sync::Arc::new(format!("[{}]", events.join(",")).into_bytes());
        for fmt in ALL {
            let cfg = ShapeSettings {
                types: crate::lambda::extensions_api::Types { platform: true, function: true, extension: true },
                platform_events: None,
                min_level: None,
                enrich: false,
                partition_key: crate::records::partition::PartitionKeyMode::Environment,
                max_record_bytes: max_record,
                redact: None,
                sampling: false,
                own_emf: false,
                format: fmt,
                cwlogs_platform: cwlogs::Platform::Text,
                otlp_gzip: false,
                tags: Vec::new(),
                memory_mb: None,
            };
            let stats = std::sync::Arc::new(crate::stats::Stats::default());
            let model = crate::lambda::model::Model::Default;
            let mut shaper = Shaper::new(&cfg, model, "env", crate::rng::Rng::seeded(1), &[], stats);
            let split = telemetry::split_body(&body, crate::records::shape::reading(&cfg, model)).unwrap();
            let mut q = Queue::default();
            for e in split {
                match shaper.shape(e, None).0 {
                    Shaped::Record(r) => q.push(r),
                    Shaped::Fragments(rs) => rs.into_iter().for_each(|r| q.push(r)),
                    Shaped::Filtered | Shaped::OwnEmf => {}
                }
            }
            let queued: Vec<Vec<u8>> = q.drain().iter().map(|r| r.data.to_vec()).collect();
            for d in &queued {
                q.push(Record::new(d.clone(), "k"));
            }
            let packer = fmt.packer(None, None);
            let limits = RequestLimits { max_records, max_bytes: 5 * 1024 * 1024 };
            let mut got = Vec::new();
            while !q.is_empty() {
                for w in format::take(&mut q, limits, &packer, max_record) {
                    prop_assert!(w.size() <= max_record, "{:?}: {} > {max_record}", fmt, w.size());
                    got.extend(packer.decode(w.data()));
                }
            }
            prop_assert_eq!(&got, &queued, "{:?}", fmt);
            if fmt == Format::Cwlogs {
                for (raw, logged) in events.iter().zip(&got) {
                    let e: serde_json::Value = serde_json::from_str(raw).unwrap();
                    let l: serde_json::Value = serde_json::from_slice(logged).unwrap();
                    let message = l["message"].as_str().unwrap();
                    match (e["type"].as_str().unwrap(), &e["record"]) {
                        ("function" | "extension", serde_json::Value::String(s)) => prop_assert_eq!(message, s),
                        ("function" | "extension", r) => {
                            prop_assert_eq!(&serde_json::from_str::<serde_json::Value>(message).unwrap(), r)
                        }
                        // (whatever the record: a line where it has one, no panic)
                        (ty, _) if ty.starts_with("platform.") => {
                            let record = &raw[raw.find(",\"record\":").unwrap() + 10..raw.len() - 1];
                            let line = cwlogs::platform_line(ty, record);
                            prop_assert_eq!(message, line.as_deref().unwrap_or(raw))
                        }
                        _ => prop_assert_eq!(message, raw),
                    }
                    let time = e["time"].as_str().unwrap();
                    let secs = crate::time::parse_rfc3339(time).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                    let ms = secs * 1000 + time[20..23].parse::<u64>().unwrap();
                    prop_assert_eq!(l["timestamp"].as_u64(), Some(ms));
                    prop_assert_eq!(l["id"].as_str().unwrap().len(), 56);
                }
            }
            if fmt == Format::OtlpJson {
                for (raw, logged) in events.iter().zip(&got) {
                    let e: serde_json::Value = serde_json::from_str(raw).unwrap();
                    let l: serde_json::Value = serde_json::from_slice(logged).unwrap();
                    let body = l["body"]["stringValue"].as_str().unwrap();
                    let ty = e["type"].as_str().unwrap();
                    match (ty, &e["record"]) {
                        ("function" | "extension", serde_json::Value::String(s)) => prop_assert_eq!(body, s),
                        (_, r) => prop_assert_eq!(&serde_json::from_str::<serde_json::Value>(body).unwrap(), r),
                    }
                    let named = (!matches!(ty, "function" | "extension")).then_some(ty);
                    prop_assert_eq!(l["eventName"].as_str(), named);
                    let time = e["time"].as_str().unwrap();
                    let ns = crate::time::epoch_nanos(time).unwrap().to_string();
                    prop_assert_eq!(l["timeUnixNano"].as_str(), Some(ns.as_str()));
                }
            }
        }
    }
}
