//! Records and batches: the queue of Kinesis records waiting to be sent, how
//! a request's worth is taken from it within Kinesis' limits, and how an
//! event too large for one record is split into fragments.
//!
//! A record's size is what Kinesis counts: data plus partition key.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::json::push_string;
use crate::slices::{self, ByteSlice};

/// Event type of the records an oversized event is split into.
pub const FRAGMENT_TYPE: &str = "kinesis-telemetry-extension.fragment";

/// One Kinesis record waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Usually a range of the POSTed body its event came in.
    pub data: ByteSlice,
    /// Shared: every record of an environment or request has the same key.
    pub key: Arc<str>,
    /// Sends tried so far.
    pub attempts: u32,
}

impl Record {
    pub fn new(data: impl Into<ByteSlice>, key: impl Into<Arc<str>>) -> Record {
        Record {
            data: data.into(),
            key: key.into(),
            attempts: 0,
        }
    }

    /// The size Kinesis counts against its record and request limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

/// Per-request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// Records in arrival order, with their total size.
#[derive(Debug, Default)]
pub struct Queue {
    records: VecDeque<Record>,
    bytes: usize,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Total size of the queued records.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, r: Record) {
        self.bytes += r.size();
        self.records.push_back(r);
    }

    /// The `added` records just queued from one body of `body_bytes` are
    /// ranges of it and keep it alive; when they hold less than half of it
    /// (the rest was filtered out), they get one buffer of their own, so
    /// memory stays close to what `bytes()` (and the buffer cap) counts.
    pub fn release_body(&mut self, added: usize, body_bytes: usize) {
        let skip = self.records.len().saturating_sub(added);
        // Slices of a larger buffer: the body (records made anew own theirs).
        let slices: Vec<&mut ByteSlice> = self
            .records
            .iter_mut()
            .skip(skip)
            .map(|r| &mut r.data)
            .filter(|d| d.excess() > 0)
            .collect();
        let held: usize = slices.iter().map(|d| d.len()).sum();
        if held > 0 && held * 2 < body_bytes {
            slices::compact(slices);
        }
    }

    pub fn front(&self) -> Option<&Record> {
        self.records.front()
    }

    pub fn pop_front(&mut self) -> Option<Record> {
        let r = self.records.pop_front()?;
        self.bytes -= r.size();
        Some(r)
    }

    /// Puts records back at the front, keeping their order (for retries).
    pub fn push_front_all(&mut self, rs: Vec<Record>) {
        for r in rs.into_iter().rev() {
            self.bytes += r.size();
            self.records.push_front(r);
        }
    }

    /// Whether the front of the queue fills a whole request.
    pub fn has_full_batch(&self, limits: RequestLimits) -> bool {
        if self.records.len() >= limits.max_records {
            return true;
        }
        self.bytes >= limits.max_bytes
    }

    /// Takes the longest prefix that fits one request: at most `max_records`
    /// records and `max_bytes` bytes, and always at least one record (records
    /// are never larger than the request limit; see `fit_event`).
    pub fn take_batch(&mut self, limits: RequestLimits) -> Vec<Record> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(r) = self.records.front() {
            if batch.len() == limits.max_records
                || (!batch.is_empty() && bytes + r.size() > limits.max_bytes)
            {
                break;
            }
            bytes += r.size();
            batch.push(self.records.pop_front().expect("front exists"));
        }
        self.bytes -= bytes;
        batch
    }

    /// Empties the queue, returning what it held.
    pub fn drain(&mut self) -> Vec<Record> {
        self.bytes = 0;
        self.records.drain(..).collect()
    }
}

/// Turns one event into the record data that carries it: the event itself
/// when it fits in `max_record_bytes` together with `key_len`, else fragment
/// records (see docs/record-formats.md, "Oversized events"), each small enough.
pub fn fit_event(
    json: &str,
    key_len: usize,
    max_record_bytes: usize,
    fragment_id: impl FnOnce() -> String,
) -> Vec<Box<[u8]>> {
    if json.len() + key_len <= max_record_bytes {
        return vec![Box::from(json.as_bytes())];
    }
    let id = fragment_id();
    // Room for the escaped chunk: the record minus key and the envelope, whose
    // size is bounded by FRAGMENT_OVERHEAD for any realistic numbers.
    let room = max_record_bytes.saturating_sub(key_len + FRAGMENT_OVERHEAD + id.len());
    let room = room.max(64);
    let chunks = split_escaped(json, room);
    let count = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let mut s = String::with_capacity(room + FRAGMENT_OVERHEAD);
            s.push_str("{\"type\":\"");
            s.push_str(FRAGMENT_TYPE);
            s.push_str("\",\"fragment\":{\"id\":\"");
            s.push_str(&id);
            s.push_str(&format!(
                "\",\"index\":{index},\"count\":{count},\"originalBytes\":{}}},\"data\":",
                json.len()
            ));
            push_string(&mut s, chunk);
            s.push('}');
            s.into_bytes().into_boxed_slice()
        })
        .collect()
}

/// Envelope bytes around a fragment's chunk, with a generous margin for the
/// decimal numbers in it.
const FRAGMENT_OVERHEAD: usize = 160;

