//! Record formats: how queued events become the Kinesis records of one
//! request. `json` sends each event as its own record; `kpl` packs many into
//! one record in the KPL aggregation format; `ndjson-gzip` packs many as
//! gzip-compressed newline-delimited JSON. Every outgoing record keeps the
//! queued events it carries, so a failed record puts exactly those back.

use std::sync::Arc;

use crate::records::queue::{Queue, Record, RequestLimits};
use md5::{Digest, Md5};

/// The record format (`KINESIS_TELEMETRY_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Kpl,
    NdjsonGzip,
}

/// First bytes of a KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

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
    format: Format,
    max_record: usize,
) -> Vec<Wire> {
    match format {
        Format::Json => Wire::singles(queue.take_batch(limits)),
        Format::Kpl | Format::NdjsonGzip => {
            let mut out: Vec<Wire> = Vec::new();
            let mut bytes = 0;
            while out.len() < limits.max_records && !queue.is_empty() {
                let room = max_record.min(limits.max_bytes - bytes);
                let Some(w) = (match format {
                    Format::Kpl => take_kpl(queue, room),
                    _ => take_gzip(queue, room),
                }) else {
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
    }
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Bytes a length-delimited protobuf field of `len` bytes takes.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Size of one inner `Record { partition_key_index, data }`.
fn kpl_record_len(key_index: usize, data_len: usize) -> usize {
    1 + varint_len(key_index as u64) + field_len(data_len)
}

/// Packs records from the front of `queue` into one aggregated record of at
/// most `room` bytes (data + outer key). A record too large to aggregate is
/// sent as it is: de-aggregators pass plain records through.
fn take_kpl(queue: &mut Queue, room: usize) -> Option<Wire> {
    let first = queue.front()?;
    let outer_key: Arc<str> = first.key.clone();
    let overhead = KPL_MAGIC.len() + 16 + outer_key.len();
    let mut keys: Vec<Arc<str>> = Vec::new();
    let mut proto_len = 0;
    let mut members: Vec<Record> = Vec::new();
    while let Some(r) = queue.front() {
        let (index, new_key) = match keys.iter().position(|k| *k == r.key) {
            Some(i) => (i, 0),
            None => (keys.len(), field_len(r.key.len())),
        };
        let add = new_key + field_len(kpl_record_len(index, r.data.len()));
        if overhead + proto_len + add > room {
            break;
        }
        if new_key > 0 {
            keys.push(r.key.clone());
        }
        proto_len += add;
        members.push(queue.pop_front().expect("front exists"));
    }
    if members.is_empty() {
        // Too big to aggregate within `room`.
        let r = queue.pop_front().expect("front exists");
        if r.size() > room {
            queue.push_front_all(vec![r]);
            return None;
        }
        return Some(Wire::single(r));
    }
    let mut proto = Vec::with_capacity(proto_len);
    for k in &keys {
        proto.push(0x0A); // field 1: partition_key_table
        put_varint(&mut proto, k.len() as u64);
        proto.extend_from_slice(k.as_bytes());
    }
    for r in &members {
        let index = keys.iter().position(|k| *k == r.key).expect("key in table");
        proto.push(0x1A); // field 3: records
        put_varint(&mut proto, kpl_record_len(index, r.data.len()) as u64);
        proto.push(0x08); // Record field 1: partition_key_index
        put_varint(&mut proto, index as u64);
        proto.push(0x1A); // Record field 3: data
        put_varint(&mut proto, r.data.len() as u64);
        proto.extend_from_slice(&r.data);
    }
    debug_assert_eq!(proto.len(), proto_len);
    let mut data = Vec::with_capacity(proto.len() + 20);
    data.extend_from_slice(&KPL_MAGIC);
    data.extend_from_slice(&proto);
    data.extend_from_slice(&Md5::digest(&proto));
    Some(Wire {
        payload: Some(data),
        key: outer_key,
        hash_key: None,
        members,
    })
}

/// How much NDJSON to try per gzip record, relative to the room: telemetry
/// compresses well; a record that comes out too large is split in two.
const GZIP_OPTIMISM: usize = 6;

fn take_gzip(queue: &mut Queue, room: usize) -> Option<Wire> {
    let first = queue.front()?;
    let key: Arc<str> = first.key.clone();
    let budget = room.saturating_sub(key.len() + GZIP_OVERHEAD);
    let mut members = Vec::new();
    let mut plain = 0;
    while let Some(r) = queue.front() {
        if !members.is_empty() && plain + r.data.len() + 1 > budget * GZIP_OPTIMISM {
            break;
        }
        plain += r.data.len() + 1;
        members.push(queue.pop_front().expect("front exists"));
    }
    loop {
        let mut ndjson = Vec::with_capacity(plain);
        for r in &members {
            ndjson.extend_from_slice(&r.data);
            ndjson.push(b'\n');
        }
        let data = gzip(&ndjson);
        if data.len() + key.len() <= room {
            return Some(Wire {
                payload: Some(data),
                key,
                hash_key: None,
                members,
            });
        }
        if members.len() == 1 {
            // Incompressible and too large: it is within the record limit on
            // its own (fragments guarantee that), so send it plain.
            let r = members.pop().expect("one member");
            if r.size() > room {
                queue.push_front_all(vec![r]);
                return None;
            }
            return Some(Wire::single(r));
        }
        let back = members.split_off(members.len() / 2);
        plain = members.iter().map(|r| r.data.len() + 1).sum();
        queue.push_front_all(back);
    }
}

/// gzip header (10) + trailer (8) + deflate block overhead, generously.
const GZIP_OVERHEAD: usize = 64;

/// A gzip member (RFC 1952) holding `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(data, 6);
    let mut out = Vec::with_capacity(deflated.len() + 18);
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unix
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// An aggregated request stops taking records when less room than this is
/// left (another aggregate that small would mostly be overhead).
const MIN_ROOM: usize = 1024;

/// The CRC-32 (IEEE) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE), table-driven, a byte at a time: fast enough next to deflate.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(n: usize, size: usize) -> Queue {
        let mut q = Queue::default();
        for i in 0..n {
            let mut d = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
            d.resize(size - 2, b'a');
            d.extend_from_slice(b"\"}");
            q.push(Record::new(d, if i % 2 == 0 { "k-even" } else { "k-odd" }));
        }
        q
    }

    const L: RequestLimits = RequestLimits {
        max_records: 500,
        max_bytes: 5 * 1024 * 1024,
    };

    /// A minimal protobuf reader for the test: (field, wire type, bytes or varint).
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>, u64)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut n = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                n |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return n;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let tag = varint(&mut b);
            match tag & 7 {
                0 => out.push((tag >> 3, Vec::new(), varint(&mut b))),
                2 => {
                    let len = varint(&mut b) as usize;
                    out.push((tag >> 3, b[..len].to_vec(), 0));
                    b = &b[len..];
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    #[test]
    fn kpl_round_trip_with_key_table_and_checksum() {
        let mut q = queue(10, 100);
        let wires = take(&mut q, L, Format::Kpl, 1024 * 1024);
        assert_eq!(wires.len(), 1);
        let w = &wires[0];
        assert_eq!(&*w.key, "k-even");
        let data = w.data();
        assert_eq!(data[..4], KPL_MAGIC);
        let proto = &data[4..data.len() - 16];
        assert_eq!(data[data.len() - 16..], Md5::digest(proto)[..]);
        let f = fields(proto);
        let keys: Vec<String> = f
            .iter()
            .filter(|x| x.0 == 1)
            .map(|x| String::from_utf8(x.1.clone()).unwrap())
            .collect();
        assert_eq!(keys, ["k-even", "k-odd"]);
        let recs: Vec<_> = f
            .iter()
            .filter(|x| x.0 == 3)
            .map(|x| fields(&x.1))
            .collect();
        assert_eq!(recs.len(), 10);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r[0].2, (i % 2) as u64);
            assert_eq!(r[1].1, *w.members[i].data);
        }
    }

    #[test]
    fn kpl_respects_the_record_limit() {
        let mut q = queue(100, 1000);
        let max = 8 * 1024;
        let wires = take(&mut q, L, Format::Kpl, max);
        assert!(wires.len() >= 12);
        assert!(wires.iter().all(|w| w.size() <= max));
        assert_eq!(wires.iter().map(|w| w.members.len()).sum::<usize>(), 100);
        // Near-limit events are sent plain.
        let mut q = Queue::default();
        q.push(Record::new(vec![b'x'; max - 10], "key"));
        let w = take(&mut q, L, Format::Kpl, max);
        assert_eq!(w[0].data().len(), max - 10);
    }

    #[test]
    fn gzip_packs_ndjson_within_limits() {
        let mut q = queue(2000, 300);
        let max = 16 * 1024;
        let limits = RequestLimits {
            max_records: 500,
            max_bytes: 64 * 1024,
        };
        let wires = take(&mut q, limits, Format::NdjsonGzip, max);
        assert!(wires.iter().all(|w| w.size() <= max));
        assert!(wires.iter().map(Wire::size).sum::<usize>() <= 64 * 1024);
        let members: usize = wires.iter().map(|w| w.members.len()).sum();
        assert!(members > 100, "{members}");
        assert_eq!(members + q.len(), 2000);
        assert_eq!(wires[0].data()[..2], [0x1f, 0x8b]);
    }

    #[test]
    fn crc32_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn json_is_one_record_per_event() {
        let mut q = queue(3, 50);
        let w = take(&mut q, L, Format::Json, 1024);
        assert_eq!(w.len(), 3);
        assert_eq!(w[1].data(), &*w[1].members[0].data);
    }
}
