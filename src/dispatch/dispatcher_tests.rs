//! The dispatcher's loop against a scripted Kinesis client: partial and
//! ambiguous failures, refusals, pause and resume, deadlines, shutdown. The
//! oracle is the events handed in, not what the dispatcher counts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::{shutdown_waits, Control, Dispatcher};
use crate::config;
use crate::kinesis::client::{PutOutcome, PutRecords};
use crate::kinesis::error::{ErrorAnswer, Failure};
use crate::lambda::model::Model;
use crate::lambda::telemetry::{split_body, Delivery};
use crate::lambda::view::Reading;
use crate::records::format::Wire;
use crate::stats::Stats;

/// What the scripted client answers to one request.
#[derive(Clone)]
enum Answer {
    /// 200, every record stored.
    Store,
    /// 200, the records at these positions refused with this code.
    Refuse(Vec<usize>, &'static str),
    NotSent(Failure),
    Failed(Failure),
    /// Stored, but the answer was lost (a reset after sending).
    StoredButLost,
}

/// The data of every record Kinesis stored, and of every request made.
#[derive(Default)]
struct Seen {
    stored: Vec<String>,
    requests: usize,
}

struct Scripted {
    answers: VecDeque<Answer>,
    /// Answer once the script is done.
    then: Answer,
    seen: Arc<Mutex<Seen>>,
}

impl PutRecords for Scripted {
    fn put_records(&mut self, records: &[Wire], deadline: Instant) -> PutOutcome {
        assert!(
            Instant::now() <= deadline,
            "a request started past its deadline"
        );
        let answer = self.answers.pop_front().unwrap_or(self.then.clone());
        let mut seen = self.seen.lock().unwrap();
        let data = |w: &Wire| String::from_utf8(w.data().to_vec()).unwrap();
        if !matches!(answer, Answer::NotSent(_)) {
            seen.requests += 1;
        }
        match answer {
            Answer::Store => {
                seen.stored.extend(records.iter().map(data));
                PutOutcome::Answered(vec![None; records.len()])
            }
            Answer::Refuse(at, code) => {
                let codes = (0..records.len())
                    .map(|i| at.contains(&i).then(|| code.to_string()))
                    .collect();
                let kept = records.iter().enumerate().filter(|(i, _)| !at.contains(i));
                seen.stored.extend(kept.map(|(_, w)| data(w)));
                PutOutcome::Answered(codes)
            }
            Answer::NotSent(f) => PutOutcome::NotSent(f),
            Answer::Failed(f) => PutOutcome::Failed(f),
            Answer::StoredButLost => {
                seen.stored.extend(records.iter().map(data));
                PutOutcome::MaybeDelivered(Failure::Transport("connection reset".into()))
            }
        }
    }
}

fn answer_error(code: &str) -> Failure {
    Failure::Answer(ErrorAnswer {
        status: 400,
        code: code.into(),
        message: String::new(),
    })
}

/// A running dispatcher and its channels.
struct Harness {
    events: Sender<Delivery>,
    control: Sender<Control>,
    seen: Arc<Mutex<Seen>>,
    stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What the listener would read of log lines with these settings.
    reading: Reading,
}

const SEC: Duration = Duration::from_secs(1);

fn start(settings: &[(&str, &str)], answers: Vec<Answer>, then: Answer) -> Harness {
    start_in(Model::Default, settings, answers, then)
}

fn start_in(
    model: Model,
    settings: &[(&str, &str)],
    answers: Vec<Answer>,
    then: Answer,
) -> Harness {
    let mut env: Vec<(String, String)> = vec![
        ("KINESIS_TELEMETRY_STREAM".into(), "s".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "secret".into()),
        ("KINESIS_TELEMETRY_BACKOFF_BASE_MS".into(), "1".into()),
        ("KINESIS_TELEMETRY_BACKOFF_CAP_MS".into(), "5".into()),
    ];
    for (k, v) in settings {
        env.push((k.to_string(), v.to_string()));
    }
    let get = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cfg = config::from_env(&get)
        .expect("valid test configuration")
        .dispatch;
    let reading = crate::records::shape::reading(&cfg.shape, model);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client = Scripted {
        answers: answers.into(),
        then,
        seen: seen.clone(),
    };
    let (events, events_rx) = unbounded();
    let (control, control_rx) = bounded(1);
    let stats = Arc::new(Stats::default());
    let d = Dispatcher::new(
        cfg,
        model,
        client,
        events_rx,
        control_rx,
        stats.clone(),
        Arc::new(crate::dispatch::backlog::Backlog::new(1 << 30)),
        Vec::new(),
        "env",
    );
    let thread = Some(std::thread::spawn(move || d.run()));
    Harness {
        events,
        control,
        seen,
        stats,
        thread,
        reading,
    }
}

impl Harness {
    /// Delivers one Telemetry API body of these events.
    fn deliver(&self, events: &[String]) {
        let body = Arc::new(format!("[{}]", events.join(",")).into_bytes());
        let delivery = Delivery {
            received: Instant::now(),
            events: split_body(&body, self.reading).unwrap(),
            body_bytes: body.len(),
        };
        self.events.send(delivery).unwrap();
    }

