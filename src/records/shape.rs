//! From telemetry events to queued records: which events are forwarded
//! (types, platform event names, minimum log level), redaction, the optional
//! enrichment envelope (or a `cwlogs` log event, an `otlp-json` log record),
//! the partition key, and fragments for events too large for one record. Pure bookkeeping; the dispatcher owns when records
//! are sent (and which sampled lines are held). `ShapeSettings`: what
//! shaping is configured with.

use std::fmt::Write;
use std::sync::Arc;

use crate::json::push_string;
use crate::lambda::extensions_api::Types;
use crate::lambda::model::Model;
use crate::lambda::telemetry::{Event, Kind};
use crate::lambda::view::{Reading, View};
use crate::records::format::otlp_json::{self, Context};
use crate::records::format::{cwlogs, Format};
use crate::records::partition::{Keys, PartitionKeyMode};
use crate::records::queue::{fit_event, Record};
use crate::records::redact::{Redactor, Rules};
use crate::records::trace::{self, Traces};
use crate::rng::Rng;
use crate::slices::Text;
use crate::stats::{Counter, Stats};

/// What shaping is configured with.
#[derive(Debug, Clone)]
pub struct ShapeSettings {
    pub types: Types,
    /// Platform event names (without `platform.`) to forward; `None`: all.
    pub platform_events: Option<Vec<String>>,
    /// Index in `LEVELS` below which JSON log events are not forwarded.
    pub min_level: Option<usize>,
    pub enrich: bool,
    pub partition_key: PartitionKeyMode,
    pub max_record_bytes: usize,
    /// Redaction rules, checked; `None`: off.
    pub redact: Option<Rules>,
    /// Outcome-aware sampling is on: which invocation a log line belongs
    /// to is needed.
    pub sampling: bool,
    /// The extension writes EMF lines: its own, back as `extension`
    /// events, are not forwarded (see `dispatch::emf`).
    pub own_emf: bool,
    /// The record format: `cwlogs` records are log events (see
    /// `format::cwlogs::log_event`), `otlp-json` records log records (see
    /// `format::otlp_json::log_record`), the others events as they came.
    pub format: Format,
    /// `cwlogs`: how platform events are shown.
    pub cwlogs_platform: cwlogs::Platform,
    /// `otlp-json`: records gzip-compressed.
    pub otlp_gzip: bool,
    /// `KINESIS_TELEMETRY_TAGS`, checked, in the order given: the
    /// envelope's `tags`, or `otlp-json`'s resource attributes.
    pub tags: Vec<(String, String)>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (`otlp-json`'s `faas.max_memory`).
    pub memory_mb: Option<u64>,
}

/// What became of one event.
pub enum Shaped {
    /// Not forwarded (filtered out by configuration).
    Filtered,
    /// The extension's own EMF line, back as an `extension` event: not
    /// forwarded (see `dispatch::emf`).
    OwnEmf,
    /// One record (no allocation beyond the record's own).
    Record(Record),
    /// The fragments of an oversized event.
    Fragments(Vec<Record>),
}

/// What the shaper needs read of function and extension events (the
/// listener reads that much of each): where the record lies for redaction,
/// the level for the minimum level (and `otlp-json`'s severity), and on
/// Managed Instances the request a line names when records carry their
/// request (enrichment, `otlp-json`, or request partition keys) or sampling
/// needs to know it.
pub fn reading(cfg: &ShapeSettings, model: Model) -> Reading {
    let otlp = cfg.format == Format::OtlpJson;
    let needs_request =
        cfg.enrich || otlp || cfg.partition_key == PartitionKeyMode::Request || cfg.sampling;
    Reading {
        record: cfg.redact.is_some(),
        level: cfg.min_level.is_some() || otlp,
        request_id: model == Model::ManagedInstances && needs_request,
    }
}

pub struct Shaper {
    types: Types,
    platform_events: Option<Vec<String>>,
    min_level: Option<usize>,
    /// `"functionName":…,"functionVersion":…,…,"environmentId":…,` and
    /// `"tags":{…},` ready to splice into every envelope, when enrichment
    /// is on.
    envelope_head: Option<String>,
    /// Each recent invocation's trace (from its platform.start), by request
    /// id, when enrichment or `otlp-json` is on, in the form records carry.
    traces: Option<(Traces, trace::Form)>,
    max_record_bytes: usize,
    pub keys: Keys,
    rng: Rng,
    /// The invocation between its platform.start and platform.runtimeDone.
    invocation: Option<Box<str>>,
    /// Invocations interleave (Managed Instances): a log line belongs to
    /// the request its own record names, not to the one in progress.
    logs_name_their_request: bool,
    /// Sampling is on: `shape` says which invocation a log line belongs to.
    sampling: bool,
    redact: Option<Redactor>,
    stats: Arc<Stats>,
    /// Enveloped records shaped so far (their `id`s).
    sequence: u64,
    /// EMF is on: look for its lines among extension events.
    own_emf: bool,
    /// `cwlogs` records: the environment's number in log event ids, and
    /// how platform events are shown.
    cwlogs: Option<(u64, cwlogs::Platform)>,
    /// `otlp-json` records: the resource and scope their log records go
    /// behind.
    otlp: Option<otlp_json::Head>,
}

impl Shaper {
    /// `context`: the enrichment fields (function name, version, region,
    /// account) in envelope order (and `otlp-json`'s resource).
    pub fn new(
        cfg: &ShapeSettings,
        model: Model,
        environment: &str,
        mut rng: Rng,
        context: &[(&str, String)],
        stats: Arc<Stats>,
    ) -> Shaper {
        let keys = Keys::new(cfg.partition_key, environment, Rng::seeded(rng.next_u64()));
        let envelope_head = cfg.enrich.then(|| {
            let mut head = String::new();
            for (k, v) in context
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .chain([("environmentId", keys.environment())])
            {
                push_string(&mut head, k);
                head.push(':');
                push_string(&mut head, v);
                head.push(',');
            }
            if !cfg.tags.is_empty() {
                head.push_str("\"tags\":{");
                for (i, (k, v)) in cfg.tags.iter().enumerate() {
                    if i > 0 {
                        head.push(',');
                    }
                    push_string(&mut head, k);
                    head.push(':');
                    push_string(&mut head, v);
                }
                head.push_str("},");
            }
            head
        });
        let otlp = (cfg.format == Format::OtlpJson)
            .then(|| otlp_json::head(context, keys.environment(), cfg.memory_mb, &cfg.tags))
            .map(|h| h.gzip(cfg.otlp_gzip));
        let form = match otlp {
            Some(_) => trace::Form::Otlp,
            None => trace::Form::Envelope,
        };
        Shaper {
            types: cfg.types,
            platform_events: cfg.platform_events.clone(),
            min_level: cfg.min_level,
            traces: (cfg.enrich || otlp.is_some()).then(|| (Traces::default(), form)),
            envelope_head,
            max_record_bytes: cfg.max_record_bytes,
            keys,
            rng,
            invocation: None,
            logs_name_their_request: model == Model::ManagedInstances,
            sampling: cfg.sampling,
            // Compiled here, on the dispatcher thread: off the cold-start path.
            redact: cfg.redact.as_ref().map(|rules| {
                let counters = rules.names().into_iter().map(|n| (n, Counter::default()));
                let _ = stats.redactions.set(counters.collect());
                Redactor::new(rules)
            }),
            stats,
            sequence: 0,
            own_emf: cfg.own_emf,
            cwlogs: (cfg.format == Format::Cwlogs)
                .then(|| (cwlogs::environment_hash(environment), cfg.cwlogs_platform)),
            otlp,
        }
    }

