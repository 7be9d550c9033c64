//! Reed-Solomon parity over stripes of chunks (format in `docs/manifest.md`
//! section 9, design in `docs/erasure.md`).
//!
//! A version's unique chunks (in [`Manifest::unique_chunks`] order) are cut
//! into stripes of `data` consecutive chunks (the last stripe may be
//! shorter). Each stripe gets `parity` parity pieces computed with
//! reed-solomon-simd (GF(2^16), Leopard-style FFT). Content-defined chunks
//! differ in length, so every shard of a stripe is the stripe's longest
//! chunk zero-padded up to an even length (the codec needs even shards); a
//! parity piece is exactly that long. Each parity piece is committed by its
//! own BLAKE3 hash under the version root, so it is verified like a chunk
//! before it is stored, served or used. Any `data` verified pieces of a
//! stripe (data chunks or parity pieces) rebuild its missing chunks, and each
//! rebuilt chunk is checked against its Merkle leaf before it is returned.
//!
//! [`Manifest::unique_chunks`]: crate::Manifest::unique_chunks

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::file::ChunkRef;
use crate::hash::Hash;
use crate::tree::merkle_root;

/// Most data chunks per stripe.
pub const MAX_DATA: u16 = 128;
/// Most parity pieces per stripe.
pub const MAX_PARITY: u16 = 128;
/// Domain tag of the erasure leaf bound into the version root.
pub const ERASURE_TAG: u8 = 0x04;

/// Stripe shape: `data` chunks protected by `parity` pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureConfig {
    /// Data chunks per stripe (k), `1..=MAX_DATA`.
    pub data: u16,
    /// Parity pieces per stripe (m), `1..=MAX_PARITY`.
    pub parity: u16,
}

/// Erasure coding failures. Variants name the offending value or piece.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    /// `data` or `parity` out of range.
    #[error(
        "invalid erasure config {data}+{parity}: need data in 1..={MAX_DATA} and parity in 1..={MAX_PARITY}"
    )]
    BadConfig {
        /// Data chunks per stripe.
        data: u16,
        /// Parity pieces per stripe.
        parity: u16,
    },
    /// A `K+M` string that does not parse.
    #[error("invalid erasure spec {0:?}: write it as K+M, e.g. 8+2")]
    BadSpec(String),
    /// The manifest lists the wrong number of parity pieces.
    #[error("erasure lists {got} parity pieces, the stripes need {want}")]
    ParityCount {
        /// Pieces the stripes need.
        want: usize,
        /// Pieces listed.
        got: usize,
    },
    /// A parity piece's length is not its stripe's shard length.
    #[error("parity piece {index} has length {got}, its stripe's shard length is {want}")]
    ParityLen {
        /// Index into the parity list.
        index: usize,
        /// The stripe's shard length.
        want: u32,
        /// The listed length.
        got: u32,
    },
    /// A piece given to [`rebuild_stripe`] does not match its hash or length.
    #[error("{kind} piece {index} of the stripe does not match its hash or length")]
    CorruptPiece {
        /// `"data"` or `"parity"`.
        kind: &'static str,
        /// Position in the stripe.
        index: usize,
    },
    /// Fewer verified pieces than data chunks in the stripe.
    #[error("stripe needs {need} pieces to rebuild, has {have}")]
    TooFewPieces {
        /// Data chunks in the stripe.
        need: usize,
        /// Verified pieces given.
        have: usize,
    },
    /// A rebuilt chunk does not hash to its leaf (a bug or a forged manifest).
    #[error("rebuilt data chunk {index} of the stripe does not match its leaf")]
    RebuiltMismatch {
        /// Position in the stripe.
        index: usize,
    },
    /// The codec refused the shards (should not happen with valid input).
    #[error("reed-solomon codec: {0}")]
    Codec(String),
}

impl ErasureConfig {
    /// A checked config.
    pub fn new(data: u16, parity: u16) -> Result<Self, ErasureError> {
        let c = ErasureConfig { data, parity };
        c.validate()?;
        Ok(c)
    }

