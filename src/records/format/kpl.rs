//! The `kpl` record format: many queued records in one Kinesis record, in
//! the KPL aggregation format (magic, protobuf `AggregatedRecord` with a
//! partition key table, MD5 trailer), which the KCL and the KPL
//! de-aggregation libraries unpack.

use std::sync::Arc;

use md5::{Digest, Md5};

use crate::records::format::{RecordFormat, Wire};
use crate::records::queue::{Queue, Record};

/// First bytes of a KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

pub struct Kpl;

impl RecordFormat for Kpl {
    /// Packs records from the front of `queue` into one aggregated record of
    /// at most `room` bytes (data + outer key). A record too large to
    /// aggregate is sent as it is: de-aggregators pass plain records through.
    fn pack(&self, queue: &mut Queue, room: usize) -> Option<Wire> {
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
            return Wire::single_within(queue, room);
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
        Some(Wire::packed(data, outer_key, members))
    }

    #[cfg(test)]
    fn decode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        if data[..4] != KPL_MAGIC {
            return vec![data.to_vec()];
        }
        let proto = &data[4..data.len() - 16];
        assert_eq!(data[data.len() - 16..], Md5::digest(proto)[..]);
        tests::fields(proto)
            .into_iter()
            .filter(|f| f.0 == 3)
            .map(|f| tests::fields(&f.1).swap_remove(1).1)
            .collect()
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::records::format::tests::{queue, L};
    use crate::records::format::{take, Format};

    /// A minimal protobuf reader for the tests: (field, bytes, varint).
    pub fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>, u64)> {
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
        let wires = take(&mut q, L, &Format::Kpl.packer(None, None), 1024 * 1024);
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
        let kpl = Format::Kpl.packer(None, None);
        let wires = take(&mut q, L, &kpl, max);
        assert!(wires.len() >= 12);
        assert!(wires.iter().all(|w| w.size() <= max));
        assert_eq!(wires.iter().map(|w| w.members.len()).sum::<usize>(), 100);
        // Near-limit events are sent plain.
        let mut q = Queue::default();
        q.push(Record::new(vec![b'x'; max - 10], "key"));
        let w = take(&mut q, L, &kpl, max);
        assert_eq!(w[0].data().len(), max - 10);
    }
}