    /// `otlp-json`: the head of its records (the packer's).
    pub fn otlp_head(&self) -> Option<&otlp_json::Head> {
        self.otlp.as_ref()
    }

    /// Shapes one event; `current` is the invocation the lifecycle is in.
    /// With sampling on, also says which invocation a log line belongs to.
    pub fn shape(&mut self, e: Event, current: Option<&str>) -> (Shaped, Option<Box<str>>) {
        let kind = e.view.kind;
        match kind {
            Kind::Start => {
                self.invocation = e.request_id().map(Box::from);
                if let (Some((traces, form)), Some(r)) = (&mut self.traces, e.request_id()) {
                    if let Some(fragment) = trace::of_start(&e, *form) {
                        traces.insert(r, fragment);
                    }
                }
            }
            Kind::RuntimeDone => self.invocation = None,
            _ => {}
        }
        // (before the filters: counted as ours whatever they say, so that
        // it never makes the periodic metrics record due)
        if self.own_emf && kind == Kind::Extension && is_own_emf(&e.json) {
            return (Shaped::OwnEmf, None);
        }
        if !self.wanted(&e) {
            return (Shaped::Filtered, None);
        }
        // Platform events name their request; logs belong to the invocation
        // in progress, if any, or on Managed Instances to the one they name.
        let inside = match kind {
            Kind::Function | Kind::Extension if self.logs_name_their_request => {
                e.request_id() // (read when `reading` says it is needed)
            }
            Kind::Function | Kind::Extension => self.invocation.as_deref(),
            _ => None,
        };
        let request = if kind.is_platform() {
            e.request_id()
        } else {
            inside
        };
        let owner = match kind {
            Kind::Function | Kind::Extension if self.sampling => inside.map(Box::from),
            _ => None,
        };
        let key = self.keys.key(request, current);
        let redacted = self.redacted(&e);
        let data: Text = match &self.envelope_head {
            _ if self.cwlogs.is_some() => {
                let json = redacted.as_deref().unwrap_or(&e.json);
                let key_len = key.len();
                Text::from(self.log_event(json, kind, key_len))
            }
            _ if self.otlp.is_some() => {
                let json = redacted.as_deref().unwrap_or(&e.json);
                let traces = self.traces.as_ref();
                let cx = Context {
                    level: e.view.level,
                    event_name: e.view.event_type(&e.json),
                    request,
                    trace: request.and_then(|r| traces?.0.get(r)),
                };
                Text::from(self.log_record(json, kind, &cx, key.len()))
            }
            None => redacted.map_or(e.json, Text::from),
            Some(head) => {
                let json = redacted.as_deref().unwrap_or(&e.json);
                let mut s = String::with_capacity(head.len() + json.len() + 80);
                s.push('{');
                s.push_str(head);
                // A stable identity: the same on every resend of this
                // record, unique in the environment (docs/delivery.md, "Duplicates").
                self.sequence += 1;
                let _ = write!(
                    s,
                    "\"id\":\"{}-{}\",",
                    self.keys.environment(),
                    self.sequence
                );
                s.push_str("\"requestId\":");
                match request {
                    Some(r) => push_string(&mut s, r),
                    None => s.push_str("null"),
                }
                // The invocation's trace: by position on default Lambda
                // (`request` is then the invocation in progress), by the
                // request a line names on Managed Instances.
                let traces = self.traces.as_ref();
                if let Some(t) = request.and_then(|r| traces?.0.get(r)) {
                    s.push_str(t);
                }
                s.push_str(",\"event\":");
                s.push_str(json);
                s.push('}');
                Text::from(s)
            }
        };
        if data.len() + key.len() <= self.max_record_bytes {
            return (Shaped::Record(Record::new(data.into_bytes(), key)), owner);
        }
        let rng = &mut self.rng;
        let parts = fit_event(&data, key.len(), self.max_record_bytes, || rng.hex(8));
        let records = parts.into_iter().map(|p| Record::new(p, key.clone()));
        (Shaped::Fragments(records.collect()), owner)
    }