    /// Parses `K+M` (e.g. `8+2`).
    pub fn parse(spec: &str) -> Result<Self, ErasureError> {
        let bad = || ErasureError::BadSpec(spec.to_string());
        let (k, m) = spec.trim().split_once('+').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let m = m.trim().parse().map_err(|_| bad())?;
        Self::new(k, m)
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), ErasureError> {
        if (1..=MAX_DATA).contains(&self.data) && (1..=MAX_PARITY).contains(&self.parity) {
            Ok(())
        } else {
            Err(ErasureError::BadConfig {
                data: self.data,
                parity: self.parity,
            })
        }
    }
}

/// The erasure section of a manifest: the stripe shape and every parity
/// piece, stripe by stripe (stripe `s` owns `parity[s*m .. s*m + m]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// Stripe shape.
    pub config: ErasureConfig,
    /// Parity pieces (BLAKE3 of the piece, its length = the stripe's shard length).
    pub parity: Vec<ChunkRef>,
}

/// One stripe: which unique chunks it covers and how long its shards are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stripe {
    /// Indices into the manifest's unique chunk list.
    pub data: Range<usize>,
    /// Indices into [`Erasure::parity`].
    pub parity: Range<usize>,
    /// Shard length: the longest chunk of the stripe, rounded up to even.
    pub shard_len: u32,
}

/// Cuts `unique` chunks into stripes of `config.data` chunks.
pub fn stripes(config: ErasureConfig, unique: &[ChunkRef]) -> Vec<Stripe> {
    let k = usize::from(config.data.max(1));
    let m = usize::from(config.parity);
    unique
        .chunks(k)
        .enumerate()
        .map(|(s, group)| {
            let longest = group.iter().map(|c| c.len).max().unwrap_or(0);
            Stripe {
                data: s * k..s * k + group.len(),
                parity: s * m..s * m + m,
                shard_len: longest + (longest & 1),
            }
        })
        .collect()
}

/// The stripe of piece `piece` of [`Manifest::pieces`](crate::Manifest::pieces),
/// given `unique` data chunks: data chunk `i` is in stripe `i / data`, parity
/// piece `unique + j` in stripe `j / parity`.
pub fn stripe_of_piece(config: ErasureConfig, unique: usize, piece: usize) -> usize {
    if piece < unique {
        piece / usize::from(config.data.max(1))
    } else {
        (piece - unique) / usize::from(config.parity.max(1))
    }
}

impl Erasure {
    /// Checks the parity list against the stripes of `unique`.
    pub fn validate(&self, unique: &[ChunkRef]) -> Result<(), ErasureError> {
        self.config.validate()?;
        let stripes = stripes(self.config, unique);
        let want = stripes.len() * usize::from(self.config.parity);
        if self.parity.len() != want {
            return Err(ErasureError::ParityCount {
                want,
                got: self.parity.len(),
            });
        }
        for s in &stripes {
            for index in s.parity.clone() {
                let got = self.parity[index].len;
                if got != s.shard_len {
                    let want = s.shard_len;
                    return Err(ErasureError::ParityLen { index, want, got });
                }
            }
        }
        Ok(())
    }

    /// `BLAKE3(0x04 || u16le(data) || u16le(parity) || merkle_root(parity hashes))`,
    /// appended to the version root's input when a manifest has parity.
    pub fn leaf(&self) -> Hash {
        let leaves: Vec<Hash> = self.parity.iter().map(|p| p.hash).collect();
        let mut h = blake3::Hasher::new();
        h.update(&[ERASURE_TAG]);
        h.update(&self.config.data.to_le_bytes());
        h.update(&self.config.parity.to_le_bytes());
        h.update(&merkle_root(&leaves).0);
        h.finalize().into()
    }
}

fn padded(chunk: &[u8], shard_len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(shard_len);
    v.extend_from_slice(chunk);
    v.resize(shard_len, 0);
    v
}

fn codec(e: reed_solomon_simd::Error) -> ErasureError {
    ErasureError::Codec(e.to_string())
}