    /// An invoke whose function wrote `lines`: they and its runtimeDone are
    /// delivered, then the dispatcher is asked to pause (after its flush).
    fn invoke_with(&self, id: &str, lines: &[String]) {
        let mut events = lines.to_vec();
        events.push(runtime_done(id));
        self.deliver(&events);
        self.invoke(id, true);
    }

    /// An invoke: resumes, then asks to pause; returns once paused.
    fn invoke(&self, id: &str, wait_runtime_done: bool) -> Duration {
        let (reply, paused) = bounded(1);
        let start = Instant::now();
        self.control
            .send(Control::Invoke {
                request_id: id.into(),
                deadline: start + 3 * SEC,
                wait_runtime_done,
                wait_until: start + 2 * SEC,
                reply,
            })
            .unwrap();
        paused.recv_timeout(5 * SEC).expect("the dispatcher paused");
        start.elapsed()
    }

    fn shutdown(mut self, deadline: Duration) -> (Seen, Arc<Stats>, Duration) {
        let (reply, done) = bounded(1);
        let start = Instant::now();
        self.control
            .send(Control::Shutdown {
                wait_until: start,
                deadline: start + deadline,
                reply,
            })
            .unwrap();
        done.recv_timeout(deadline + 5 * SEC)
            .expect("shutdown answered");
        let took = start.elapsed();
        self.thread.take().unwrap().join().unwrap();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (seen, self.stats.clone(), took)
    }

    fn stored(&self) -> Vec<String> {
        self.seen.lock().unwrap().stored.clone()
    }
}

fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"time":"2026-11-30T00:00:00.000Z","type":"function","record":"{tag}-{i}"}}"#
            )
        })
        .collect()
}

fn runtime_done(id: &str) -> String {
    format!(
        r#"{{"time":"2026-11-30T00:00:00.000Z","type":"platform.runtimeDone","record":{{"requestId":"{id}","status":"success"}}}}"#
    )
}

/// The function log records among `stored`, in order.
fn telemetry(stored: &[String]) -> Vec<String> {
    stored
        .iter()
        .filter(|s| s.contains(r#""type":"function""#))
        .cloned()
        .collect()
}

#[test]
fn a_partial_failure_resends_only_the_refused_records_in_order() {
    let answers = vec![Answer::Refuse(
        vec![1, 3],
        "ProvisionedThroughputExceededException",
    )];
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        answers,
        Answer::Store,
    );
    let sent = lines("a", 6);
    h.invoke_with("r1", &sent);
    let (seen, stats, _) = h.shutdown(2 * SEC);
    let mut got = telemetry(&seen.stored);
    // The two refused went out again, after the four stored the first time.
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got.split_off(4), [sent[1].clone(), sent[3].clone()]);
    assert_eq!(stats.records_retried.get(), 2);
    assert_eq!(stats.dropped_rejected.get(), 0);
}

#[test]
fn an_ambiguous_failure_is_resent_and_counted_as_a_duplicate_risk() {
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        vec![Answer::StoredButLost],
        Answer::Store,
    );
    let sent = lines("b", 3);
    h.invoke_with("r1", &sent);
    let (seen, stats, _) = h.shutdown(2 * SEC);
    let got = telemetry(&seen.stored);
    for line in &sent {
        let copies = got.iter().filter(|g| *g == line).count();
        assert_eq!(
            copies, 2,
            "{line} stored once by the lost answer, once by the resend"
        );
    }
    // The three lines and their runtimeDone.
    assert_eq!(stats.duplicate_risk.get(), 4);
}

#[test]
fn a_refusal_that_retrying_cannot_fix_is_counted_lost_once() {
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        vec![Answer::Failed(answer_error("ValidationException"))],
        Answer::Store,
    );
    h.invoke_with("r1", &lines("c", 4));
    let later = lines("d", 2);
    h.invoke_with("r2", &later);
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), later);
    // The four lines and their runtimeDone.
    assert_eq!(stats.dropped_rejected.get(), 5);
    assert_eq!(stats.duplicate_risk.get(), 0);
}

