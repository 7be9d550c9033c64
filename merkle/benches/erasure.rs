//! Reed-Solomon throughput: reed-solomon-simd (what `merkle::erasure` uses)
//! against reed-solomon-erasure (pure Rust, GF(2^8)), encode and rebuild.
//!
//! Prints one table row per (crate, k, m, shard size). Throughput counts the
//! k data shards of a stripe (the bytes a publisher protects, or a node
//! restores). "rebuild" loses the first m data shards and restores them from
//! the remaining data shards plus all m parity shards (the worst case: every
//! parity shard is needed). Each figure is the best of `ROUNDS` timed runs.
//!
//! Run with `cargo bench -p merkle --bench erasure`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use reed_solomon_erasure::galois_8::ReedSolomon;

const ROUNDS: usize = 5;

fn shards(k: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    (0..k)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 56) as u8
                })
                .collect()
        })
        .collect()
}

/// Best of ROUNDS runs of `f`, as GB/s over `bytes`.
fn best(bytes: usize, mut f: impl FnMut()) -> f64 {
    let mut min = Duration::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f();
        min = min.min(t.elapsed());
    }
    bytes as f64 / min.as_secs_f64() / 1e9
}

fn simd(k: usize, m: usize, data: &[Vec<u8>]) -> (f64, f64) {
    let bytes = k * data[0].len();
    let enc = best(bytes, || {
        black_box(reed_solomon_simd::encode(k, m, data).unwrap());
    });
    let parity = reed_solomon_simd::encode(k, m, data).unwrap();
    let rebuild = best(bytes, || {
        let kept = data.iter().enumerate().skip(m);
        let rec = parity.iter().enumerate();
        let out = reed_solomon_simd::decode(k, m, kept, rec).unwrap();
        assert_eq!(out.len(), m);
        black_box(out);
    });
    (enc, rebuild)
}

fn rse(k: usize, m: usize, data: &[Vec<u8>]) -> (f64, f64) {
    let rs = ReedSolomon::new(k, m).unwrap();
    let len = data[0].len();
    let bytes = k * len;
    let mut all: Vec<Vec<u8>> = data.to_vec();
    all.extend((0..m).map(|_| vec![0u8; len]));
    let enc = best(bytes, || rs.encode(black_box(&mut all)).unwrap());
    let rebuild = best(bytes, || {
        let mut opt: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
        for s in opt.iter_mut().take(m) {
            *s = None;
        }
        rs.reconstruct_data(&mut opt).unwrap();
        black_box(opt);
    });
    (enc, rebuild)
}

fn main() {
    println!("| crate | k | m | shard | encode GB/s | rebuild m lost GB/s |");
    println!("|---|---|---|---|---|---|");
    for &len in &[256 << 10, 1 << 20] {
        for &(k, m) in &[(8, 2), (10, 4), (16, 4)] {
            let data = shards(k, len, 7);
            let (e, r) = simd(k, m, &data);
            let kib = len >> 10;
            println!("| reed-solomon-simd 3.1 | {k} | {m} | {kib} KiB | {e:.2} | {r:.2} |");
            let (e, r) = rse(k, m, &data);
            println!("| reed-solomon-erasure 6.0 | {k} | {m} | {kib} KiB | {e:.2} | {r:.2} |");
        }
    }
}
