//! Hostile manifests: counts that claim billions of files or chunks, counts
//! larger than the bytes that follow, and every kind of unsafe path. Each is
//! refused with an error naming what is wrong, before anything is allocated
//! for the claimed entries.

use merkle::{ChunkRef, ChunkerConfig, FileEntry, Hash, MAX_CHUNKS, Manifest, ManifestError};

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Magic, format version, channel `llama`, version `v1`, created 1, default chunker.
fn head() -> Vec<u8> {
    let mut b = b"SNMF\x01\x00\x05llama\x02v1\x01".to_vec();
    let c = ChunkerConfig::default();
    for v in [c.min_size, c.avg_size, c.max_size] {
        varint(u64::from(v), &mut b);
    }
    b
}

/// One file entry header (`path`, mode, size 0, zero SHA-256) and its chunk count.
fn file(path: &str, chunks: u64, out: &mut Vec<u8>) {
    varint(path.len() as u64, out);
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&[0xa4, 0x03, 0x00]);
    out.extend_from_slice(&[0u8; 32]);
    varint(chunks, out);
}

#[test]
fn billions_of_files_are_refused_from_the_count() {
    for count in [3_000_000_000u64, u64::MAX, 1_000_001] {
        let mut b = head();
        varint(count, &mut b);
        let e = Manifest::decode(&b).unwrap_err();
        assert!(
            matches!(e, ManifestError::TooManyFiles { count: c } if c as u64 == count || c == usize::MAX),
            "{count}: {e}"
        );
        assert!(e.to_string().contains("1000000"), "{e}");
    }
}

#[test]
fn counts_larger_than_the_input_are_refused() {
    // 1000 files claimed, 100 bytes follow.
    let mut b = head();
    varint(1000, &mut b);
    b.extend_from_slice(&[0u8; 100]);
    let e = Manifest::decode(&b).unwrap_err();
    match &e {
        ManifestError::CountExceedsInput {
            what,
            count,
            need,
            have,
        } => {
            assert_eq!((what.as_str(), *count, *have), ("files", 1000, 100));
            assert_eq!(*need, 36_000);
        }
        other => panic!("{other}"),
    }
    // One file claiming a million chunks with one chunk's bytes after it.
    let mut b = head();
    varint(1, &mut b);
    file("weights.bin", 1_000_000, &mut b);
    b.extend_from_slice(&[1u8; 33]);
    let e = Manifest::decode(&b).unwrap_err();
    assert!(
        matches!(
            &e,
            ManifestError::CountExceedsInput {
                count: 1_000_000,
                have: 33,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("weights.bin"), "{e}");
}

#[test]
fn billions_of_chunks_are_refused_from_the_counts() {
    for count in [3_000_000_000u64, MAX_CHUNKS + 1] {
        let mut b = head();
        varint(1, &mut b);
        file("a", count, &mut b);
        let e = Manifest::decode(&b).unwrap_err();
        assert_eq!(e, ManifestError::TooManyChunks { count });
        assert!(e.to_string().contains("50000000"), "{e}");
    }
}

#[test]
fn truncated_manifests_say_so() {
    let m = Manifest {
        channel: "llama".into(),
        version: "v1".into(),
        created_unix: 1,
        chunker: ChunkerConfig::default(),
        files: vec![FileEntry {
            path: "a".into(),
            mode: 0o644,
            size: 5,
            sha256: merkle::sha256(b"hello"),
            chunks: vec![ChunkRef {
                hash: Hash::of(b"hello"),
                len: 5,
            }],
        }],
        erasure: None,
    };
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes), Ok(m));
    for cut in 6..bytes.len() {
        let e = Manifest::decode(&bytes[..cut]).unwrap_err();
        assert!(
            e.to_string().contains("truncated")
                || matches!(e, ManifestError::CountExceedsInput { .. }),
            "cut at {cut}: {e}"
        );
    }
}

fn manifest_with(paths: &[&str]) -> Manifest {
    Manifest {
        channel: "llama".into(),
        version: "v1".into(),
        created_unix: 1,
        chunker: ChunkerConfig::default(),
        files: paths
            .iter()
            .map(|p| FileEntry {
                path: (*p).to_owned(),
                mode: 0o644,
                size: 0,
                sha256: merkle::sha256(b""),
                chunks: vec![],
            })
            .collect(),
        erasure: None,
    }
}

#[test]
fn every_unsafe_path_is_refused_at_decode() {
    let long_name = "n".repeat(256);
    let long_path = vec!["d"; 2049].join("/");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["../etc/passwd"], "'..'"),
        (vec!["a/../../x"], "'..'"),
        (vec!["/etc/passwd"], "absolute"),
        (vec!["a//b"], "empty component"),
        (vec!["a/"], "empty component"),
        (vec![""], "empty"),
        (vec!["a\0b"], "NUL"),
        (vec!["a\\..\\b"], "backslash"),
        (vec!["./a"], "'.'"),
        (vec![long_name.as_str()], "255"),
        (vec![long_path.as_str()], "4096"),
        (vec!["a", "a"], "duplicate"),
        (vec!["b", "a"], "not sorted"),
        (vec!["a", "a/b"], "directory"),
        (vec!["x/a", "x/a/b/c"], "directory"),
    ];
    for (paths, want) in cases {
        let bytes = manifest_with(&paths).encode();
        let e = Manifest::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains(want), "{paths:?}: {e}");
    }
    let ok = "n".repeat(255);
    assert!(Manifest::decode(&manifest_with(&["a/b", "a/c", "ab", &ok]).encode()).is_ok());
}

#[test]
fn unsafe_names_are_refused_at_decode() {
    for (channel, version) in [
        ("llama", "current"),
        ("llama", "../v1"),
        ("a/b", "v1"),
        ("..", "v1"),
        ("llama", ""),
        ("llama", ".hidden"),
    ] {
        let mut m = manifest_with(&["a"]);
        m.channel = channel.into();
        m.version = version.into();
        let e = Manifest::decode(&m.encode()).unwrap_err();
        assert!(
            matches!(e, ManifestError::InvalidName { .. }),
            "{channel}/{version}: {e}"
        );
    }
}
