//! Content-defined behaviour: size statistics and locality of edits.

mod common;

use std::collections::HashSet;

use common::{random_bytes, small_config};
use merkle::{ChunkerConfig, FileChunker, Hash, chunk_lengths};

fn chunk_hashes(cfg: &ChunkerConfig, data: &[u8]) -> Vec<Hash> {
    let mut fc = FileChunker::new(*cfg).unwrap();
    fc.update(data);
    fc.finish().chunks.iter().map(|c| c.hash).collect()
}

fn check_stats(cfg: &ChunkerConfig, data: &[u8]) -> f64 {
    let lens = chunk_lengths(cfg, data);
    let (last, body) = lens.split_last().unwrap();
    assert!(*last >= 1 && *last <= cfg.max_size);
    for &l in body {
        assert!(l > cfg.min_size && l <= cfg.max_size, "chunk of {l} bytes");
    }
    let mean = data.len() as f64 / lens.len() as f64;
    let ratio = mean / f64::from(cfg.avg_size);
    assert!(
        (0.8..=1.5).contains(&ratio),
        "mean chunk {mean} vs avg {}",
        cfg.avg_size
    );
    ratio
}

#[test]
fn mean_chunk_size_lands_near_avg() {
    check_stats(&small_config(), &random_bytes(11, 8 << 20));
    check_stats(&ChunkerConfig::default(), &random_bytes(12, 32 << 20));
}

fn shared(a: &[Hash], b: &[Hash]) -> usize {
    let set: HashSet<&Hash> = a.iter().collect();
    b.iter().filter(|h| set.contains(h)).count()
}

#[test]
fn insert_in_the_middle_changes_only_nearby_chunks() {
    let data = random_bytes(7, 4 << 20);
    for cfg in [small_config(), ChunkerConfig::default()] {
        let before = chunk_hashes(&cfg, &data);
        for insert_len in [1usize, 100, 10_000] {
            let mut edited = data[..2 << 20].to_vec();
            edited.extend(random_bytes(99, insert_len));
            edited.extend_from_slice(&data[2 << 20..]);
            let after = chunk_hashes(&cfg, &edited);
            let common = shared(&before, &after);
            // The chunk holding the insert changes, and the next one or two
            // until the cut points resynchronise; everything else is shared.
            assert!(
                common + 3 >= before.len(),
                "insert {insert_len}: {common} of {} shared",
                before.len()
            );
            assert!(common >= 1);
        }
        // Deleting bytes is just as local.
        let mut edited = data.clone();
        edited.drain(1_000_000..1_000_500);
        let after = chunk_hashes(&cfg, &edited);
        assert!(shared(&before, &after) + 3 >= before.len());
    }
}

/// With `boundary()` at tensor edges, rewriting one tensor changes only the
/// chunks inside it; without, chunks straddling its edges change too.
#[test]
fn tensor_boundaries_confine_a_rewrite() {
    let cfg = ChunkerConfig {
        min_size: 4096,
        avg_size: 16384,
        max_size: 65536,
    };
    let tensor = 300_000usize;
    let mut tensors: Vec<Vec<u8>> = (0..8u64)
        .map(|t| common::random_bytes(100 + t, tensor))
        .collect();
    let chunk = |tensors: &[Vec<u8>], hints: bool| {
        let mut fc = FileChunker::new(cfg).unwrap();
        for t in tensors {
            if hints {
                fc.boundary();
            }
            fc.update(t);
        }
        fc.finish().chunks
    };
    let before_h = chunk(&tensors, true);
    let before_p = chunk(&tensors, false);
    tensors[3] = common::random_bytes(999, tensor);
    let after_h = chunk(&tensors, true);
    let after_p = chunk(&tensors, false);
    let new_bytes = |old: &[merkle::ChunkRef], new: &[merkle::ChunkRef]| -> u64 {
        let known: std::collections::HashSet<_> = old.iter().map(|c| c.hash).collect();
        new.iter()
            .filter(|c| !known.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum()
    };
    let with = new_bytes(&before_h, &after_h);
    let without = new_bytes(&before_p, &after_p);
    assert_eq!(
        with, tensor as u64,
        "with boundaries only the tensor itself is new"
    );
    assert!(
        without > tensor as u64,
        "without boundaries edges straddle: {without}"
    );
    // Every chunk still respects max_size, and the file is covered exactly.
    assert!(after_h.iter().all(|c| c.len <= cfg.max_size));
    assert_eq!(
        after_h.iter().map(|c| u64::from(c.len)).sum::<u64>(),
        8 * tensor as u64
    );
}
