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
        erasure: None,
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

/// Format version 2: the version 1 body of the `hello` manifest above, then
/// the erasure section (1+1: one stripe of one 5-byte chunk, padded to a
/// 6-byte shard). The version root appends the erasure leaf.
#[test]
fn manifest_erasure_golden() {
    use merkle::erasure::{ErasureConfig, encode_all};
    use merkle::{ChunkRef, FileEntry, Manifest, sha256};

    let data = b"hello";
    let chunk = ChunkRef {
        hash: Hash::of(data),
        len: 5,
    };
    let mut m = Manifest {
        channel: "llama".into(),
        version: "v1".into(),
        created_unix: 1_700_000_000,
        chunker: ChunkerConfig::default(),
        files: vec![FileEntry {
            path: "a.bin".into(),
            mode: 0o644,
            size: 5,
            sha256: sha256(data),
            chunks: vec![chunk],
        }],
        erasure: None,
    };
    let v1 = m.encode();
    let v1_root = m.root();
    let cfg = ErasureConfig::new(1, 1).unwrap();
    let e = encode_all::<()>(cfg, &[chunk], |_| Ok(data.to_vec()), |_, _| Ok(()))
        .unwrap()
        .unwrap();
    assert_eq!(e.parity.len(), 1);
    assert_eq!(e.parity[0].len, 6);
    assert_eq!(e.parity[0].hash.to_hex(), PARITY_HELLO_1_1);
    m.erasure = Some(e.clone());
    let mut expected = v1.clone();
    expected[4] = 2;
    expected.extend_from_slice(&[0x01, 0x01, 0x01]);
    expected.extend_from_slice(&e.parity[0].hash.0);
    expected.push(0x06);
    assert_eq!(m.encode(), expected);
    assert_eq!(Manifest::decode(&expected).unwrap(), m);
    // Erasure leaf and version root, recomputed from the spec.
    let leaf = {
        let mut h = blake3::Hasher::new();
        h.update(&[0x04, 1, 0, 1, 0]);
        h.update(&e.parity[0].hash.0); // one-leaf tree: the root is the leaf
        Hash::from(h.finalize())
    };
    assert_eq!(e.leaf(), leaf);
    let mut h = blake3::Hasher::new();
    h.update(b"\x03\x05\x00\x00\x00llama\x02\x00\x00\x00v1");
    h.update(&m.files_root().0);
    h.update(&leaf.0);
    assert_eq!(m.root(), Hash::from(h.finalize()));
    assert_ne!(m.root(), v1_root);
    // A version 1 manifest still decodes, with no erasure section.
    assert_eq!(Manifest::decode(&v1).unwrap().erasure, None);
    // Version 2 without the section, or with a wrong parity length, fails.
    let mut cut = expected.clone();
    cut.truncate(v1.len());
    assert!(Manifest::decode(&cut).is_err());
    let mut bad_len = expected.clone();
    *bad_len.last_mut().unwrap() = 0x08;
    assert!(matches!(
        Manifest::decode(&bad_len),
        Err(merkle::ManifestError::Erasure(_))
    ));
}

/// BLAKE3 of the one parity piece (pins the codec: reed-solomon-simd, GF(2^16)).
const PARITY_HELLO_1_1: &str = "60e9ea2b1ae460e421cdec8bf2be3d0a2c2bc3bb5a33233c906ad75e1524ace1";