/// Computes `parity` pieces for one stripe's data chunks (in stripe order).
/// Each chunk is zero-padded to the stripe's shard length.
pub fn encode_stripe(parity: u16, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, ErasureError> {
    let longest = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    let shard_len = longest + (longest & 1);
    let shards: Vec<Vec<u8>> = chunks.iter().map(|c| padded(c, shard_len)).collect();
    reed_solomon_simd::encode(shards.len(), usize::from(parity), &shards).map_err(codec)
}

/// Computes the erasure section for `unique` chunks; `read(i)` returns the
/// bytes of unique chunk `i`. `sink(parity_index, bytes)` receives every
/// parity piece (so a publisher can store it) in order.
pub fn encode_all<E>(
    config: ErasureConfig,
    unique: &[ChunkRef],
    mut read: impl FnMut(usize) -> Result<Vec<u8>, E>,
    mut sink: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<Result<Erasure, ErasureError>, E> {
    if let Err(e) = config.validate() {
        return Ok(Err(e));
    }
    let mut parity = Vec::new();
    for stripe in stripes(config, unique) {
        let chunks = stripe
            .data
            .clone()
            .map(&mut read)
            .collect::<Result<Vec<_>, E>>()?;
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let pieces = match encode_stripe(config.parity, &refs) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        for piece in pieces {
            sink(parity.len(), &piece)?;
            let len = u32::try_from(piece.len()).unwrap_or(u32::MAX);
            parity.push(ChunkRef {
                hash: Hash::of(&piece),
                len,
            });
        }
    }
    Ok(Ok(Erasure { config, parity }))
}

fn verified<'a>(
    kind: &'static str,
    refs: &[ChunkRef],
    pieces: &[Option<&'a [u8]>],
) -> Result<Vec<(usize, &'a [u8])>, ErasureError> {
    let mut out = Vec::new();
    for (index, (r, p)) in refs.iter().zip(pieces).enumerate() {
        if let Some(p) = p {
            if p.len() != r.len as usize || Hash::of(p) != r.hash {
                return Err(ErasureError::CorruptPiece { kind, index });
            }
            out.push((index, *p));
        }
    }
    Ok(out)
}

/// Rebuilds one stripe. `data_refs`/`parity_refs` are the stripe's chunk and
/// parity refs from the manifest; `data`/`parity` the pieces held (same
/// positions, `None` when missing). Every piece given is verified first
/// (`CorruptPiece` names the first bad one); at least `data_refs.len()`
/// pieces must be given. Returns every data chunk of the stripe, rebuilt ones
/// checked against their leaves.
pub fn rebuild_stripe(
    data_refs: &[ChunkRef],
    parity_refs: &[ChunkRef],
    data: &[Option<&[u8]>],
    parity: &[Option<&[u8]>],
) -> Result<Vec<Vec<u8>>, ErasureError> {
    let have_data = verified("data", data_refs, data)?;
    let have_parity = verified("parity", parity_refs, parity)?;
    let (k, m) = (data_refs.len(), parity_refs.len());
    let have = have_data.len() + have_parity.len();
    if have < k {
        return Err(ErasureError::TooFewPieces { need: k, have });
    }
    let longest = data_refs.iter().map(|c| c.len as usize).max().unwrap_or(0);
    let shard_len = longest + (longest & 1);
    let mut out: Vec<Option<Vec<u8>>> = vec![None; k];
    for (i, p) in &have_data {
        out[*i] = Some(p.to_vec());
    }
    if have_data.len() < k {
        let orig = have_data.iter().map(|(i, p)| (*i, padded(p, shard_len)));
        let restored = reed_solomon_simd::decode(k, m, orig, have_parity).map_err(codec)?;
        for (index, mut bytes) in restored {
            bytes.truncate(data_refs[index].len as usize);
            if Hash::of(&bytes) != data_refs[index].hash {
                return Err(ErasureError::RebuiltMismatch { index });
            }
            out[index] = Some(bytes);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or(ErasureError::RebuiltMismatch { index: i }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (s >> 56) as u8
            })
            .collect()
    }

    fn cref(b: &[u8]) -> ChunkRef {
        ChunkRef {
            hash: Hash::of(b),
            len: b.len() as u32,
        }
    }

    /// Every subset of `k + m` pieces of size >= k rebuilds the stripe,
    /// every smaller subset is refused.
    fn every_loss_pattern(lens: &[usize], m: u16) {
        let k = lens.len();
        let data: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| chunk(i as u64, l))
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let parity = encode_stripe(m, &refs).unwrap();
        let (drefs, prefs): (Vec<_>, Vec<_>) = (
            data.iter().map(|d| cref(d)).collect(),
            parity.iter().map(|p| cref(p)).collect(),
        );
        let n = k + usize::from(m);
        for mask in 0u32..(1 << n) {
            let held = |i: usize| mask & (1 << i) != 0;
            let d: Vec<Option<&[u8]>> = (0..k).map(|i| held(i).then(|| &data[i][..])).collect();
            let p: Vec<Option<&[u8]>> = (0..usize::from(m))
                .map(|j| held(k + j).then(|| &parity[j][..]))
                .collect();
            let got = rebuild_stripe(&drefs, &prefs, &d, &p);
            if mask.count_ones() as usize >= k {
                assert_eq!(got.unwrap(), data, "mask {mask:b}");
            } else {
                assert!(
                    matches!(got, Err(ErasureError::TooFewPieces { .. })),
                    "mask {mask:b}"
                );
            }
        }
    }

    #[test]
    fn any_k_of_k_plus_m_rebuilds_uneven_chunks() {
        every_loss_pattern(&[100, 7, 64, 33], 2);
        every_loss_pattern(&[5, 6, 1], 3);
        every_loss_pattern(&[1000], 1);
        every_loss_pattern(&[10, 11, 12, 13, 14], 1);
    }

    #[test]
    fn corrupt_piece_is_rejected_before_decoding() {
        let data = [chunk(1, 50), chunk(2, 40)];
        let parity = encode_stripe(2, &[&data[0], &data[1]]).unwrap();
        let drefs = [cref(&data[0]), cref(&data[1])];
        let prefs = [cref(&parity[0]), cref(&parity[1])];
        let mut bad = parity[1].clone();
        bad[3] ^= 1;
        let got = rebuild_stripe(&drefs, &prefs, &[None, Some(&data[1])], &[None, Some(&bad)]);
        assert_eq!(
            got,
            Err(ErasureError::CorruptPiece {
                kind: "parity",
                index: 1
            })
        );
        let mut bad = data[1].clone();
        bad[0] ^= 1;
        let got = rebuild_stripe(
            &drefs,
            &prefs,
            &[None, Some(&bad)],
            &[Some(&parity[0]), None],
        );
        assert_eq!(
            got,
            Err(ErasureError::CorruptPiece {
                kind: "data",
                index: 1
            })
        );
    }

    #[test]
    fn rebuilt_chunk_is_checked_against_its_leaf() {
        let data = [chunk(1, 50), chunk(2, 40)];
        let parity = encode_stripe(1, &[&data[0], &data[1]]).unwrap();
        // A manifest whose leaf for chunk 0 is wrong (but parity refs honest).
        let drefs = [cref(&chunk(9, 50)), cref(&data[1])];
        let prefs = [cref(&parity[0])];
        let got = rebuild_stripe(&drefs, &prefs, &[None, Some(&data[1])], &[Some(&parity[0])]);
        assert_eq!(got, Err(ErasureError::RebuiltMismatch { index: 0 }));
    }

    #[test]
    fn stripes_pad_to_even_longest_and_last_is_short() {
        let lens = [3u32, 9, 4, 8, 2];
        let unique: Vec<ChunkRef> = lens
            .iter()
            .map(|&l| cref(&chunk(l.into(), l as usize)))
            .collect();
        let s = stripes(ErasureConfig::new(2, 3).unwrap(), &unique);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].data.clone(), s[0].parity.clone(), s[0].shard_len),
            (0..2, 0..3, 10)
        );
        assert_eq!((s[1].data.clone(), s[1].shard_len), (2..4, 8));
        assert_eq!(
            (s[2].data.clone(), s[2].parity.clone(), s[2].shard_len),
            (4..5, 6..9, 2)
        );
    }

    #[test]
    fn encode_all_matches_stripes_and_validates() {
        let data: Vec<Vec<u8>> = (0..7).map(|i| chunk(i, 20 + i as usize * 3)).collect();
        let unique: Vec<ChunkRef> = data.iter().map(|d| cref(d)).collect();
        let cfg = ErasureConfig::parse("3+2").unwrap();
        let mut sunk = Vec::new();
        let e = encode_all::<()>(
            cfg,
            &unique,
            |i| Ok(data[i].clone()),
            |i, b| {
                sunk.push((i, b.to_vec()));
                Ok(())
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.parity.len(), 6);
        assert_eq!(sunk.len(), 6);
        assert!(sunk.iter().all(|(i, b)| cref(b) == e.parity[*i]));
        e.validate(&unique).unwrap();
        let mut short = e.clone();
        short.parity.pop();
        assert_eq!(
            short.validate(&unique),
            Err(ErasureError::ParityCount { want: 6, got: 5 })
        );
        let mut long = e.clone();
        long.parity[0].len += 2;
        assert!(matches!(
            long.validate(&unique),
            Err(ErasureError::ParityLen { index: 0, .. })
        ));
        let mut other = e.clone();
        other.parity[5].hash = Hash([0; 32]);
        assert_ne!(e.leaf(), other.leaf());
    }

    #[test]
    fn pieces_map_to_their_stripes() {
        let cfg = ErasureConfig::new(3, 2).unwrap();
        // 7 data chunks: stripes [0,1,2] [3,4,5] [6]; parity 7..13.
        let got: Vec<usize> = (0..13).map(|p| stripe_of_piece(cfg, 7, p)).collect();
        assert_eq!(got, [0, 0, 0, 1, 1, 1, 2, 0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn parse_rejects_bad_specs() {
        assert_eq!(
            ErasureConfig::parse("8+2").unwrap(),
            ErasureConfig { data: 8, parity: 2 }
        );
        for bad in ["8", "8+", "+2", "a+b", "8-2"] {
            assert!(
                matches!(ErasureConfig::parse(bad), Err(ErasureError::BadSpec(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            ErasureConfig::parse("0+2"),
            Err(ErasureError::BadConfig { .. })
        ));
        assert!(matches!(
            ErasureConfig::parse("8+0"),
            Err(ErasureError::BadConfig { .. })
        ));
        assert!(matches!(
            ErasureConfig::parse("200+2"),
            Err(ErasureError::BadConfig { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random stripe shapes, chunk lengths and loss sets of at most m pieces.
        #[test]
        fn random_losses_up_to_m_rebuild(
            lens in proptest::collection::vec(1usize..300, 1..12),
            m in 1u16..5,
            seed in 0u64..1000,
            lost in proptest::collection::vec(0usize..64, 0..5),
        ) {
            let k = lens.len();
            let data: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| chunk(seed + i as u64, l)).collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let parity = encode_stripe(m, &refs).unwrap();
            let drefs: Vec<ChunkRef> = data.iter().map(|d| cref(d)).collect();
            let prefs: Vec<ChunkRef> = parity.iter().map(|p| cref(p)).collect();
            let n = k + usize::from(m);
            let lost: std::collections::BTreeSet<usize> =
                lost.iter().map(|l| l % n).take(usize::from(m)).collect();
            let d: Vec<Option<&[u8]>> = (0..k).map(|i| (!lost.contains(&i)).then(|| &data[i][..])).collect();
            let p: Vec<Option<&[u8]>> = (0..usize::from(m))
                .map(|j| (!lost.contains(&(k + j))).then(|| &parity[j][..]))
                .collect();
            proptest::prop_assert_eq!(rebuild_stripe(&drefs, &prefs, &d, &p).unwrap(), data);
        }
    }
}
