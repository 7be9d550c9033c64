//! Chunking throughput over one 64 MiB seeded pseudo-random buffer:
//! raw BLAKE3, chunk boundaries only, FileChunker (chunk + BLAKE3 per chunk +
//! SHA-256) and chunk + BLAKE3 per chunk without SHA-256.
// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use merkle::{ChunkerConfig, FileChunker, Hash, chunk_lengths};

const SIZE: usize = 64 << 20;

/// SplitMix64-filled buffer (same generator as the tests).
fn buffer(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chunking(c: &mut Criterion) {
    let data = buffer(42, SIZE);
    let cfg = ChunkerConfig::default();
    let mut g = c.benchmark_group("chunking_64MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("blake3_raw", |b| b.iter(|| Hash::of(black_box(&data))));
    g.bench_function("chunk_lengths", |b| {
        b.iter(|| chunk_lengths(&cfg, black_box(&data)))
    });
    g.bench_function("file_chunker_blake3_sha256", |b| {
        b.iter(|| {
            let mut f = FileChunker::new(cfg).unwrap();
            f.update(black_box(&data));
            f.finish()
        })
    });
    g.bench_function("chunk_blake3_no_sha256", |b| {
        b.iter(|| {
            let mut f = FileChunker::new(cfg).unwrap();
            f.update_chunks(black_box(&data));
            f.finish().chunks
        })
    });
    g.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
