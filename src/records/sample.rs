//! Outcome-aware sampling (`KINESIS_TELEMETRY_SAMPLE_SUCCESS`): the log
//! lines of a share of the successful invocations are not forwarded; every
//! line of an invocation that did not succeed is.
//!
//! Which invocations are kept is a pure function of the request id
//! (`keeps`), so a consumer can recompute it from the platform events. The
//! lines of an invocation the hash would not keep are held until its outcome
//! (`platform.runtimeDone` or `platform.report`, whichever comes first): a
//! success drops them, anything else forwards them. Holds that wait longer
//! than the maximum hold time, or that the buffer cap needs released, or that
//! are still open at SHUTDOWN are forwarded: never dropped for lack of an
//! outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lambda::view::Status;
use crate::records::queue::Record;
use crate::slices::ByteSlice;

/// Fractions are kept in millionths.
pub const SCALE: u32 = 1_000_000;

/// Outcomes remembered for lines that arrive after them (Managed Instances:
/// a line that names its request may trail the report).
const RECENT_OUTCOMES: usize = 1024;

/// Whether the invocation `request_id` is one of the `threshold` millionths
/// kept whatever its outcome: FNV-1a (64-bit) of the id's UTF-8 bytes, mixed
/// by MurmurHash3's 64-bit finaliser (FNV alone is uneven on ids that differ
/// in a few characters), modulo 1,000,000, below the threshold
/// (docs/sampling-and-redaction.md, "Sampling", shows it in Python).
pub fn keeps(threshold: u32, request_id: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h % u64::from(SCALE) < u64::from(threshold)
}

/// What an invocation's `status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `error`, `failure`, `timeout` or anything else but `success`.
    Failed,
    /// No status: the lines are forwarded.
    Unknown,
}

impl Outcome {
    pub fn of(status: Option<Status>) -> Outcome {
        match status {
            Some(Status::Success) => Outcome::Success,
            Some(Status::Failed) => Outcome::Failed,
            None => Outcome::Unknown,
        }
    }
}

/// Where a log line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Forward,
    /// Its invocation's outcome is not known yet.
    Hold,
    /// Its invocation succeeded and is sampled out.
    Drop,
}

/// Why held lines leave the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The invocation did not succeed: forwarded.
    Failed,
    /// The invocation succeeded: dropped (sampled out).
    SampledOut,
    /// Forwarded without an outcome: hold time, buffer cap, SHUTDOWN, or an
    /// outcome without a status.
    Undecided,
}

/// Lines that leave the hold (`records` is empty when sampled out).
#[derive(Debug)]
pub struct Release {
    pub why: Why,
    pub records: Vec<Record>,
    /// Log events (a fragmented event is one line, several records).
    pub lines: u64,
    /// What Kinesis would have counted: data and partition keys.
    pub bytes: u64,
    /// When the first of them arrived.
    pub arrived: Instant,
    /// `Undecided`: the first such release of this invocation (what
    /// `invocationsForwardedUndecided` counts: its later lines may be held
    /// and released again).
    pub first_undecided: bool,
}

/// One invocation's held lines, in one growing buffer (not one allocation
/// per line, and no Telemetry API body kept alive by them).
struct Held {
    data: Vec<u8>,
    /// End of each record's data in `data`, and its partition key.
    parts: Vec<(usize, Arc<str>)>,
    lines: u64,
    bytes: usize,
    /// Thawed time when the hold began (the hold time is thawed time, so a
    /// freeze does not release it).
    since: Duration,
    arrived: Instant,
}

impl Held {
    fn release(self, why: Why) -> Release {
        let records = if why == Why::SampledOut {
            Vec::new()
        } else {
            let buf = Arc::new(self.data);
            let mut start = 0;
            self.parts
                .into_iter()
                .map(|(end, key)| {
                    let data = ByteSlice::slice_of(&buf, &buf[start..end]);
                    start = end;
                    Record::new(data, key)
                })
                .collect()
        };
        Release {
            why,
            records,
            lines: self.lines,
            bytes: self.bytes as u64,
            arrived: self.arrived,
            first_undecided: false,
        }
    }
}

