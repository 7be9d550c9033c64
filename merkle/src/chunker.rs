//! Content-defined chunking: Gear rolling hash with FastCDC-style normalized
//! chunking (normalization level 2) and cut-point skipping of `min_size`.
//!
//! For each chunk, with chunk-relative byte offset `p` (0-based):
//! - bytes `p < min_size` are not hashed at all (cut-point skipping);
//! - the fingerprint starts at 0 and for each byte `p >= min_size` becomes
//!   `fp = (fp << 1) + GEAR[byte]` (wrapping, 64-bit);
//! - for `min_size <= p < avg_size` the chunk ends after byte `p` when
//!   `fp & MASK_S == 0`, and for `avg_size <= p < max_size` when
//!   `fp & MASK_L == 0`;
//! - a chunk that reaches `max_size` bytes ends there.
//!
//! With `avg_size = 2^b`, `MASK_S` is the top `b + 2` bits of a `u64` and
//! `MASK_L` the top `b - 2` bits. Top bits are used because bit `k` of a Gear
//! fingerprint depends on the last `k + 1` bytes only, so the top bits see the
//! full 64-byte window. Every chunk except the last of a stream is therefore
//! `min_size + 1 ..= max_size` bytes long (exactly `max_size` when
//! `min_size == max_size`).

use serde::{Deserialize, Serialize};

/// Seed of the SplitMix64 generator that fills [`GEAR`]
/// (the ASCII bytes of "syncnode", big-endian).
pub const GEAR_SEED: u64 = 0x7379_6e63_6e6f_6465;

/// The Gear table: 256 pseudo-random `u64`.
///
/// `GEAR[i]` is the `(i + 1)`-th output of SplitMix64 started from
/// [`GEAR_SEED`]: `state += 0x9E3779B97F4A7C15; z = state;
/// z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
/// output z ^ (z >> 31)` (all wrapping). Changing it changes every cut point.
pub const GEAR: [u64; 256] = gear_table(GEAR_SEED);

const fn gear_table(seed: u64) -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = seed;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Smallest allowed `min_size`.
pub const MIN_CHUNK_SIZE_LIMIT: u32 = 64;
/// Largest allowed `max_size` (16 MiB).
pub const MAX_CHUNK_SIZE_LIMIT: u32 = 16 << 20;

/// Chunk size bounds. Part of every manifest: a version is chunked with one config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerConfig {
    /// No chunk (except the last of a file) is this short or shorter; the
    /// first `min_size` bytes of a chunk are not hashed.
    pub min_size: u32,
    /// Target average size; a power of two. Cut probability changes here.
    pub avg_size: u32,
    /// No chunk is longer.
    pub max_size: u32,
}

impl Default for ChunkerConfig {
    /// 64 KiB / 256 KiB / 1 MiB.
    fn default() -> Self {
        ChunkerConfig {
            min_size: 64 << 10,
            avg_size: 256 << 10,
            max_size: 1 << 20,
        }
    }
}

/// An invalid [`ChunkerConfig`]; each variant names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkerConfigError {
    /// `min_size` below 64.
    #[error("chunker min_size {0} is below {MIN_CHUNK_SIZE_LIMIT}")]
    MinSizeTooSmall(u32),
    /// `avg_size` below `min_size`.
    #[error("chunker avg_size {avg_size} is below min_size {min_size}")]
    AvgSizeBelowMin {
        /// The offending `avg_size`.
        avg_size: u32,
        /// The configured `min_size`.
        min_size: u32,
    },
    /// `avg_size` not a power of two.
    #[error("chunker avg_size {0} is not a power of two")]
    AvgSizeNotPowerOfTwo(u32),
    /// `max_size` below `avg_size`.
    #[error("chunker max_size {max_size} is below avg_size {avg_size}")]
    MaxSizeBelowAvg {
        /// The offending `max_size`.
        max_size: u32,
        /// The configured `avg_size`.
        avg_size: u32,
    },
    /// `max_size` above 16 MiB.
    #[error("chunker max_size {0} is above {MAX_CHUNK_SIZE_LIMIT}")]
    MaxSizeTooLarge(u32),
}

impl ChunkerConfigError {
    /// Name of the offending field: `"min_size"`, `"avg_size"` or `"max_size"`.
    pub fn field(&self) -> &'static str {
        match self {
            ChunkerConfigError::MinSizeTooSmall(_) => "min_size",
            ChunkerConfigError::AvgSizeBelowMin { .. }
            | ChunkerConfigError::AvgSizeNotPowerOfTwo(_) => "avg_size",
            ChunkerConfigError::MaxSizeBelowAvg { .. } | ChunkerConfigError::MaxSizeTooLarge(_) => {
                "max_size"
            }
        }
    }
}

