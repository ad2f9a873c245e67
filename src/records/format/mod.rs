//! Record formats: how queued records become the Kinesis records of one
//! request, one module per format behind `RecordFormat`. `json` sends each
//! record as its own; `kpl` packs many into one in the KPL aggregation
//! format; `ndjson-gzip` packs many as gzip-compressed newline-delimited
//! JSON; `cwlogs` packs many as the gzip-compressed `DATA_MESSAGE` a
//! CloudWatch Logs subscription filter writes; `otlp-json` packs many log
//! records as one OTLP `ExportLogsServiceRequest` in JSON. Every outgoing
//! record keeps the queued records it carries, so a failed record puts
//! exactly those back.
//!
//! A new format is one new file: its `RecordFormat` (what one wire record
//! holds, and for the tests what a consumer decodes from it), a word in
//! `Format` and its arm in `Format::packer`.

pub mod cwlogs;
pub mod json;
pub mod kpl;
pub mod ndjson_gzip;
pub mod otlp_json;

use std::sync::Arc;

use crate::records::queue::{Queue, Record, RequestLimits};

/// The record format (`KINESIS_TELEMETRY_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Kpl,
    NdjsonGzip,
    Cwlogs,
    OtlpJson,
}

impl Format {
    /// The format's packer; `cwlogs`: the names its records carry,
    /// `otlp`: the resource they carry (the tests' placeholders when `None`).
    pub fn packer(self, cwlogs: Option<cwlogs::Head>, otlp: Option<otlp_json::Head>) -> Packer {
        match self {
            Format::Json => Box::new(json::Json),
            Format::Kpl => Box::new(kpl::Kpl),
            Format::NdjsonGzip => Box::new(ndjson_gzip::NdjsonGzip),
            Format::Cwlogs => Box::new(cwlogs.unwrap_or_default()),
            Format::OtlpJson => Box::new(otlp.unwrap_or_default()),
        }
    }
}

pub type Packer = Box<dyn RecordFormat + Send>;

/// One record format.
pub trait RecordFormat {
    /// What one request holds: wire records taken from the front of
    /// `queue`, within `limits` and `max_record` bytes per record. By
    /// default, records packed by `pack` until the request is full.
    fn take(&self, queue: &mut Queue, limits: RequestLimits, max_record: usize) -> Vec<Wire> {
        fill(self, queue, limits, max_record)
    }

    /// How queued records go into one wire record: from the front of
    /// `queue`, at most `room` bytes (data + key). `None` when the front
    /// record does not fit `room` (it stays queued).
    fn pack(&self, queue: &mut Queue, room: usize) -> Option<Wire>;

    /// What the consumer gets: the queued records' data, back from one
    /// wire record's data (the tests' oracle for `pack`).
    #[cfg(test)]
    fn decode(&self, data: &[u8]) -> Vec<Vec<u8>>;
}

/// One Kinesis record as sent.
#[derive(Debug)]
pub struct Wire {
    /// The packed data; `None` when the record is its single member's data.
    payload: Option<Vec<u8>>,
    pub key: Arc<str>,
    pub hash_key: Option<Box<str>>,
    pub members: Vec<Record>,
}

impl Wire {
    /// One wire record per queued record (the `json` format).
    pub fn singles(records: Vec<Record>) -> Vec<Wire> {
        records.into_iter().map(Wire::single).collect()
    }

    fn single(r: Record) -> Wire {
        Wire {
            payload: None,
            key: r.key.clone(),
            hash_key: None,
            members: vec![r],
        }
    }

    /// The front record as it is, when it fits `room`.
    fn single_within(queue: &mut Queue, room: usize) -> Option<Wire> {
        if queue.front()?.size() > room {
            return None;
        }
        queue.pop_front().map(Wire::single)
    }

    /// A record packing `members` as `data`.
    fn packed(data: Vec<u8>, key: Arc<str>, members: Vec<Record>) -> Wire {
        Wire {
            payload: Some(data),
            key,
            hash_key: None,
            members,
        }
    }

    pub fn data(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or(&self.members[0].data)
    }

    /// Size as Kinesis counts it (data + partition key).
    pub fn size(&self) -> usize {
        self.data().len() + self.key.len()
    }
}

/// Takes one request's worth of records from the front of `queue`, within
/// `limits` (records and bytes per request) and `max_record` per record.
pub fn take(
    queue: &mut Queue,
    limits: RequestLimits,
    format: &Packer,
    max_record: usize,
) -> Vec<Wire> {
    format.take(queue, limits, max_record)
}

/// An aggregated request stops taking records when less room than this is
/// left (another aggregate that small would mostly be overhead).
const MIN_ROOM: usize = 1024;

/// A request of packed records: `format.pack` until the request is full.
fn fill<F: RecordFormat + ?Sized>(
    format: &F,
    queue: &mut Queue,
    limits: RequestLimits,
    max_record: usize,
) -> Vec<Wire> {
    let mut out: Vec<Wire> = Vec::new();
    let mut bytes = 0;
    while out.len() < limits.max_records && !queue.is_empty() {
        let room = max_record.min(limits.max_bytes - bytes);
        let Some(w) = format.pack(queue, room) else {
            break;
        };
        bytes += w.size();
        out.push(w);
        if limits.max_bytes - bytes < MIN_ROOM {
            break;
        }
    }
    if out.is_empty() {
        // Nothing fits the room left; send the front record alone.
        let one = RequestLimits {
            max_records: 1,
            ..limits
        };
        out = Wire::singles(queue.take_batch(one));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` JSON records of `size` bytes, alternating two keys.
    pub fn queue(n: usize, size: usize) -> Queue {
        let mut q = Queue::default();
        for i in 0..n {
            let mut d = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
            d.resize(size - 2, b'a');
            d.extend_from_slice(b"\"}");
            q.push(Record::new(d, if i % 2 == 0 { "k-even" } else { "k-odd" }));
        }
        q
    }

    pub const L: RequestLimits = RequestLimits {
        max_records: 500,
        max_bytes: 5 * 1024 * 1024,
    };

    pub const ALL: [Format; 5] = [
        Format::Json,
        Format::Kpl,
        Format::NdjsonGzip,
        Format::Cwlogs,
        Format::OtlpJson,
    ];
}