#[test]
fn paused_means_no_request_until_the_next_invoke() {
    let h = start(&[("KINESIS_TELEMETRY_FLUSH", "end")], vec![], Answer::Store);
    h.invoke("r1", false);
    // Events that arrive while frozen (the next invoke's early lines) wait.
    h.deliver(&lines("e", 600));
    // Give a busy dispatcher every chance to send by mistake: it has a full
    // request (500 records) queued, which it would send at once if thawed.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        assert_eq!(h.seen.lock().unwrap().requests, 0, "sent while paused");
        std::thread::yield_now();
    }
    h.invoke("r2", false);
    let (seen, _, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored).len(), 600);
}

#[test]
fn end_mode_waits_for_runtime_done_and_flushes_before_pausing() {
    let h = start(&[("KINESIS_TELEMETRY_FLUSH", "end")], vec![], Answer::Store);
    let (tx, rx): (Sender<()>, Receiver<()>) = bounded(1);
    let events = h.events.clone();
    let late = lines("f", 5);
    let late2 = late.clone();
    // runtimeDone comes after the invoke asks to pause.
    let feeder = std::thread::spawn(move || {
        rx.recv().unwrap();
        let body = Arc::new(format!("[{},{}]", late2.join(","), runtime_done("r1")).into_bytes());
        let events_ = split_body(&body, Reading::default()).unwrap();
        events
            .send(Delivery {
                received: Instant::now(),
                events: events_,
                body_bytes: body.len(),
            })
            .unwrap();
    });
    let (reply, paused) = bounded(1);
    let start = Instant::now();
    h.control
        .send(Control::Invoke {
            request_id: "r1".into(),
            deadline: start + 3 * SEC,
            wait_runtime_done: true,
            wait_until: start + 2 * SEC,
            reply,
        })
        .unwrap();
    assert!(
        paused.try_recv().is_err(),
        "paused before its runtimeDone came"
    );
    tx.send(()).unwrap();
    paused.recv_timeout(5 * SEC).unwrap();
    feeder.join().unwrap();
    assert!(start.elapsed() < SEC, "held past the runtimeDone");
    assert_eq!(telemetry(&h.stored()), late, "flushed before pausing");
    h.shutdown(2 * SEC);
}

#[test]
fn nothing_sendable_waits_for_the_next_flush_without_losing_records() {
    let no_credentials = Failure::Credentials("the endpoint is down".into());
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        vec![Answer::NotSent(no_credentials)],
        Answer::Store,
    );
    let first = lines("g", 3);
    h.invoke_with("r1", &first);
    assert!(h.stored().is_empty());
    h.invoke_with("r2", &[]);
    assert_eq!(telemetry(&h.stored()), first);
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(seen.requests, 2, "the unsendable round was not a request");
    assert_eq!(
        stats.requests.get(),
        1 + 1,
        "one invoke flush, one metrics record"
    );
}

#[test]
fn shutdown_sends_everything_then_the_metrics_record_last() {
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        vec![Answer::Failed(Failure::Transport("reset".into())); 3],
        Answer::Store,
    );
    let sent = lines("h", 10);
    h.deliver(&sent);
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), sent);
    let last = seen.stored.last().unwrap();
    assert!(last.contains("extension.metrics"), "{last}");
    assert_eq!(stats.dropped_shutdown.get(), 0);
}

#[test]
fn shutdown_ends_by_its_deadline_and_counts_what_is_left() {
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        vec![],
        Answer::Failed(Failure::Transport("connection refused".into())),
    );
    h.deliver(&lines("i", 7));
    let (seen, stats, took) = h.shutdown(Duration::from_millis(300));
    assert!(seen.stored.is_empty());
    assert!(took < Duration::from_millis(300) + SEC / 2, "{took:?}");
    // The 7 records and the metrics record.
    assert_eq!(stats.dropped_shutdown.get(), 8);
}

/// Waits (polling, up to 5 s) until `n` function records are stored.
fn wait_stored(h: &Harness, n: usize) -> Vec<String> {
    let until = Instant::now() + 5 * SEC;
    loop {
        let got = telemetry(&h.stored());
        if got.len() >= n || Instant::now() > until {
            return got;
        }
        std::thread::yield_now();
    }
}