impl ChunkerConfig {
    /// Checks `64 <= min_size <= avg_size <= max_size <= 16 MiB` and that
    /// `avg_size` is a power of two.
    pub fn validate(&self) -> Result<(), ChunkerConfigError> {
        let ChunkerConfig {
            min_size,
            avg_size,
            max_size,
        } = *self;
        if min_size < MIN_CHUNK_SIZE_LIMIT {
            return Err(ChunkerConfigError::MinSizeTooSmall(min_size));
        }
        if avg_size < min_size {
            return Err(ChunkerConfigError::AvgSizeBelowMin { avg_size, min_size });
        }
        if !avg_size.is_power_of_two() {
            return Err(ChunkerConfigError::AvgSizeNotPowerOfTwo(avg_size));
        }
        if max_size < avg_size {
            return Err(ChunkerConfigError::MaxSizeBelowAvg { max_size, avg_size });
        }
        if max_size > MAX_CHUNK_SIZE_LIMIT {
            return Err(ChunkerConfigError::MaxSizeTooLarge(max_size));
        }
        Ok(())
    }

    /// `(MASK_S, MASK_L)`: the top `log2(avg) + 2` and top `log2(avg) - 2` bits.
    /// Only meaningful for a valid config.
    fn masks(&self) -> (u64, u64) {
        let bits = self.avg_size.trailing_zeros(); // 6..=24 for a valid config
        (!0u64 << (64 - (bits + 2)), !0u64 << (64 - (bits - 2)))
    }
}

/// Streaming chunker state. Feed the stream through [`Chunker::find_cut`] in
/// slices of any size; cut points do not depend on the slicing.
#[derive(Clone, Debug)]
pub struct Chunker {
    cfg: ChunkerConfig,
    mask_s: u64,
    mask_l: u64,
    /// Bytes of the current chunk seen so far.
    pending: u64,
    /// Gear fingerprint of the current chunk's bytes from `min_size` on.
    fp: u64,
}

/// Scans `data`, updating `fp`; returns the index of the first byte after
/// which `fp & mask == 0`. The hot loop of the crate.
#[inline(always)]
fn scan(fp: &mut u64, data: &[u8], mask: u64) -> Option<usize> {
    let mut h = *fp;
    let mut pairs = data.chunks_exact(2);
    let mut i = 0;
    for p in &mut pairs {
        let g0 = GEAR[p[0] as usize];
        let g1 = GEAR[p[1] as usize];
        // h1 and h2 both derive from h, so the fingerprint's dependency chain
        // advances two bytes per shift-and-add.
        let h1 = (h << 1).wrapping_add(g0);
        let h2 = (h << 2).wrapping_add((g0 << 1).wrapping_add(g1));
        if h1 & mask == 0 {
            *fp = h1;
            return Some(i);
        }
        if h2 & mask == 0 {
            *fp = h2;
            return Some(i + 1);
        }
        h = h2;
        i += 2;
    }
    if let [b] = pairs.remainder() {
        h = (h << 1).wrapping_add(GEAR[*b as usize]);
        if h & mask == 0 {
            *fp = h;
            return Some(i);
        }
    }
    *fp = h;
    None
}

impl Chunker {
    /// A chunker at the start of a stream.
    pub fn new(cfg: ChunkerConfig) -> Result<Chunker, ChunkerConfigError> {
        cfg.validate()?;
        let (mask_s, mask_l) = cfg.masks();
        Ok(Chunker {
            cfg,
            mask_s,
            mask_l,
            pending: 0,
            fp: 0,
        })
    }

    /// Starts a new chunk here, as if a cut point had just been found.
    pub fn reset(&mut self) {
        self.pending = 0;
        self.fp = 0;
    }

    /// The config this chunker was built with.
    pub fn config(&self) -> &ChunkerConfig {
        &self.cfg
    }

    /// Scan the next bytes of the stream. `Some(n)`: the current chunk ends
    /// after `data[..n]` (`n >= 1`; state resets for the next chunk; the
    /// caller then continues with `data[n..]`). `None`: all of `data` belongs
    /// to the current chunk.
    pub fn find_cut(&mut self, data: &[u8]) -> Option<usize> {
        let min = u64::from(self.cfg.min_size);
        let avg = u64::from(self.cfg.avg_size);
        let max = u64::from(self.cfg.max_size);
        let mut pos = 0usize;

        // Cut-point skipping: the first min_size bytes are never hashed.
        if self.pending < min {
            let skip = (min - self.pending).min(data.len() as u64) as usize;
            pos = skip;
            self.pending += skip as u64;
            if self.pending < min {
                return None;
            }
        }
        // Offsets min..avg: the stricter mask (normalization).
        if self.pending < avg {
            let end = pos + ((avg - self.pending) as usize).min(data.len() - pos);
            if let Some(i) = scan(&mut self.fp, &data[pos..end], self.mask_s) {
                return Some(self.cut(pos + i + 1));
            }
            self.pending += (end - pos) as u64;
            pos = end;
            if self.pending < avg {
                return None;
            }
        }
        // Offsets avg..max: the looser mask.
        let end = pos + ((max - self.pending) as usize).min(data.len() - pos);
        if let Some(i) = scan(&mut self.fp, &data[pos..end], self.mask_l) {
            return Some(self.cut(pos + i + 1));
        }
        self.pending += (end - pos) as u64;
        if self.pending == max {
            debug_assert!(end > 0, "a chunk reached max_size without new bytes");
            return Some(self.cut(end));
        }
        None
    }

