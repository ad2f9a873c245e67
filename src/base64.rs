//! Standard base64 (RFC 4648, padded): the encoding of `Data` in Kinesis'
//! JSON protocol. Encode-only, written into the caller's buffer so a request
//! body is built without intermediate strings.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Length of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Appends the base64 encoding of `data` to `out`.
///
/// Written straight into the spare capacity: at opt-level "z" a push per
/// group became a `memcpy` call per 4 bytes, and `resize` a byte-by-byte
/// fill, which made this the top of the throughput profile.
pub fn encode_into(out: &mut Vec<u8>, data: &[u8]) {
    let len = encoded_len(data.len());
    out.reserve(len);
    let dst = &mut out.spare_capacity_mut()[..len];
    let sym = |n: u32, shift: u32| ALPHABET[(n >> shift) as usize & 63];
    let mut chunks = data.chunks_exact(3);
    let mut groups = dst.chunks_exact_mut(4);
    for (c, d) in (&mut chunks).zip(&mut groups) {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        d[0].write(sym(n, 18));
        d[1].write(sym(n, 12));
        d[2].write(sym(n, 6));
        d[3].write(sym(n, 0));
    }
    let rest = chunks.remainder();
    if let Some(d) = groups.next() {
        let n = rest
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        d[0].write(sym(n, 18));
        d[1].write(sym(n, 12));
        d[2].write(if rest.len() == 2 { sym(n, 6) } else { b'=' });
        d[3].write(b'=');
    }
    // SAFETY: `len` = 4 bytes per group, and every group was written above
    // (the full groups in the loop, the partial one, if any, after it).
    unsafe { out.set_len(out.len() + len) };
}

/// The base64 encoding of `data` as a string.
pub fn encode(data: &[u8]) -> String {
    let mut out = Vec::new();
    encode_into(&mut out, data);
    String::from_utf8(out).expect("base64 is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(encoded_len(plain.len()), enc.len());
        }
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    /// Bit by bit, the slow obvious way, for every length up to 70 and
    /// appended after existing content.
    #[test]
    fn matches_a_bitwise_reference() {
        let data: Vec<u8> = (0..70u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..=data.len() {
            let bits: Vec<u8> = data[..n]
                .iter()
                .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
                .collect();
            let mut want: String = bits
                .chunks(6)
                .map(|c| {
                    let v = (0..6).fold(0, |v, i| v << 1 | c.get(i).copied().unwrap_or(0));
                    ALPHABET[v as usize] as char
                })
                .collect();
            while !want.len().is_multiple_of(4) {
                want.push('=');
            }
            let mut out = b"prefix".to_vec();
            encode_into(&mut out, &data[..n]);
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(std::str::from_utf8(&out[6..]).unwrap(), want, "n={n}");
        }
    }
}