/// ByteSlice `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Splits `s` at char boundaries into pieces whose JSON-escaped form is at
/// most `room` bytes.
fn split_escaped(s: &str, room: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let n = escaped_len(c);
        if used + n > room {
            out.push(&s[start..i]);
            start = i;
            used = 0;
        }
        used += n;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: usize) -> Record {
        Record::new(vec![b'x'; n], "k")
    }

    const L: RequestLimits = RequestLimits {
        max_records: 500,
        max_bytes: 5 * 1024 * 1024,
    };

    /// Records that are a small part of their body stop keeping the body
    /// alive; records that are most of it keep sharing it (no copy).
    #[test]
    fn release_body_copies_out_only_what_little_is_kept() {
        let body = Arc::new(b"0123456789".repeat(10));
        let mut q = Queue::default();
        q.push(Record::new(b"old".to_vec(), "k"));
        q.push(Record::new(ByteSlice::slice_of(&body, &body[0..10]), "k"));
        q.push(Record::new(ByteSlice::slice_of(&body, &body[50..60]), "k"));
        q.release_body(2, body.len());
        assert_eq!(
            Arc::strong_count(&body),
            1,
            "20 of 100 bytes kept: copied out"
        );
        let all: Vec<Vec<u8>> = q.drain().into_iter().map(|r| r.data.to_vec()).collect();
        assert_eq!(
            all,
            [
                b"old".to_vec(),
                b"0123456789".to_vec(),
                b"0123456789".to_vec()
            ]
        );

        q.push(Record::new(ByteSlice::slice_of(&body, &body[0..60]), "k"));
        q.release_body(1, body.len());
        assert_eq!(
            Arc::strong_count(&body),
            2,
            "60 of 100 bytes kept: still shared"
        );
        assert_eq!(q.bytes(), 61);
    }

    #[test]
    fn batch_stops_at_500_records() {
        let mut q = Queue::default();
        for _ in 0..1201 {
            q.push(rec(10));
        }
        assert_eq!(q.take_batch(L).len(), 500);
        assert_eq!(q.take_batch(L).len(), 500);
        assert_eq!(q.take_batch(L).len(), 201);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn batch_stops_at_byte_limit_exactly() {
        let mut q = Queue::default();
        let one = 1024 * 1024; // 1 MiB including the 1-byte key
        for _ in 0..6 {
            q.push(rec(one - 1));
        }
        let b = q.take_batch(L);
        assert_eq!(b.len(), 5);
        assert_eq!(b.iter().map(Record::size).sum::<usize>(), 5 * one);
        assert_eq!(q.take_batch(L).len(), 1);
    }

    #[test]
    fn batch_always_takes_one_and_keeps_order() {
        let mut q = Queue::default();
        q.push(Record::new(b"a".to_vec(), "k"));
        q.push(Record::new(b"b".to_vec(), "k"));
        let tiny = RequestLimits {
            max_records: 500,
            max_bytes: 1,
        };
        assert_eq!(&*q.take_batch(tiny)[0].data, b"a");
        let b = q.take_batch(L);
        assert_eq!(&*b[0].data, b"b");
        assert!(q.take_batch(L).is_empty());
    }

    #[test]
    fn retries_go_back_in_front_in_order() {
        let mut q = Queue::default();
        q.push(Record::new(b"c".to_vec(), "k"));
        q.push_front_all(vec![
            Record::new(b"a".to_vec(), "k"),
            Record::new(b"b".to_vec(), "k"),
        ]);
        assert_eq!(q.bytes(), 6);
        let order: Vec<u8> = q.take_batch(L).iter().map(|r| r.data[0]).collect();
        assert_eq!(order, b"abc");
    }

    #[test]
    fn full_batch_detection() {
        let mut q = Queue::default();
        let l = RequestLimits {
            max_records: 3,
            max_bytes: 100,
        };
        q.push(rec(10));
        q.push(rec(10));
        assert!(!q.has_full_batch(l));
        q.push(rec(10));
        assert!(q.has_full_batch(l));
        let mut q = Queue::default();
        q.push(rec(99));
        assert!(q.has_full_batch(l));
    }

    #[test]
    fn small_event_is_one_record_verbatim() {
        let out = fit_event("{\"a\":1}", 32, 1024, || unreachable!());
        assert_eq!(out, vec![Box::from(&b"{\"a\":1}"[..])]);
        // Exactly at the limit counting the key.
        let json = "x".repeat(1024 - 32);
        assert_eq!(fit_event(&json, 32, 1024, || unreachable!()).len(), 1);
    }

    #[test]
    fn oversized_event_is_fragmented_losslessly() {
        let mut json = String::from("{\"type\":\"function\",\"record\":\"");
        for i in 0..3000 {
            json.push_str(&format!("line {i} \\\"quoted\\\" é 🎉\\n\\u0001 "));
        }
        json.push_str("\"}");
        let max = 4096;
        let key_len = 32;
        let parts = fit_event(&json, key_len, max, || "frag-1".into());
        assert!(parts.len() > 1);
        let mut rebuilt = String::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.len() + key_len <= max,
                "fragment {i} is {} bytes",
                p.len()
            );
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            assert_eq!(v["type"], FRAGMENT_TYPE);
            assert_eq!(v["fragment"]["id"], "frag-1");
            assert_eq!(v["fragment"]["index"], i);
            assert_eq!(v["fragment"]["count"], parts.len());
            assert_eq!(v["fragment"]["originalBytes"], json.len());
            rebuilt.push_str(v["data"].as_str().unwrap());
        }
        assert_eq!(rebuilt, json);
    }

    #[test]
    fn control_characters_count_six_bytes() {
        let s = "\u{1}".repeat(100);
        let parts = split_escaped(&s, 60);
        assert!(parts.iter().all(|p| p.len() * 6 <= 60));
        assert_eq!(parts.concat(), s);
    }
}
