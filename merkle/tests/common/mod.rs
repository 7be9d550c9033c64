//! Helpers shared by the integration tests.
#![allow(dead_code)]

use merkle::ChunkerConfig;

/// SplitMix64: a tiny deterministic generator, so test inputs never depend
/// on an external RNG's stream.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `len` pseudo-random bytes from `seed` (little-endian SplitMix64 outputs).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// 2 KiB / 8 KiB / 32 KiB.
pub fn small_config() -> ChunkerConfig {
    ChunkerConfig {
        min_size: 2 << 10,
        avg_size: 8 << 10,
        max_size: 32 << 10,
    }
}

/// 256 B / 1 KiB / 4 KiB, for property tests on short inputs.
pub fn tiny_config() -> ChunkerConfig {
    ChunkerConfig {
        min_size: 256,
        avg_size: 1024,
        max_size: 4096,
    }
}
