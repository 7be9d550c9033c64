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
    let expected =
        std::fs::read_to_string(&path).expect("golden file missing; run with MERKLE_BLESS=1");
    for (a, e) in actual.lines().zip(expected.lines()) {
        assert_eq!(a, e, "cut points or roots changed");
    }
    assert_eq!(actual.lines().count(), expected.lines().count());
}

/// The worked example of `docs/manifest.md` §4: byte layout, file root,
/// version root and signed message.
#[test]
fn spec_example_vector() {
    use merkle::ed25519_dalek::SigningKey;
    use merkle::{ChunkRef, FileEntry, Manifest, SignedRoot, sha256};

    let data = b"hello";
    let m = Manifest {
        channel: "llama".into(),
        version: "v1".into(),
        created_unix: 1_700_000_000,
        chunker: ChunkerConfig::default(),
        files: vec![FileEntry {
            path: "a.bin".into(),
            mode: 0o644,
            size: 5,
            sha256: sha256(data),
            chunks: vec![ChunkRef {
                hash: Hash::of(data),
                len: 5,
            }],
        }],
    };
    let expected = concat!(
        "534e4d460100",
        "056c6c616d61",
        "027631",
        "80e2cfaa06",
        "808004808010808040",
        "01",
        "05612e62696e",
        "a403",
        "05",
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "01",
        "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f",
        "05",
    );
    assert_eq!(hex::encode(m.encode()), expected);
    assert_eq!(
        m.files[0].root().to_hex(),
        "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
    );
    assert_eq!(
        m.root().to_hex(),
        "1173cc1f9edb75dcac5de1ed81bba0ac4ed7db1f17a76d66108f7a0e756467e0"
    );
    let s = SignedRoot::sign(
        &SigningKey::from_bytes(&[1; 32]),
        "llama",
        "v1",
        m.root(),
        1_700_000_000,
    );
    let mut msg = b"syncnode-root-v1\0\x05llama\x02v1".to_vec();
    msg.extend_from_slice(&m.root().0);
    msg.extend_from_slice(&[0x80, 0xe2, 0xcf, 0xaa, 0x06]);
    assert_eq!(s.message(), msg);
    assert_eq!(s.verify_manifest(&m), Ok(()));
    let mut other = m.clone();
    other.files[0].mode = 0o755;
    assert!(s.verify_manifest(&other).is_err());
    // Non-minimal varints decode (see the spec); the root is what counts.
    let mut loose = m.encode();
    assert_eq!(loose[12], 2);
    loose[12] = 0x82;
    loose.insert(13, 0);
    assert_eq!(Manifest::decode(&loose).unwrap().root(), m.root());
}