    /// The extension's own record (metrics) in the record format.
    pub fn own(&mut self, r: Record) -> Record {
        if self.cwlogs.is_none() && self.otlp.is_none() {
            return r;
        }
        let json = String::from_utf8_lossy(&r.data);
        let data = match self.otlp {
            None => self.log_event(&json, Kind::Other, r.key.len()),
            Some(_) => {
                let view = View::read(&json, Reading::default());
                let cx = Context {
                    level: None,
                    event_name: view.event_type(&json),
                    request: None,
                    trace: None,
                };
                self.log_record(&json, view.kind, &cx, r.key.len())
            }
        };
        Record::new(data.into_bytes(), r.key)
    }

    /// `json` as an `otlp-json` log record, cut to fit one record with the
    /// resource around it.
    fn log_record(&self, json: &str, kind: Kind, cx: &Context, key: usize) -> String {
        let head = self.otlp.as_ref().map_or(0, otlp_json::Head::overhead);
        let max = self.max_record_bytes.saturating_sub(key + head);
        otlp_json::log_record(json, kind, cx, max)
    }

    /// `json` as a `cwlogs` log event, the next of the environment, cut to
    /// fit one record with its `DATA_MESSAGE`.
    fn log_event(&mut self, json: &str, kind: Kind, key: usize) -> String {
        self.sequence += 1;
        let max = self.max_record_bytes.saturating_sub(key + cwlogs::RESERVE);
        let (environment, platform) = self.cwlogs.unwrap_or((0, cwlogs::Platform::Json));
        cwlogs::log_event(json, kind, platform, environment, self.sequence, max)
    }

    /// A function or extension event's JSON with redaction applied (`None`
    /// when redaction is off or nothing matched).
    fn redacted(&self, e: &Event) -> Option<String> {
        let (Some(r), Kind::Function | Kind::Extension) = (&self.redact, e.view.kind) else {
            return None;
        };
        let counters = self.stats.redactions.get().map(Vec::as_slice);
        let hit = &mut |i: usize| {
            if let Some((_, c)) = counters.and_then(|c| c.get(i)) {
                c.add(1);
            }
        };
        r.redact_event(&e.json, e.view.record(&e.json), hit)
    }

    fn wanted(&self, e: &Event) -> bool {
        match e.view.kind {
            k if k.is_platform() => {
                self.types.platform
                    && match &self.platform_events {
                        None => true,
                        Some(names) => e.view.platform_type(&e.json).is_some_and(|t| {
                            let name = t.trim_start_matches("platform.");
                            names.iter().any(|w| w == name)
                        }),
                    }
            }
            Kind::Function => self.types.function && self.level_ok(e.view.level),
            Kind::Extension => self.types.extension && self.level_ok(e.view.level),
            _ => true,
        }
    }

