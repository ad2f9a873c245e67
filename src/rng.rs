//! A small non-cryptographic random source for partition keys, fragment ids
//! and backoff jitter. Seeded from the OS through std's `RandomState`, so no
//! extra crate and no file read at start.

use std::hash::{BuildHasher, Hasher};

pub struct Rng(u64);

impl Rng {
    /// A generator seeded from OS randomness.
    pub fn from_os() -> Rng {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        Rng(h.finish() | 1)
    }

    /// A generator with a fixed seed, for tests.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// xorshift64*.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..=max` (slight modulo bias is irrelevant for jitter).
    pub fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }

    /// `n` random bytes' worth of lowercase hex (2·n characters).
    pub fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(2 * n);
        while s.len() < 2 * n {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(2 * n);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_range() {
        let mut r = Rng::seeded(42);
        let a = r.hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, r.hex(16));
        for _ in 0..1000 {
            assert!(r.below_or_eq(10) <= 10);
        }
        assert_ne!(Rng::from_os().next_u64(), Rng::from_os().next_u64());
    }
}