    /// Resets the state for the next chunk and returns `n`.
    fn cut(&mut self, n: usize) -> usize {
        self.pending = 0;
        self.fp = 0;
        n
    }

    /// Bytes of the current, unfinished chunk seen so far.
    pub fn pending(&self) -> u64 {
        self.pending
    }
}

/// Chunk lengths for a whole in-memory buffer (the last chunk may be shorter
/// than `min_size`). Empty input gives an empty vec.
///
/// # Panics
/// If `cfg` is invalid (see [`ChunkerConfig::validate`]).
pub fn chunk_lengths(cfg: &ChunkerConfig, data: &[u8]) -> Vec<u32> {
    let mut chunker = Chunker::new(*cfg).expect("chunk_lengths needs a valid ChunkerConfig");
    let mut out = Vec::with_capacity(data.len() / cfg.avg_size as usize + 1);
    let mut rest = data;
    while let Some(n) = chunker.find_cut(rest) {
        out.push(n as u32);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(rest.len() as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u32, avg: u32, max: u32) -> ChunkerConfig {
        ChunkerConfig {
            min_size: min,
            avg_size: avg,
            max_size: max,
        }
    }

    #[test]
    fn gear_table_is_splitmix64() {
        // First SplitMix64 output for seed 0 is the well-known 0xe220a8397b1dcdaf.
        assert_eq!(gear_table(0)[0], 0xe220_a839_7b1d_cdaf);
        assert_eq!(gear_table(0)[1], 0x6e78_9e6a_a1b9_65f4);
        let distinct: std::collections::HashSet<u64> = GEAR.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn validate_names_the_field() {
        assert!(ChunkerConfig::default().validate().is_ok());
        assert!(cfg(64, 64, 64).validate().is_ok());
        assert!(cfg(64, 1 << 24, 1 << 24).validate().is_ok());
        let field = |c: ChunkerConfig| c.validate().unwrap_err().field();
        assert_eq!(field(cfg(63, 64, 64)), "min_size");
        assert_eq!(field(cfg(128, 64, 256)), "avg_size");
        assert_eq!(field(cfg(64, 96, 256)), "avg_size");
        assert_eq!(field(cfg(64, 128, 100)), "max_size");
        assert_eq!(field(cfg(64, 128, (16 << 20) + 1)), "max_size");
        assert!(
            cfg(63, 64, 64)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("min_size")
        );
        assert!(Chunker::new(cfg(0, 0, 0)).is_err());
    }

    #[test]
    fn masks_are_top_bits() {
        let (s, l) = ChunkerConfig::default().masks();
        assert_eq!(s.count_ones(), 20);
        assert_eq!(l.count_ones(), 16);
        assert_eq!(s.leading_ones(), 20);
        assert_eq!(l.leading_ones(), 16);
    }

    #[test]
    fn constant_input_cuts_at_max() {
        // A constant byte stream settles into a fixed fingerprint; the chunker
        // must still respect max_size.
        let c = cfg(64, 256, 1024);
        let data = vec![0u8; 10_000];
        let lens = chunk_lengths(&c, &data);
        assert_eq!(lens.iter().map(|&l| l as usize).sum::<usize>(), data.len());
        assert!(lens.iter().all(|&l| l <= 1024));
        assert!(lens[..lens.len() - 1].iter().all(|&l| l > 64));
    }

    #[test]
    fn min_equals_max() {
        let c = cfg(64, 64, 64);
        let data = vec![7u8; 200];
        assert_eq!(chunk_lengths(&c, &data), vec![64, 64, 64, 8]);
    }

    #[test]
    fn empty_and_tiny() {
        let c = ChunkerConfig::default();
        assert!(chunk_lengths(&c, &[]).is_empty());
        assert_eq!(chunk_lengths(&c, &[1]), vec![1]);
        let mut ch = Chunker::new(c).unwrap();
        assert_eq!(ch.find_cut(&[]), None);
        assert_eq!(ch.find_cut(&[1, 2, 3]), None);
        assert_eq!(ch.pending(), 3);
    }
}
