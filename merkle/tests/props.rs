//! Property tests over chunking, proofs, manifests, signed roots and frames.

mod common;

use common::tiny_config;
use merkle::ed25519_dalek::SigningKey;
use merkle::{
    ChunkRef, Chunker, ChunkerConfig, FileChunker, FileEntry, Hash, Manifest, SignedRoot,
    chunk_lengths, decode_frame, encode_frame, merkle_proof, merkle_root, sha256,
};
use proptest::prelude::*;

/// Splits `data` at the given (cyclic) slice sizes.
fn slices<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

/// Chunk lengths by feeding `parts` through `Chunker::find_cut`.
fn streamed_lengths(cfg: ChunkerConfig, parts: &[&[u8]]) -> Vec<u32> {
    let mut ch = Chunker::new(cfg).unwrap();
    let mut out = Vec::new();
    for part in parts {
        let mut rest = *part;
        loop {
            let before = ch.pending();
            let Some(n) = ch.find_cut(rest) else { break };
            assert!(n >= 1 && n <= rest.len());
            assert_eq!(ch.pending(), 0);
            out.push((before + n as u64) as u32);
            rest = &rest[n..];
        }
    }
    if ch.pending() > 0 {
        out.push(ch.pending() as u32);
    }
    out
}

/// Inputs with little entropy too (runs of one byte), so that cuts at
/// max_size are exercised, not only hash cuts.
fn data_strategy(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max_len),
        (any::<u64>(), 0..max_len).prop_map(|(seed, len)| common::random_bytes(seed, len)),
        (any::<u8>(), 0..max_len).prop_map(|(b, len)| vec![b; len]),
    ]
}