pub struct Sampler {
    threshold: u32,
    max_hold: Duration,
    held: HashMap<Box<str>, Held>,
    /// Bytes held, as the buffer cap counts them.
    bytes: usize,
    /// Outcomes seen (true: forward the late lines).
    recent: Remembered<bool>,
    /// Invocations whose lines were forwarded without an outcome.
    undecided: Remembered<()>,
}

/// Values for the last `RECENT_OUTCOMES` request ids (bounded memory).
struct Remembered<V> {
    map: HashMap<Box<str>, V>,
    order: VecDeque<Box<str>>,
}

impl<V> Remembered<V> {
    fn new() -> Remembered<V> {
        Remembered {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &str) -> Option<&V> {
        self.map.get(id)
    }

    /// Remembers `id`, forgetting the oldest past the bound; false when it
    /// was remembered already (the value is then left as it was).
    fn insert(&mut self, id: &str, v: V) -> bool {
        if self.map.contains_key(id) {
            return false;
        }
        if self.order.len() >= RECENT_OUTCOMES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.map.insert(id.into(), v);
        self.order.push_back(id.into());
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl Sampler {
    /// `threshold`: successful invocations kept, in millionths (below
    /// `SCALE`); `max_hold`: thawed time a hold may wait for its outcome.
    pub fn new(threshold: u32, max_hold: Duration) -> Sampler {
        Sampler {
            threshold,
            max_hold,
            held: HashMap::new(),
            bytes: 0,
            recent: Remembered::new(),
            undecided: Remembered::new(),
        }
    }

    /// Where a log line of invocation `request_id` goes.
    pub fn route(&self, request_id: &str) -> Route {
        if keeps(self.threshold, request_id) {
            return Route::Forward;
        }
        match self.recent.get(request_id) {
            Some(true) => Route::Forward,
            Some(false) => Route::Drop,
            None => Route::Hold,
        }
    }

    /// Holds a line's records (`Route::Hold`); `now` is thawed time.
    pub fn hold(
        &mut self,
        request_id: &str,
        records: impl IntoIterator<Item = Record>,
        now: Duration,
        arrived: Instant,
    ) {
        let h = match self.held.get_mut(request_id) {
            Some(h) => h,
            None => self.held.entry(request_id.into()).or_insert(Held {
                data: Vec::new(),
                parts: Vec::new(),
                lines: 0,
                bytes: 0,
                since: now,
                arrived,
            }),
        };
        h.lines += 1;
        for r in records {
            h.data.extend_from_slice(&r.data);
            h.parts.push((h.data.len(), r.key.clone()));
            h.bytes += r.size();
            self.bytes += r.size();
        }
    }

    /// The outcome of `request_id` is known. `None`: nothing to do (the
    /// hash keeps it, or its outcome came before); else what becomes of its
    /// held lines (possibly none).
    pub fn outcome(&mut self, request_id: &str, outcome: Outcome) -> Option<Release> {
        if keeps(self.threshold, request_id)
            || !self.recent.insert(request_id, outcome != Outcome::Success)
        {
            return None;
        }
        let why = match outcome {
            Outcome::Success => Why::SampledOut,
            Outcome::Failed => Why::Failed,
            Outcome::Unknown => Why::Undecided,
        };
        let mut release = match self.take(request_id) {
            Some(h) => h.release(why),
            None => Release {
                why,
                records: Vec::new(),
                lines: 0,
                bytes: 0,
                arrived: Instant::now(),
                first_undecided: false,
            },
        };
        if why == Why::Undecided && release.lines > 0 {
            release.first_undecided = self.undecided.insert(request_id, ());
        }
        Some(release)
    }

    fn take(&mut self, request_id: &str) -> Option<Held> {
        let h = self.held.remove(request_id)?;
        self.bytes -= h.bytes;
        Some(h)
    }

    /// Bytes held (they count against the buffer cap).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Thawed time at which the oldest hold is due for release.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.held.values().map(|h| h.since + self.max_hold).min()
    }

    /// Holds past the maximum hold time at thawed time `now`, forwarded.
    pub fn expired(&mut self, now: Duration) -> Vec<Release> {
        let due: Vec<Box<str>> = self
            .held
            .iter()
            .filter(|(_, h)| h.since + self.max_hold <= now)
            .map(|(id, _)| id.clone())
            .collect();
        self.release_ids(due)
    }

    /// The oldest hold, forwarded (the buffer cap needs the room).
    pub fn release_oldest(&mut self) -> Option<Release> {
        let id = self
            .held
            .iter()
            .min_by_key(|(_, h)| h.arrived)
            .map(|(id, _)| id.clone())?;
        self.release_ids(vec![id]).pop()
    }

    /// Every hold, forwarded (SHUTDOWN), oldest first.
    pub fn release_all(&mut self) -> Vec<Release> {
        let mut ids: Vec<(Instant, Box<str>)> = self
            .held
            .iter()
            .map(|(id, h)| (h.arrived, id.clone()))
            .collect();
        ids.sort();
        self.release_ids(ids.into_iter().map(|(_, id)| id).collect())
    }

    fn release_ids(&mut self, ids: Vec<Box<str>>) -> Vec<Release> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(h) = self.take(&id) {
                let mut r = h.release(Why::Undecided);
                r.first_undecided = r.lines > 0 && self.undecided.insert(&id, ());
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str) -> Vec<Record> {
        vec![Record::new(s.as_bytes().to_vec(), "key")]
    }

    /// Request ids the hash does not keep at `threshold`.
    fn not_kept(threshold: u32) -> impl Iterator<Item = String> {
        (0..)
            .map(|i| format!("req-{i}"))
            .filter(move |id| !keeps(threshold, id))
    }

    #[test]
    fn the_hash_is_fnv1a_mixed_modulo_a_million() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; mixed, 9413272369427828315
        // (the Python in docs/sampling-and-redaction.md gives the same).
        assert_eq!(9413272369427828315_u64 % 1_000_000, 828_315);
        assert!(keeps(828_316, "a"));
        assert!(!keeps(828_315, "a"));
        assert!(keeps(SCALE, "anything"));
        assert!(!keeps(0, "anything"));
    }

    #[test]
    fn the_kept_share_is_the_fraction() {
        // Ids that differ in a few characters, as well as counters.
        for id in [
            |i: u32| format!("8f8a2c1e-{i:04x}-4b1d-9a8e-3c2f1d0e5b7a"),
            |i: u32| format!("req-{i}"),
        ] {
            let kept = (0..100_000).filter(|i| keeps(100_000, &id(*i))).count();
            // 10,000 expected; the binomial sd is 95.
            assert!((9_600..=10_400).contains(&kept), "{kept}");
        }
    }

    #[test]
    fn success_drops_failure_forwards_in_order() {
        let mut s = Sampler::new(0, Duration::from_secs(60));
        let now = Instant::now();
        s.hold("a", rec("a1"), Duration::ZERO, now);
        s.hold("b", rec("b1"), Duration::ZERO, now);
        s.hold("b", rec("b2"), Duration::ZERO, now);
        assert_eq!(s.bytes(), 3 * 5);
        let a = s.outcome("a", Outcome::Success).unwrap();
        assert_eq!(
            (a.why, a.records.len(), a.lines, a.bytes),
            (Why::SampledOut, 0, 1, 5)
        );
        let b = s.outcome("b", Outcome::Failed).unwrap();
        assert_eq!(b.why, Why::Failed);
        let data: Vec<&[u8]> = b.records.iter().map(|r| &*r.data).collect();
        assert_eq!(data, [b"b1", b"b2"]);
        assert_eq!(&*b.records[0].key, "key");
        assert_eq!(s.bytes(), 0);
        // Late lines follow the outcome; a second outcome changes nothing.
        assert_eq!(s.route("a"), Route::Drop);
        assert_eq!(s.route("b"), Route::Forward);
        assert!(s.outcome("b", Outcome::Success).is_none());
        assert_eq!(s.route("c"), Route::Hold);
        let c = s.outcome("c", Outcome::Unknown).unwrap();
        assert_eq!((c.why, c.lines), (Why::Undecided, 0));
        assert_eq!(s.route("c"), Route::Forward);
    }

    #[test]
    fn kept_invocations_are_never_held() {
        let s = Sampler::new(SCALE - 1, Duration::from_secs(60));
        let kept = (0..)
            .map(|i| i.to_string())
            .find(|id| keeps(SCALE - 1, id))
            .unwrap();
        assert_eq!(s.route(&kept), Route::Forward);
        let mut s = s;
        assert!(
            s.outcome(&kept, Outcome::Failed).is_none(),
            "not counted as kept for failing"
        );
    }

    #[test]
    fn holds_end_by_time_by_age_and_at_shutdown() {
        let mut s = Sampler::new(0, Duration::from_millis(100));
        let ids: Vec<String> = not_kept(0).take(3).collect();
        let t0 = Instant::now();
        s.hold(&ids[0], rec("x"), Duration::ZERO, t0);
        s.hold(
            &ids[1],
            rec("y"),
            Duration::from_millis(50),
            t0 + Duration::from_millis(1),
        );
        s.hold(
            &ids[2],
            rec("z"),
            Duration::from_millis(60),
            t0 + Duration::from_millis(2),
        );
        assert_eq!(s.next_expiry(), Some(Duration::from_millis(100)));
        assert!(s.expired(Duration::from_millis(99)).is_empty());
        let out = s.expired(Duration::from_millis(100));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].why, out[0].records.len()), (Why::Undecided, 1));
        let oldest = s.release_oldest().unwrap();
        assert_eq!(&*oldest.records[0].data, b"y");
        let rest = s.release_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.next_expiry(), None);
        // Released undecided: a later outcome still counts.
        assert!(s.outcome(&ids[2], Outcome::Failed).is_some());
    }

    #[test]
    fn outcomes_remembered_are_bounded() {
        let mut s = Sampler::new(0, Duration::from_secs(60));
        for id in not_kept(0).take(RECENT_OUTCOMES + 10) {
            s.outcome(&id, Outcome::Success);
        }
        assert_eq!(s.recent.len(), RECENT_OUTCOMES);
        assert_eq!(s.recent.order.len(), RECENT_OUTCOMES);
    }

    #[test]
    fn an_invocation_released_undecided_again_and_again_counts_once() {
        let mut s = Sampler::new(0, Duration::from_millis(100));
        let id = not_kept(0).next().unwrap();
        let t0 = Instant::now();
        let mut firsts = 0;
        for round in 0..5u64 {
            let now = Duration::from_millis(200 * round);
            s.hold(&id, rec("x"), now, t0);
            // Released by time, by the cap, or at SHUTDOWN: each time its
            // later lines are held anew.
            let out = match round % 3 {
                0 => s.expired(now + Duration::from_millis(100)),
                1 => s.release_oldest().into_iter().collect(),
                _ => s.release_all(),
            };
            assert_eq!(out.len(), 1);
            firsts += usize::from(out[0].first_undecided);
        }
        assert_eq!(firsts, 1, "one invocation, counted once");
        // An outcome without a status, for lines of another invocation.
        let other = not_kept(0).nth(1).unwrap();
        s.hold(&other, rec("y"), Duration::ZERO, t0);
        assert!(s.outcome(&other, Outcome::Unknown).unwrap().first_undecided);
    }

    #[test]
    fn outcome_of_status() {
        // (Which words are `Success`: lambda/view.rs's tests.)
        assert_eq!(Outcome::of(Some(Status::Success)), Outcome::Success);
        assert_eq!(Outcome::of(Some(Status::Failed)), Outcome::Failed);
        assert_eq!(Outcome::of(None), Outcome::Unknown);
    }
}