#[test]
fn on_managed_instances_data_goes_out_by_age_without_any_invoke() {
    for mode in ["end", "adaptive", "periodic", "batch"] {
        let h = start_in(
            Model::ManagedInstances,
            &[
                ("KINESIS_TELEMETRY_FLUSH", mode),
                ("KINESIS_TELEMETRY_FLUSH_INTERVAL_MS", "20"),
                ("KINESIS_TELEMETRY_BATCH_MAX_AGE_MS", "20"),
            ],
            vec![],
            Answer::Store,
        );
        let first = lines("lmi", 3);
        h.deliver(&first);
        assert_eq!(wait_stored(&h, 3), first, "{mode}: sent without an invoke");
        // A full request goes at once, whatever its age.
        let full = lines("full", 500);
        h.deliver(&full);
        assert_eq!(wait_stored(&h, 503).len(), 503, "{mode}");
        let last = lines("last", 2);
        h.deliver(&last);
        let (seen, stats, _) = h.shutdown(2 * SEC);
        assert_eq!(telemetry(&seen.stored).len(), 505, "{mode}");
        assert!(seen.stored.last().unwrap().contains("extension.metrics"));
        assert_eq!(stats.dropped_shutdown.get(), 0);
    }
}

#[test]
fn refused_for_a_fixable_cause_the_records_wait_and_probes_are_paced() {
    // AccessDenied for the first three requests (the policy comes late).
    let refused = Answer::Failed(answer_error("AccessDeniedException"));
    let h = start(
        &[
            ("KINESIS_TELEMETRY_FLUSH", "end"),
            ("KINESIS_TELEMETRY_PROBE_INTERVAL_MS", "100"),
        ],
        vec![refused.clone(), refused.clone(), refused],
        Answer::Store,
    );
    let first = lines("p", 5);
    h.invoke_with("r1", &first);
    assert!(h.stored().is_empty());
    // Invokes before the probe is due make no request at all.
    let second = lines("q", 5);
    h.invoke_with("r2", &second);
    assert_eq!(
        h.seen.lock().unwrap().requests,
        1,
        "no request before the probe is due"
    );
    // Later invokes probe (100 ms, then 200 ms) until one is accepted.
    let mut sent = first.clone();
    sent.extend(second.clone());
    let until = Instant::now() + 5 * SEC;
    let mut n = 0;
    while telemetry(&h.stored()).len() < sent.len() && Instant::now() < until {
        n += 1;
        let more = lines(&format!("n{n}"), 1);
        sent.extend(more.clone());
        h.invoke_with(&format!("n{n}"), &more);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), sent, "all in order, none lost");
    assert_eq!(stats.dropped_rejected.get(), 0);
    assert_eq!(stats.parked_requests.get(), 3);
    // 3 refused + 1 accepted probe + what followed: never a storm.
    assert!(seen.requests <= 3 + n + 2, "{} requests", seen.requests);
}

#[test]
fn still_refused_at_shutdown_the_records_are_counted_by_cause() {
    let h = start(
        &[("KINESIS_TELEMETRY_FLUSH", "end")],
        vec![],
        Answer::Failed(answer_error("ResourceNotFoundException")),
    );
    h.invoke_with("r1", &lines("s", 4));
    let (seen, stats, took) = h.shutdown(2 * SEC);
    assert!(seen.stored.is_empty());
    // Four lines, their runtimeDone, the final metrics record.
    assert_eq!(stats.dropped_stream_not_found.get(), 6);
    assert_eq!(
        stats.dropped_shutdown.get() + stats.dropped_rejected.get(),
        0
    );
    // One request at the invoke's end; at SHUTDOWN tries at 0, 100, 300,
    // 700, 1,100, 1,500 ms (waits 100, 200, 400...) until the deadline,
    // and never past it.
    assert!(
        (5..=10).contains(&seen.requests),
        "{} requests",
        seen.requests
    );
    assert!(took <= 2 * SEC, "{took:?}");
}

