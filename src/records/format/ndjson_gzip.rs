//! The `ndjson-gzip` record format: many queued records in one Kinesis
//! record, as gzip-compressed newline-delimited JSON. Also the packing the
//! other gzip formats (`cwlogs`) share: members between a head and a tail,
//! one gzip member per record, split in two when it comes out too large.

use std::sync::Arc;

use crate::records::format::{RecordFormat, Wire};
use crate::records::queue::Queue;

pub struct NdjsonGzip;

impl RecordFormat for NdjsonGzip {
    fn pack(&self, queue: &mut Queue, room: usize) -> Option<Wire> {
        take_gzip(queue, room, &Frame::NDJSON)
    }

    #[cfg(test)]
    fn decode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        if data[..2] != [0x1f, 0x8b] {
            return vec![data.to_vec()];
        }
        let plain = gunzip(data);
        assert_eq!(plain.last(), Some(&b'\n'));
        let lines = plain[..plain.len() - 1].split(|b| *b == b'\n');
        lines.map(<[u8]>::to_vec).collect()
    }
}

/// What surrounds the members in one gzip record's plain text.
pub struct Frame<'a> {
    pub head: &'a [u8],
    /// After each member but the last.
    pub between: &'a [u8],
    /// After the last member.
    pub tail: &'a [u8],
}

impl Frame<'_> {
    const NDJSON: Frame<'static> = Frame {
        head: b"",
        between: b"\n",
        tail: b"\n",
    };
}

/// How much plain text to try per gzip record, relative to the room:
/// telemetry compresses well; a record that comes out too large is split
/// in two.
const GZIP_OPTIMISM: usize = 6;

/// gzip header (10) + trailer (8) + deflate block overhead, generously.
const GZIP_OVERHEAD: usize = 64;

/// Packs records from the front of `queue`, in `frame`, into one gzip
/// record of at most `room` bytes (data + key).
pub fn take_gzip(queue: &mut Queue, room: usize, frame: &Frame) -> Option<Wire> {
    let first = queue.front()?;
    let key: Arc<str> = first.key.clone();
    let fixed = frame.head.len() + frame.tail.len();
    let budget = room.saturating_sub(key.len() + GZIP_OVERHEAD);
    let mut members = Vec::new();
    let mut plain = fixed;
    while let Some(r) = queue.front() {
        let add = r.data.len() + frame.between.len();
        if !members.is_empty() && plain + add > budget * GZIP_OPTIMISM {
            break;
        }
        plain += add;
        members.push(queue.pop_front().expect("front exists"));
    }
    loop {
        let mut text = Vec::with_capacity(plain);
        text.extend_from_slice(frame.head);
        for (i, r) in members.iter().enumerate() {
            if i > 0 {
                text.extend_from_slice(frame.between);
            }
            text.extend_from_slice(&r.data);
        }
        text.extend_from_slice(frame.tail);
        let data = gzip(&text);
        if data.len() + key.len() <= room {
            return Some(Wire::packed(data, key, members));
        }
        if members.len() == 1 {
            // Incompressible and too large: it is within the record limit on
            // its own (fragments guarantee that), so send it plain.
            queue.push_front_all(members);
            return Wire::single_within(queue, room);
        }
        let back = members.split_off(members.len() / 2);
        plain = fixed
            + members
                .iter()
                .map(|r| r.data.len() + frame.between.len())
                .sum::<usize>();
        queue.push_front_all(back);
    }
}

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

/// The plain text of one gzip member, checked against its trailer (tests).
#[cfg(test)]
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    assert_eq!(data[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    let n = data.len();
    let plain = miniz_oxide::inflate::decompress_to_vec(&data[10..n - 8]).unwrap();
    assert_eq!(data[n - 8..n - 4], crc32(&plain).to_le_bytes());
    assert_eq!(data[n - 4..], (plain.len() as u32).to_le_bytes());
    plain
}

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
    use crate::records::format::tests::queue;
    use crate::records::format::{take, Format};
    use crate::records::queue::RequestLimits;

    #[test]
    fn gzip_packs_ndjson_within_limits() {
        let mut q = queue(2000, 300);
        let max = 16 * 1024;
        let limits = RequestLimits {
            max_records: 500,
            max_bytes: 64 * 1024,
        };
        let wires = take(&mut q, limits, &Format::NdjsonGzip.packer(None, None), max);
        assert!(wires.iter().all(|w| w.size() <= max));
        assert!(wires.iter().map(Wire::size).sum::<usize>() <= 64 * 1024);
        let members: usize = wires.iter().map(|w| w.members.len()).sum();
        assert!(members > 100, "{members}");
        assert_eq!(members + q.len(), 2000);
        assert_eq!(wires[0].data()[..2], [0x1f, 0x8b]);
        let lines = NdjsonGzip.decode(wires[0].data());
        let sent: Vec<Vec<u8>> = wires[0].members.iter().map(|r| r.data.to_vec()).collect();
        assert_eq!(lines, sent);
    }

    #[test]
    fn crc32_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
