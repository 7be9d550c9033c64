//! Golden vectors: chunk boundaries and file roots for seeded inputs. A
//! failure here means cut points or hashing changed, which would make every
//! published version incompatible. Regenerate (only on purpose) with
//! `MERKLE_BLESS=1 cargo test -p merkle --test golden`.

mod common;

use common::{random_bytes, small_config};
use merkle::{ChunkerConfig, FileChunker, Hash, chunk_lengths};

const GOLDEN: &str = "tests/golden/chunker.txt";
const SIZES: [usize; 4] = [0, 1, 100 << 10, 5 << 20];
const SEEDS: [u64; 3] = [1, 2, 3];

/// Lengths written out when there are at most this many, else their BLAKE3.
const INLINE_LENGTHS: usize = 8;

fn line(name: &str, cfg: &ChunkerConfig, seed: u64, size: usize) -> String {
    let data = random_bytes(seed, size);
    let lens = chunk_lengths(cfg, &data);
    let mut fc = FileChunker::new(*cfg).unwrap();
    fc.update(&data);
    let file = fc.finish();
    assert_eq!(file.chunks.iter().map(|c| c.len).collect::<Vec<_>>(), lens);
    let lengths = if lens.len() <= INLINE_LENGTHS {
        let v: Vec<String> = lens.iter().map(u32::to_string).collect();
        format!("[{}]", v.join(","))
    } else {
        let bytes: Vec<u8> = lens.iter().flat_map(|l| l.to_le_bytes()).collect();
        format!("b3:{}", Hash::of(&bytes))
    };
    format!(
        "{name} seed={seed} size={size} chunks={} lengths={lengths} root={} sha256={}",
        lens.len(),
        file.root(),
        hex::encode(file.sha256)
    )
}

fn all_lines() -> String {
    let mut out = String::from(
        "# config seed size chunks lengths (inline, or b3: BLAKE3 of the u32le lengths) root sha256\n",
    );
    let configs = [
        ("default", ChunkerConfig::default()),
        ("small", small_config()),
    ];
    for (name, cfg) in &configs {
        for seed in SEEDS {
            for size in SIZES {
                out.push_str(&line(name, cfg, seed, size));
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn golden_vectors() {
    let actual = all_lines();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("MERKLE_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file missing; run with MERKLE_BLESS=1");
    for (a, e) in actual.lines().zip(expected.lines()) {
        assert_eq!(a, e, "cut points or roots changed");
    }
    assert_eq!(actual.lines().count(), expected.lines().count());
}