#[test]
fn a_refusal_that_ends_during_shutdown_loses_nothing() {
    for code in [
        "ResourceNotFoundException",
        "AccessDeniedException",
        "ExpiredTokenException",
    ] {
        // Refused at the invoke's end and for the first two tries at
        // SHUTDOWN (t = 0 and 100 ms), accepted from t = 300 ms.
        let refused = Answer::Failed(answer_error(code));
        let h = start(
            &[("KINESIS_TELEMETRY_FLUSH", "end")],
            vec![refused.clone(), refused.clone(), refused.clone(), refused],
            Answer::Store,
        );
        let sent = lines("s", 4);
        h.invoke_with("r1", &sent);
        let (seen, stats, took) = h.shutdown(2 * SEC);
        assert_eq!(telemetry(&seen.stored), sent, "{code}: every line, once");
        let lost = stats.dropped_shutdown.get()
            + stats.dropped_stream_not_found.get()
            + stats.dropped_access_denied.get()
            + stats.dropped_credentials.get()
            + stats.dropped_signature.get();
        assert_eq!(lost, 0, "{code}");
        assert!(took < SEC, "{code}: done once delivered, {took:?}");
    }
}

#[test]
fn an_idle_managed_instance_does_not_wake_while_nothing_is_due() {
    let h = start_in(
        Model::ManagedInstances,
        &[
            ("KINESIS_TELEMETRY_METRICS_INTERVAL_MS", "50"),
            ("KINESIS_TELEMETRY_FLUSH_INTERVAL_MS", "20"),
        ],
        vec![],
        Answer::Store,
    );
    let sent = named_lines("r1", 5);
    h.deliver(&sent);
    let until = Instant::now() + 5 * SEC;
    while telemetry(&h.stored()).len() < sent.len() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Traffic is over: the metrics record of its interval, then nothing.
    std::thread::sleep(Duration::from_millis(150));
    let before = h.stats.wakeups.get();
    // Idle for 10 metrics intervals.
    std::thread::sleep(Duration::from_millis(500));
    let woke = h.stats.wakeups.get() - before;
    assert!(
        woke <= 1,
        "{woke} wake-ups in an idle spell of 10 intervals"
    );
    let (seen, _, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), sent);
    let metrics = seen
        .stored
        .iter()
        .filter(|r| r.contains(crate::stats::METRICS_TYPE))
        .count();
    // The interval with traffic, and the final one: none for idle intervals.
    assert!((1..=3).contains(&metrics), "{metrics} metrics records");
}

fn platform(ty: &str, id: &str, status: &str) -> String {
    format!(
        r#"{{"time":"2026-11-30T00:00:00.000Z","type":"platform.{ty}","record":{{"requestId":"{id}","status":"{status}"}}}}"#
    )
}

/// JSON log lines naming their request (as on Managed Instances).
fn named_lines(id: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"time":"2026-11-30T00:00:00.000Z","type":"function","record":{{"level":"INFO","requestId":"{id}","message":"{id}-{i}"}}}}"#
            )
        })
        .collect()
}

#[test]
fn sampling_keeps_every_line_of_failed_invocations_and_drops_the_rest() {
    let h = start(
        &[
            ("KINESIS_TELEMETRY_FLUSH", "end"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "0"),
        ],
        vec![],
        Answer::Store,
    );
    let mut failed_lines = Vec::new();
    for i in 0..10 {
        let id = format!("r{i}");
        let status = if i % 3 == 0 { "error" } else { "success" };
        let lines = lines(&id, 4);
        if status != "success" {
            failed_lines.extend(lines.iter().cloned());
        }
        let mut events = vec![platform("start", &id, "")];
        events.extend(lines);
        events.push(platform("runtimeDone", &id, status));
        h.deliver(&events);
        h.invoke(&id, true);
    }
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), failed_lines);
    let platform_events = seen
        .stored
        .iter()
        .filter(|s| s.contains("platform."))
        .count();
    assert_eq!(platform_events, 20, "platform events are not sampled");
    assert_eq!(stats.kept_failed.get(), 4);
    assert_eq!(stats.sampled_out_invocations.get(), 6);
    assert_eq!(stats.sampled_out_lines.get(), 24);
    let bytes: usize = lines("r1", 4).iter().map(|l| l.len() + "env".len()).sum();
    assert_eq!(stats.sampled_out_bytes.get(), 6 * bytes as u64);
}

#[test]
fn lines_without_an_outcome_are_forwarded_at_shutdown() {
    let h = start(
        &[
            ("KINESIS_TELEMETRY_FLUSH", "end"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "0"),
        ],
        vec![],
        Answer::Store,
    );
    let sent = lines("lost-outcome", 3);
    let mut events = vec![platform("start", "r1", "")];
    events.extend(sent.iter().cloned());
    h.deliver(&events);
    h.invoke("r1", false);
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), sent);
    assert_eq!(stats.forwarded_undecided.get(), 1);
    assert_eq!(stats.sampled_out_lines.get(), 0);
}