    /// JSON-format log lines below the minimum level are dropped; text lines
    /// (no level) and unknown levels always pass.
    fn level_ok(&self, level: Option<u8>) -> bool {
        match (self.min_level, level) {
            (Some(min), Some(rank)) => usize::from(rank) >= min,
            _ => true,
        }
    }
}

/// Whether an extension event is the extension's own EMF line: its
/// `type` is in it, as a JSON string or a JSON object (Lambda's text or
/// JSON log format), whatever the spacing. Only extension events are
/// looked at, and only with EMF on.
fn is_own_emf(json: &str) -> bool {
    json.contains(crate::dispatch::emf::EMF_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lambda::telemetry::split;

    /// The shaping settings that `pairs` (variables as users write them)
    /// give; the others at their defaults. (`config`'s own tests read them
    /// from the table; the stage does not import `config`.)
    fn cfg(pairs: &[(&str, &str)]) -> ShapeSettings {
        let mut c = ShapeSettings {
            types: Types {
                platform: true,
                function: true,
                extension: true,
            },
            platform_events: None,
            min_level: None,
            enrich: false,
            partition_key: PartitionKeyMode::Environment,
            max_record_bytes: 1 << 20,
            redact: None,
            sampling: false,
            own_emf: false,
            format: Format::Json,
            cwlogs_platform: cwlogs::Platform::Json,
            otlp_gzip: false,
            tags: Vec::new(),
            memory_mb: None,
        };
        for &(k, v) in pairs {
            match k.trim_start_matches("KINESIS_TELEMETRY_") {
                "PLATFORM_EVENTS" => {
                    let names = v.split(',').map(|n| n.trim_start_matches("platform."));
                    c.platform_events = Some(names.map(str::to_string).collect());
                }
                "MIN_LEVEL" => {
                    c.min_level = crate::lambda::view::LEVELS.iter().position(|l| *l == v)
                }
                "ENRICH" => c.enrich = v == "true",
                "PARTITION_KEY" if v == "request" => c.partition_key = PartitionKeyMode::Request,
                "SAMPLE_SUCCESS" => c.sampling = v != "1",
                "EMF" => c.own_emf = v == "true",
                "FORMAT" => {
                    c.format = match v {
                        "cwlogs" => Format::Cwlogs,
                        "otlp-json" => Format::OtlpJson,
                        _ => panic!("{v}: not a format these tests know"),
                    }
                }
                "CWLOGS_PLATFORM" if v == "text" => c.cwlogs_platform = cwlogs::Platform::Text,
                "TYPES" => {
                    c.types = Types {
                        platform: v.contains("platform"),
                        function: v.contains("function"),
                        extension: v.contains("extension"),
                    }
                }
                "MAX_RECORD_BYTES" => c.max_record_bytes = v.parse().unwrap(),
                "REDACT" => {
                    let built_in = crate::records::redact::parse_built_in(v).unwrap();
                    c.redact = Some(Rules::new(&built_in, &[]).unwrap());
                }
                _ => panic!("{k}={v}: not a shaping setting these tests know"),
            }
        }
        c
    }

    fn stats() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    fn events() -> Vec<Event> {
        events_read(Reading::ALL)
    }

    /// The events, read as `reading` asks.
    fn events_read(reading: Reading) -> Vec<Event> {
        crate::lambda::telemetry::split_body(
            &Arc::new(
                br#"[{"time":"t","type":"platform.start","record":{"requestId":"r1"}},
            {"time":"t","type":"function","record":{"level":"DEBUG","message":"d"}},
            {"time":"t","type":"function","record":{"level":"ERROR","message":"e"}},
            {"time":"t","type":"function","record":"text line"},
            {"time":"t","type":"platform.runtimeDone","record":{"requestId":"r1"}},
            {"time":"t","type":"extension","record":"after"}]"#
                    .to_vec(),
            ),
            reading,
        )
        .unwrap()
    }

    fn forwarded(s: &mut Shaper) -> Vec<String> {
        events()
            .into_iter()
            .filter_map(|e| match s.shape(e, None).0 {
                Shaped::Record(r) => Some(String::from_utf8(r.data.to_vec()).unwrap()),
                Shaped::Fragments(_) | Shaped::Filtered | Shaped::OwnEmf => None,
            })
            .collect()
    }

    #[test]
    fn filters_by_platform_name_and_level() {
        let c = cfg(&[
            ("KINESIS_TELEMETRY_PLATFORM_EVENTS", "runtimeDone"),
            ("KINESIS_TELEMETRY_MIN_LEVEL", "INFO"),
        ]);
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &[], stats());
        let out: Vec<String> = events_read(reading(&c, Model::Default))
            .into_iter()
            .filter_map(|e| match s.shape(e, None).0 {
                Shaped::Record(r) => Some(String::from_utf8(r.data.to_vec()).unwrap()),
                Shaped::Fragments(_) | Shaped::Filtered | Shaped::OwnEmf => None,
            })
            .collect();
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[0].contains("ERROR"));
        assert!(out[1].contains("text line"));
        assert!(out[2].contains("platform.runtimeDone"));
    }

    #[test]
    fn own_emf_lines_are_not_forwarded_only_with_emf_on() {
        // As Lambda's text format has it (a string) and its JSON format (an
        // object); a function line saying the same is not ours.
        let body = r#"[{"time":"t","type":"extension","record":"{\"_aws\":{},\"type\":\"kinesis-telemetry-extension.emf\"}"},
            {"time":"t","type":"extension","record":{"_aws":{},"type": "kinesis-telemetry-extension.emf"}},
            {"time":"t","type":"function","record":"kinesis-telemetry-extension.emf"},
            {"time":"t","type":"extension","record":"another line"}]"#;
        let kinds = |pairs: &[(&str, &str)]| {
            let c = cfg(pairs);
            let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &[], stats());
            let events = crate::lambda::telemetry::split(body.as_bytes()).unwrap();
            events
                .into_iter()
                .map(|e| matches!(s.shape(e, None).0, Shaped::OwnEmf))
                .collect::<Vec<bool>>()
        };
        let on = [("KINESIS_TELEMETRY_EMF", "true")];
        assert_eq!(kinds(&on), [true, true, false, false]);
        assert_eq!(kinds(&[]), [false; 4], "off: nothing looked at");
        // Before the filters: one is counted as ours whatever they say.
        let filtered = [
            ("KINESIS_TELEMETRY_EMF", "true"),
            ("KINESIS_TELEMETRY_TYPES", "platform"),
        ];
        assert_eq!(kinds(&filtered), [true, true, false, false]);
    }

    #[test]
    fn log_lines_are_read_for_what_the_settings_need() {
        let read = |pairs: &[(&str, &str)], model| reading(&cfg(pairs), model);
        let none = Reading::default();
        assert_eq!(read(&[], Model::Default), none);
        assert_eq!(read(&[], Model::ManagedInstances), none);
        let enrich = [("KINESIS_TELEMETRY_ENRICH", "true")];
        assert_eq!(
            read(&enrich, Model::Default),
            none,
            "the invocation in progress"
        );
        let by_request = [("KINESIS_TELEMETRY_PARTITION_KEY", "request")];
        let sampled = [("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "0.5")];
        for pairs in [&enrich[..], &by_request, &sampled] {
            let r = read(pairs, Model::ManagedInstances);
            assert!(r.request_id && !r.level && !r.record, "{pairs:?}");
        }
        let level = read(&[("KINESIS_TELEMETRY_MIN_LEVEL", "WARN")], Model::Default);
        assert!(level.level && !level.record && !level.request_id);
        let redact = read(&[("KINESIS_TELEMETRY_REDACT", "email")], Model::Default);
        assert!(redact.record && !redact.level && !redact.request_id);
    }

    #[test]
    fn enrichment_wraps_the_event_verbatim_with_request_ids() {
        let c = cfg(&[("KINESIS_TELEMETRY_ENRICH", "true")]);
        let ctx = [
            ("functionName", "fn".to_string()),
            ("accountId", "1".to_string()),
        ];
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &ctx, stats());
        let env_key = s.keys.environment().to_string();
        let out = forwarded(&mut s);
        let originals = events();
        for (o, e) in out.iter().zip(&originals) {
            assert!(o.contains(&*e.json), "{o}");
            let v: serde_json::Value = serde_json::from_str(o).unwrap();
            assert_eq!(v["functionName"], "fn");
            assert_eq!(v["accountId"], "1");
            assert_eq!(v["environmentId"], env_key.as_str());
        }
        let ids: std::collections::HashSet<String> = out
            .iter()
            .map(|o| serde_json::from_str::<serde_json::Value>(o).unwrap()["id"].to_string())
            .collect();
        assert_eq!(ids.len(), out.len(), "one id per record");
        assert!(
            out[0].contains(&format!(r#""id":"{env_key}-1""#)),
            "{}",
            out[0]
        );
        let req = |i: usize| {
            serde_json::from_str::<serde_json::Value>(&out[i]).unwrap()["requestId"].clone()
        };
        assert_eq!(req(0), "r1"); // platform.start names itself
        assert_eq!(req(1), "r1"); // log line inside the invocation
        assert_eq!(req(4), "r1"); // runtimeDone names itself
        assert_eq!(req(5), serde_json::Value::Null); // after runtimeDone
    }

    #[test]
    fn cwlogs_log_events_are_made_once_after_redaction_and_filters() {
        let c = cfg(&[
            ("KINESIS_TELEMETRY_FORMAT", "cwlogs"),
            ("KINESIS_TELEMETRY_REDACT", "email"),
            ("KINESIS_TELEMETRY_MIN_LEVEL", "INFO"),
        ]);
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &[], stats());
        let body = br#"[{"time":"2026-11-30T00:00:00.001Z","type":"function","record":"mail a@b.example now"},
            {"time":"2026-11-30T00:00:00.002Z","type":"function","record":{"level":"DEBUG","message":"d"}},
            {"time":"2026-11-30T00:00:00.001Z","type":"platform.start","record":{"requestId":"r1"}}]"#;
        let events = crate::lambda::telemetry::split_body(
            &Arc::new(body.to_vec()),
            reading(&c, Model::Default),
        )
        .unwrap();
        let out: Vec<serde_json::Value> = events
            .into_iter()
            .filter_map(|e| match s.shape(e, None).0 {
                Shaped::Record(r) => Some(serde_json::from_slice(&r.data).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(out.len(), 2);
        let message = out[0]["message"].as_str().unwrap();
        assert!(message.starts_with("mail ") && !message.contains("a@b.example"));
        assert_eq!(out[0]["timestamp"], 1_795_996_800_001_u64);
        assert!(out[1]["message"]
            .as_str()
            .unwrap()
            .contains("platform.start"));
        // (same time: the sequence tells them apart)
        assert_ne!(out[0]["id"], out[1]["id"]);
    }

    /// Platform events are always subscribed (`main::subscribe`) and the
    /// trace is taken from `platform.start` before the filters: lines carry
    /// it when platform events are not forwarded. (So INVOKE's `tracing`
    /// is not needed for it.)
    #[test]
    fn lines_keep_their_trace_when_platform_events_are_not_forwarded() {
        let c = cfg(&[
            ("KINESIS_TELEMETRY_ENRICH", "true"),
            ("KINESIS_TELEMETRY_TYPES", "function"),
        ]);
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &[], stats());
        let body = br#"[{"type":"platform.start","record":{"requestId":"r1","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=1;Sampled=1"}}},
            {"type":"function","record":"in r1"}]"#;
        let shaped: Vec<Shaped> = split(body)
            .unwrap()
            .into_iter()
            .map(|e| s.shape(e, None).0)
            .collect();
        assert!(matches!(shaped[0], Shaped::Filtered));
        let Shaped::Record(r) = &shaped[1] else {
            panic!("the line is forwarded")
        };
        let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
        assert_eq!(v["traceId"], "1-5759e988-bd862e3fe1be46a994272793");
    }

    #[test]
    fn otlp_log_records_carry_request_trace_and_severity_after_filters_and_redaction() {
        let c = cfg(&[
            ("KINESIS_TELEMETRY_FORMAT", "otlp-json"),
            ("KINESIS_TELEMETRY_REDACT", "email"),
            ("KINESIS_TELEMETRY_MIN_LEVEL", "INFO"),
        ]);
        let ctx = [("functionName", "fn".to_string())];
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &ctx, stats());
        let head = s.otlp_head().unwrap().clone();
        assert!(head
            .as_str()
            .contains(r#"{"key":"faas.instance","value":{"stringValue":"env"}}"#));
        let trace = r#""tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}"#;
        let body = format!(
            r#"[{{"time":"2026-11-30T00:00:00.001Z","type":"platform.start","record":{{"requestId":"r1",{trace}}}}},
            {{"time":"2026-11-30T00:00:00.002Z","type":"function","record":"[WARN] mail a@b.example now"}},
            {{"time":"2026-11-30T00:00:00.003Z","type":"function","record":{{"level":"DEBUG","message":"d"}}}},
            {{"time":"2026-11-30T00:00:00.004Z","type":"function","record":{{"level":"ERROR","message":"e"}}}},
            {{"time":"2026-11-30T00:00:00.005Z","type":"platform.runtimeDone","record":{{"requestId":"r1"}}}},
            {{"time":"2026-11-30T00:00:00.006Z","type":"function","record":"after"}}]"#
        );
        let read = reading(&c, Model::Default);
        assert!(read.level, "severity needs the level read");
        let events =
            crate::lambda::telemetry::split_body(&Arc::new(body.into_bytes()), read).unwrap();
        let out: Vec<serde_json::Value> = events
            .into_iter()
            .filter_map(|e| match s.shape(e, None).0 {
                Shaped::Record(r) => Some(serde_json::from_slice(&r.data).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(out.len(), 5, "the DEBUG line is filtered: {out:?}");
        let w3c = "5759e988bd862e3fe1be46a994272793";
        let request = |v: &serde_json::Value| v["attributes"][0]["value"]["stringValue"].clone();
        for v in &out[..4] {
            assert_eq!(
                (&v["traceId"], &v["spanId"]),
                (&w3c.into(), &"53995c3f42cd8ad8".into())
            );
            assert_eq!((&v["flags"], request(v)), (&1.into(), "r1".into()));
        }
        assert_eq!(out[0]["eventName"], "platform.start");
        assert_eq!(out[0]["timeUnixNano"], "1795996800001000000");
        let line = out[1]["body"]["stringValue"].as_str().unwrap();
        assert!(
            line.starts_with("[WARN] mail ") && !line.contains("a@b.example"),
            "{line}"
        );
        assert_eq!(
            (&out[1]["severityNumber"], &out[1]["severityText"]),
            (&13.into(), &"WARN".into())
        );
        assert_eq!(out[2]["severityNumber"], 17);
        assert_eq!(out[3]["eventName"], "platform.runtimeDone");
        // After the invocation: no request, no trace.
        assert!(out[4].get("attributes").is_none() && out[4].get("traceId").is_none());
        // The extension's own records too, named by their type.
        let own = r#"{"time":"2026-11-30T00:00:01Z","type":"kinesis-telemetry-extension.metrics","record":{"final":true}}"#;
        let r = s.own(Record::new(own.as_bytes().to_vec(), "k"));
        let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
        assert_eq!(v["eventName"], "kinesis-telemetry-extension.metrics");
        assert_eq!(v["body"]["stringValue"], r#"{"final":true}"#);
    }

    #[test]
    fn otlp_on_managed_instances_lines_carry_the_request_they_name_and_its_trace() {
        let c = cfg(&[("KINESIS_TELEMETRY_FORMAT", "otlp-json")]);
        let model = Model::ManagedInstances;
        let mut s = Shaper::new(&c, model, "env", Rng::seeded(1), &[], stats());
        let start = |r: &str, id: &str| {
            format!(
                r#"{{"type":"platform.start","record":{{"requestId":"{r}","tracing":{{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-{id};Parent=53995c3f42cd8ad8;Sampled=0"}}}}}}"#
            )
        };
        let (a, b) = ("bd862e3fe1be46a994272793", "00000000000000000000000b");
        let body = format!(
            r#"[{},{},
            {{"type":"function","record":{{"level":"INFO","requestId":"b","message":"1"}}}},
            {{"type":"function","record":{{"level":"WARN","requestId":"a","message":"2"}}}},
            {{"type":"function","record":{{"level":"INFO","message":"none"}}}}]"#,
            start("a", a),
            start("b", b)
        );
        let events =
            crate::lambda::telemetry::split_body(&Arc::new(body.into_bytes()), reading(&c, model))
                .unwrap();
        let got: Vec<(String, String, u64)> = events
            .into_iter()
            .map(|e| {
                let Shaped::Record(r) = s.shape(e, None).0 else {
                    panic!("not one record")
                };
                let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
                let rid = v["attributes"][0]["value"]["stringValue"].as_str();
                let trace = v["traceId"].as_str().unwrap_or("");
                let flags = v["flags"].as_u64().unwrap_or(9);
                (rid.unwrap_or("").to_string(), trace.to_string(), flags)
            })
            .collect();
        let t = |r: &str, id: &str| (r.to_string(), format!("5759e988{id}"), 0);
        assert_eq!(
            got,
            [
                t("a", a),
                t("b", b),
                t("b", b),
                t("a", a),
                (String::new(), String::new(), 9)
            ]
        );
    }

    #[test]
    fn envelopes_carry_tags_and_their_invocations_trace() {
        let mut c = cfg(&[("KINESIS_TELEMETRY_ENRICH", "true")]);
        c.tags = vec![
            ("team".into(), "pay\"ments".into()),
            ("env".into(), String::new()),
        ];
        let trace = |id: &str| {
            format!(
                r#""tracing":{{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-{id};Parent=1;Sampled=1"}}"#
            )
        };
        let (a, b) = ("bd862e3fe1be46a994272793", "00000000000000000000000b");
        let body = format!(
            r#"[{{"type":"platform.start","record":{{"requestId":"r1",{}}}}},
            {{"type":"function","record":"in r1"}},
            {{"type":"platform.runtimeDone","record":{{"requestId":"r1"}}}},
            {{"type":"platform.report","record":{{"requestId":"r1"}}}},
            {{"type":"function","record":"between"}},
            {{"type":"platform.start","record":{{"requestId":"r2"}}}},
            {{"type":"function","record":"in r2, untraced"}},
            {{"type":"platform.start","record":{{"requestId":"r3",{}}}}},
            {{"type":"extension","record":"in r3"}}]"#,
            trace(a),
            trace(b)
        );
        let events = crate::lambda::telemetry::split(body.as_bytes()).unwrap();
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &[], stats());
        let env_key = s.keys.environment().to_string();
        let traces: Vec<(String, String)> = events
            .into_iter()
            .map(|e| {
                let Shaped::Record(r) = s.shape(e, None).0 else {
                    panic!("not one record")
                };
                // Tags after the environment, in the order given.
                let text = std::str::from_utf8(&r.data).unwrap();
                let tags = format!(
                    r#""environmentId":"{env_key}","tags":{{"team":"pay\"ments","env":""}},"id":"#
                );
                assert!(text.contains(&tags), "{text}");
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                let s = |f: &str| {
                    v.get(f)
                        .map_or(String::new(), |t| t.as_str().unwrap().to_string())
                };
                (s("traceId"), s("traceIdW3C"))
            })
            .collect();
        let t = |id: &str| (format!("1-5759e988-{id}"), format!("5759e988{id}"));
        let none = (String::new(), String::new());
        assert_eq!(
            traces,
            [
                t(a),
                t(a),
                t(a),
                t(a),
                none.clone(),
                none.clone(),
                none,
                t(b),
                t(b)
            ]
        );
    }

    #[test]
    fn oversized_events_are_fragmented() {
        let c = cfg(&[("KINESIS_TELEMETRY_MAX_RECORD_BYTES", "1024")]);
        let mut s = Shaper::new(&c, Model::Default, "env", Rng::seeded(1), &[], stats());
        let big = format!(r#"[{{"type":"function","record":"{}"}}]"#, "x".repeat(5000));
        let e = split(big.as_bytes()).unwrap().remove(0);
        match s.shape(e, None).0 {
            Shaped::Fragments(records) => {
                assert!(records.len() >= 5);
                assert!(records.iter().all(|r| r.size() <= 1024));
            }
            Shaped::Record(_) | Shaped::Filtered | Shaped::OwnEmf => panic!(),
        }
    }

    #[test]
    fn on_managed_instances_log_lines_belong_to_the_request_they_name() {
        let c = cfg(&[
            ("KINESIS_TELEMETRY_ENRICH", "true"),
            ("KINESIS_TELEMETRY_PARTITION_KEY", "request"),
        ]);
        let mut s = Shaper::new(
            &c,
            Model::ManagedInstances,
            "env",
            Rng::seeded(1),
            &[],
            stats(),
        );
        // Two invocations interleave; there is no runtimeDone.
        let body = r#"[
            {"type":"platform.start","record":{"requestId":"a"}},
            {"type":"platform.start","record":{"requestId":"b"}},
            {"type":"function","record":{"level":"INFO","requestId":"a","message":"1"}},
            {"type":"function","record":{"level":"INFO","AWSRequestId":"b","message":"2"}},
            {"type":"function","record":{"level":"INFO","message":"plain stdout"}},
            {"type":"platform.report","record":{"requestId":"a"}}]"#;
        let body = Arc::new(body.as_bytes().to_vec());
        let read = reading(&c, Model::ManagedInstances);
        let shaped: Vec<(String, String)> = crate::lambda::telemetry::split_body(&body, read)
            .unwrap()
            .into_iter()
            .map(|e| match s.shape(e, None).0 {
                Shaped::Record(r) => {
                    let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
                    (v["requestId"].to_string(), r.key.to_string())
                }
                Shaped::Fragments(_) | Shaped::Filtered | Shaped::OwnEmf => panic!(),
            })
            .collect();
        let ids: Vec<&str> = shaped.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            [r#""a""#, r#""b""#, r#""a""#, r#""b""#, "null", r#""a""#]
        );
        assert_eq!(shaped[2].1, "a", "partition key of a's line");
        assert_eq!(shaped[3].1, "b");
        assert_eq!(
            shaped[4].1,
            s.keys.environment(),
            "no request: the environment's key"
        );
    }

    /// This thread's CPU time (Linux).
    fn cpu_ns() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// A 1,000-event body: text lines (as bench/suite/harness.py's), or
    /// JSON lines, with an invocation's platform events around them.
    fn bench_body(json_lines: bool) -> std::sync::Arc<Vec<u8>> {
        let mut events = vec![r#"{"time":"2026-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"8f5c-r1","version":"$LATEST"}}"#.to_string()];
        for i in 0..997 {
            let line = format!("2026-01-01T00:00:00.{:03}Z\t8f5c-r1\tINFO\tGET /api/v1/orders/{} status=200 duration_ms={} user=u-{} region=eu-west-1 cache=miss items={}", i % 1000, 100000 + i, i % 97, i % 5000, i % 13);
            let record = if json_lines {
                format!(
                    r#"{{"timestamp":"2026-01-01T00:00:00.000Z","level":"INFO","requestId":"8f5c-r1","message":{}}}"#,
                    serde_json::to_string(&line).unwrap()
                )
            } else {
                serde_json::to_string(&line).unwrap()
            };
            events.push(format!(
                r#"{{"time":"2026-01-01T00:00:00.000Z","type":"function","record":{record}}}"#
            ));
        }
        events.push(r#"{"time":"2026-01-01T00:00:01.000Z","type":"platform.runtimeDone","record":{"requestId":"8f5c-r1","status":"success","metrics":{"durationMs":12.5,"producedBytes":0}}}"#.to_string());
        events.push(r#"{"time":"2026-01-01T00:00:01.000Z","type":"platform.report","record":{"requestId":"8f5c-r1","status":"success","metrics":{"durationMs":12.5,"billedDurationMs":13}}}"#.to_string());
        std::sync::Arc::new(format!("[{}]", events.join(",")).into_bytes())
    }

    /// Split + shape per event, events per CPU-second, for a few settings:
    /// `cargo test --release --locked split_and_shape_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn split_and_shape_cost() {
        // Each setting named by its variables (without the common prefix).
        let settings: [(&[(&str, &str)], Model); 7] = [
            (&[], Model::Default),
            (&[("KINESIS_TELEMETRY_FORMAT", "cwlogs")], Model::Default),
            (&[("KINESIS_TELEMETRY_FORMAT", "otlp-json")], Model::Default),
            (&[("KINESIS_TELEMETRY_MIN_LEVEL", "INFO")], Model::Default),
            (&[("KINESIS_TELEMETRY_REDACT", "all")], Model::Default),
            (
                &[
                    ("KINESIS_TELEMETRY_ENRICH", "true"),
                    (
                        "KINESIS_TELEMETRY_PLATFORM_EVENTS",
                        "start,runtimeDone,report",
                    ),
                ],
                Model::Default,
            ),
            (
                &[("KINESIS_TELEMETRY_PARTITION_KEY", "request")],
                Model::ManagedInstances,
            ),
        ];
        for json_lines in [false, true] {
            let body = bench_body(json_lines);
            for (pairs, model) in &settings {
                let mut name: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}={v}", &k["KINESIS_TELEMETRY_".len()..]))
                    .collect();
                if *model == Model::ManagedInstances {
                    name.insert(0, "LMI".into());
                }
                let name = if name.is_empty() {
                    "defaults".into()
                } else {
                    name.join(", ")
                };
                let c = cfg(pairs);
                let mut s = Shaper::new(&c, *model, "env", Rng::seeded(1), &[], stats());
                let (t0, mut done) = (cpu_ns(), 0usize);
                while cpu_ns() - t0 < 1_000_000_000 {
                    for e in
                        crate::lambda::telemetry::split_body(&body, reading(&c, *model)).unwrap()
                    {
                        std::hint::black_box(s.shape(e, Some("8f5c-r1")));
                    }
                    done += 1000;
                }
                let per_s = done as f64 * 1e9 / (cpu_ns() - t0) as f64;
                let lines = if json_lines {
                    "JSON lines"
                } else {
                    "text lines"
                };
                println!(
                    "split+shape, {lines:>10}, {name:<40}: {per_s:>9.0} events per CPU-second"
                );
            }
        }
    }
}