fn config_strategy() -> impl Strategy<Value = ChunkerConfig> {
    (6u32..12, 0u32..3, 0u32..3).prop_map(|(avg_bits, below, above)| {
        let avg = 1u32 << avg_bits;
        ChunkerConfig {
            min_size: (avg >> below).max(64),
            avg_size: avg,
            max_size: avg << above,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn find_cut_is_independent_of_slicing(
        cfg in config_strategy(),
        data in data_strategy(40_000),
        sizes in prop::collection::vec(1usize..5000, 1..20),
    ) {
        let whole = chunk_lengths(&cfg, &data);
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        prop_assert_eq!(&streamed_lengths(cfg, &bytewise), &whole);
        prop_assert_eq!(&streamed_lengths(cfg, &slices(&data, &sizes)), &whole);
        prop_assert_eq!(whole.iter().map(|&l| l as usize).sum::<usize>(), data.len());
    }

    #[test]
    fn chunk_sizes_within_bounds(cfg in config_strategy(), data in data_strategy(40_000)) {
        let lens = chunk_lengths(&cfg, &data);
        if let Some((last, body)) = lens.split_last() {
            prop_assert!(*last >= 1 && *last <= cfg.max_size);
            for &l in body {
                prop_assert!(l >= cfg.min_size && l <= cfg.max_size, "len {}", l);
            }
        } else {
            prop_assert!(data.is_empty());
        }
    }

    #[test]
    fn file_chunker_matches_one_shot(
        data in data_strategy(30_000),
        sizes in prop::collection::vec(1usize..3000, 1..10),
    ) {
        let cfg = tiny_config();
        let lens = chunk_lengths(&cfg, &data);
        let mut expected = Vec::new();
        let mut off = 0;
        for &l in &lens {
            let l = l as usize;
            expected.push(ChunkRef { hash: Hash::of(&data[off..off + l]), len: l as u32 });
            off += l;
        }
        for parts in [slices(&data, &sizes), data.chunks(1).collect(), vec![&data[..]]] {
            let mut fc = FileChunker::new(cfg).unwrap();
            for p in &parts {
                fc.update(p);
            }
            let file = fc.finish();
            prop_assert_eq!(&file.chunks, &expected);
            prop_assert_eq!(file.size, data.len() as u64);
            prop_assert_eq!(file.sha256, sha256(&data));
        }
    }

    #[test]
    fn proofs_verify_and_reject_tampering(n in 1usize..150, pick in any::<usize>(), bit in 0usize..256) {
        let leaves: Vec<Hash> = (0..n as u64).map(|i| Hash::of(&i.to_le_bytes())).collect();
        let root = merkle_root(&leaves);
        for (i, leaf) in leaves.iter().enumerate() {
            prop_assert!(merkle_proof(&leaves, i).unwrap().verify(leaf, &root));
        }
        let i = pick % n;
        let proof = merkle_proof(&leaves, i).unwrap();
        let mut flipped = leaves[i];
        flipped.0[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!proof.verify(&flipped, &root));
        let wrong_index = (i + 1 + pick % 7) as u64 % (n as u64 + 2);
        if wrong_index != i as u64 {
            let p = merkle::Proof { index: wrong_index, ..proof.clone() };
            prop_assert!(!p.verify(&leaves[i], &root));
        }
        // A leaf count that does not fit the index or the sibling count is
        // rejected. (One that gives the same path shape cannot be told apart:
        // the root does not commit to the count; callers compare it with the
        // manifest's chunk count.)
        for leaf_count in [0, i as u64, 2 * n as u64 + 1] {
            let p = merkle::Proof { leaf_count, ..proof.clone() };
            let same_shape = p.leaf_count > p.index
                && merkle_proof(&vec![Hash([0; 32]); leaf_count as usize], i)
                    .is_some_and(|q| q.siblings.len() == proof.siblings.len());
            prop_assert!(same_shape || !p.verify(&leaves[i], &root));
        }
        if !proof.siblings.is_empty() {
            let mut p = proof.clone();
            p.siblings[0].0[0] ^= 1;
            prop_assert!(!p.verify(&leaves[i], &root));
            let mut p = proof.clone();
            p.siblings.pop();
            prop_assert!(!p.verify(&leaves[i], &root));
        }
        let mut p = proof.clone();
        p.siblings.push(root);
        prop_assert!(!p.verify(&leaves[i], &root));
    }
}

fn manifest_strategy() -> impl Strategy<Value = Manifest> {
    let file = (
        0u32..0o1000,
        prop::collection::vec((any::<[u8; 4]>(), 1u32..=4096), 0..6),
        any::<[u8; 32]>(),
    );
    (
        "[a-z0-9][a-z0-9._-]{0,20}",
        "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
        any::<u64>(),
        prop::collection::btree_map("[a-z]{1,3}(/[a-z0-9._]{1,4}){0,2}", file, 0..12),
    )
        .prop_filter_map(
            "reserved name",
            |(channel, version, created_unix, files)| {
                if channel == "current" || version == "current" {
                    return None;
                }
                let files: Vec<FileEntry> = files
                    .into_iter()
                    .map(|(path, (mode, chunks, sha))| {
                        let chunks: Vec<ChunkRef> = chunks
                            .into_iter()
                            .map(|(h, len)| ChunkRef {
                                hash: Hash::of(&h),
                                len,
                            })
                            .collect();
                        FileEntry {
                            path: format!("f/{path}x"),
                            mode,
                            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
                            sha256: sha,
                            chunks,
                        }
                    })
                    .collect();
                let m = Manifest {
                    channel,
                    version,
                    created_unix,
                    chunker: tiny_config(),
                    files,
                    erasure: None,
                };
                // Path generation can produce "a" and "a/b"; keep only valid ones.
                m.validate().is_ok().then_some(m)
            },
        )
}

fn signing_key(seed: u64) -> SigningKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn manifest_roundtrip(m in manifest_strategy()) {
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        prop_assert_eq!(back.root(), m.root());
        prop_assert_eq!(&back, &m);
    }

    #[test]
    fn manifest_decode_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::decode(&bytes);
        let mut prefixed = b"SNMF\x01\x00".to_vec();
        prefixed.extend_from_slice(&bytes);
        if let Ok(m) = Manifest::decode(&prefixed) {
            prop_assert!(m.validate().is_ok());
        }
        let _ = SignedRoot::decode(&bytes);
    }

    #[test]
    fn mutated_manifest_never_panics(
        m in manifest_strategy(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut bytes = m.encode();
        for (pos, val, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let pos = pos % bytes.len();
            match kind {
                0 => bytes[pos] ^= val | 1,
                1 => bytes.insert(pos, val),
                2 => { bytes.remove(pos); }
                _ => bytes.truncate(pos),
            }
        }
        if let Ok(d) = Manifest::decode(&bytes) {
            prop_assert!(d.validate().is_ok());
            prop_assert_eq!(Manifest::decode(&d.encode()), Ok(d));
        }
    }

    #[test]
    fn signed_root_detects_any_change(
        seed in any::<u64>(),
        root in any::<[u8; 32]>(),
        created in any::<u64>(),
        field in 0usize..6,
        pos in any::<usize>(),
        bit in 0u8..8,
    ) {
        let key = signing_key(seed);
        let s = SignedRoot::sign(&key, "chan", "v1", Hash(root), created);
        prop_assert_eq!(s.verify(), Ok(()));
        prop_assert_eq!(SignedRoot::decode(&s.encode()), Ok(s.clone()));
        let mut t = s.clone();
        match field {
            0 => t.channel.push('x'),
            1 => t.version = format!("{}2", t.version),
            2 => t.root.0[pos % 32] ^= 1 << bit,
            3 => t.created_unix ^= 1 << (pos % 64),
            4 => t.publisher[pos % 32] ^= 1 << bit,
            _ => t.signature[pos % 64] ^= 1 << bit,
        }
        prop_assert!(t.verify().is_err());
        let mut enc = s.encode();
        let i = pos % enc.len();
        enc[i] ^= 1 << bit;
        if let Ok(d) = SignedRoot::decode(&enc) {
            prop_assert!(d.verify().is_err());
        }
    }

    #[test]
    fn frame_decode_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), max in any::<u32>()) {
        if let Ok(Some((payload, used))) = decode_frame(&bytes, max) {
            prop_assert_eq!(used, payload.len() + 8);
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn frame_detects_flipped_bit(payload in prop::collection::vec(any::<u8>(), 0..300), pos in any::<usize>(), bit in 0u8..8) {
        let frame = encode_frame(&payload);
        prop_assert_eq!(decode_frame(&frame, 1 << 20), Ok(Some((&payload[..], frame.len()))));
        let mut bad = frame.clone();
        let i = pos % bad.len();
        bad[i] ^= 1 << bit;
        let result = decode_frame(&bad, 1 << 20);
        if i >= 4 {
            // CRC32C detects every single-bit error in the CRC or the payload.
            prop_assert!(matches!(result, Err(merkle::FrameError::BadCrc { .. })), "{:?}", result);
        } else {
            // A flipped length bit: too long, incomplete, or a CRC mismatch.
            prop_assert!(!matches!(result, Ok(Some(_))), "{:?}", result);
        }
    }
}