#[test]
fn on_managed_instances_holds_end_by_report_or_by_hold_time() {
    let h = start_in(
        Model::ManagedInstances,
        &[
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "0"),
            ("KINESIS_TELEMETRY_SAMPLE_HOLD_MS", "100"),
            ("KINESIS_TELEMETRY_FLUSH_INTERVAL_MS", "10"),
        ],
        vec![],
        Answer::Store,
    );
    // a and b interleave; a fails, b succeeds, c never reports.
    let (a, b, c) = (
        named_lines("a", 3),
        named_lines("b", 3),
        named_lines("c", 2),
    );
    let mut events = vec![platform("start", "a", ""), platform("start", "b", "")];
    events.extend(a.iter().zip(&b).flat_map(|(x, y)| [x.clone(), y.clone()]));
    events.push(platform("report", "b", "success"));
    events.push(platform("report", "a", "timeout"));
    events.push(platform("start", "c", ""));
    events.extend(c.iter().cloned());
    h.deliver(&events);
    // A line of b arriving after its report follows the report's outcome.
    h.deliver(&named_lines("b", 1));
    // c's lines go out once held for 100 ms of (never frozen) time.
    let until = Instant::now() + 5 * SEC;
    while telemetry(&h.stored()).len() < 5 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.stats.forwarded_undecided.get(), 1, "c by hold time");
    let (seen, stats, _) = h.shutdown(2 * SEC);
    let mut want = a.clone();
    want.extend(c);
    assert_eq!(telemetry(&seen.stored), want);
    assert_eq!(stats.kept_failed.get(), 1);
    assert_eq!(
        stats.sampled_out_lines.get(),
        4,
        "b's three and its late one"
    );
}

#[test]
fn cpu_work_never_holds_an_invoke_past_the_flush_bound() {
    // 100 user patterns and 5,000 lines: far more redaction work than one
    // flush bound (300 ms) allows in a debug build. Verbose mode (`(?x)`)
    // keeps the prefilter from helping: every pattern runs on every line.
    let patterns: Vec<String> = (0..100)
        .map(|i| format!("\"(?x)[0-9a-f]{{3}}[0-9]tok-{i}\""))
        .collect();
    let patterns = format!("[{}]", patterns.join(","));
    let h = start(
        &[
            ("KINESIS_TELEMETRY_FLUSH", "end"),
            ("KINESIS_TELEMETRY_FLUSH_TIMEOUT_MS", "300"),
            ("KINESIS_TELEMETRY_REDACT_PATTERNS", &patterns),
        ],
        vec![],
        Answer::Store,
    );
    let sent: Vec<String> = (0..10)
        .flat_map(|b| lines(&format!("b{b}-padding-padding-padding-padding"), 500))
        .collect();
    for chunk in sent.chunks(500) {
        h.deliver(chunk);
    }
    h.deliver(&[runtime_done("r1")]);
    let took = h.invoke("r1", true);
    assert!(took < Duration::from_millis(1000), "invoke held {took:?}");
    // What was not processed in time waits, and goes out in later thaws.
    let until = Instant::now() + 60 * SEC;
    let mut n = 0;
    while telemetry(&h.stored()).len() < sent.len() && Instant::now() < until {
        n += 1;
        let id = format!("n{n}");
        h.deliver(&[runtime_done(&id)]);
        let took = h.invoke(&id, true);
        assert!(
            took < Duration::from_millis(1000),
            "invoke {n} held {took:?}"
        );
    }
    assert!(n > 0, "all was done inside the first flush bound: no test");
    let (seen, stats, _) = h.shutdown(2 * SEC);
    assert_eq!(telemetry(&seen.stored), sent, "every line, once, in order");
    assert_eq!(stats.dropped_shutdown.get(), 0);
}

#[test]
fn shutdown_waits_for_the_last_telemetry_and_for_a_refused_delivery() {
    let now = Instant::now();
    let ms = Duration::from_millis;
    let (until, deadline) = (now + ms(500), now + ms(1800));
    // The last telemetry: until `until`.
    assert!(shutdown_waits(now, until, deadline, false, false));
    assert!(!shutdown_waits(
        now + ms(500),
        until,
        deadline,
        false,
        false
    ));
    assert!(!shutdown_waits(now, until, deadline, true, false));
    // A refused delivery to come again: past `until`, to 500 ms before the
    // deadline, so that the final flush still has time to send it.
    assert!(shutdown_waits(now + ms(1000), until, deadline, true, true));
    assert!(!shutdown_waits(now + ms(1300), until, deadline, true, true));
}
