//! The versioned manifest: every file of a version with its chunk list, and
//! the version root computed over them. Byte layout in `docs/manifest.md`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::chunker::{ChunkerConfig, ChunkerConfigError};
use crate::erasure::{Erasure, ErasureError};
use crate::file::ChunkRef;
use crate::hash::Hash;
use crate::tree::{FILE_LEAF_TAG, VERSION_TAG, merkle_root};

/// First four bytes of an encoded manifest.
pub const MAGIC: [u8; 4] = *b"SNMF";
/// Format version written after [`MAGIC`] as `u16` little-endian.
pub const FORMAT_VERSION: u16 = 1;
/// Format version of a manifest with an erasure section (parity pieces):
/// the version 1 body followed by `postcard(Erasure)`.
pub const FORMAT_VERSION_ERASURE: u16 = 2;
/// Most files in one manifest.
pub const MAX_FILES: usize = 1_000_000;
/// Most chunks, over all files, in one manifest.
pub const MAX_CHUNKS: u64 = 50_000_000;
/// Longest file path in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest component (file or folder name) of a path in bytes, the Linux
/// `NAME_MAX`: a longer name could never be materialized.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest channel or version name in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// One file of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated path (see [`validate_path`]).
    pub path: String,
    /// Unix permission bits. Consumers apply `mode & 0o777` only.
    pub mode: u32,
    /// Size in bytes; equals the sum of the chunk lengths.
    pub size: u64,
    /// SHA-256 of the whole file, checked after materialization.
    pub sha256: [u8; 32],
    /// The chunks in file order; empty for an empty file.
    pub chunks: Vec<ChunkRef>,
}

impl FileEntry {
    /// File root: [`merkle_root`] of the chunk hashes.
    pub fn root(&self) -> Hash {
        let leaves: Vec<Hash> = self.chunks.iter().map(|c| c.hash).collect();
        merkle_root(&leaves)
    }

    /// This file's leaf in the version tree:
    /// `BLAKE3(0x02 || u32le(path.len) || path || u32le(mode) || u64le(size) || sha256 || file_root)`.
    pub fn leaf(&self) -> Hash {
        self.leaf_with_root(&self.root())
    }

    fn leaf_with_root(&self, file_root: &Hash) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&[FILE_LEAF_TAG]);
        // Paths are at most MAX_PATH_LEN in a valid manifest; saturate otherwise.
        let path_len = u32::try_from(self.path.len()).unwrap_or(u32::MAX);
        h.update(&path_len.to_le_bytes());
        h.update(self.path.as_bytes());
        h.update(&self.mode.to_le_bytes());
        h.update(&self.size.to_le_bytes());
        // The SHA-256 is covered too, so a forged manifest copy cannot make a
        // node fail (and retry forever) at materialization.
        h.update(&self.sha256);
        h.update(&file_root.0);
        h.finalize().into()
    }
}

/// The file list of one version of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Channel name (see [`validate_name`]).
    pub channel: String,
    /// Version name (see [`validate_name`]).
    pub version: String,
    /// Creation time chosen by the publisher, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The chunker config the files were chunked with.
    pub chunker: ChunkerConfig,
    /// Files sorted strictly by path (byte order).
    pub files: Vec<FileEntry>,
    /// Reed-Solomon parity over stripes of the unique chunks, if the
    /// publisher added any. Not part of the version 1 body: encoded after it
    /// in format version 2 ([`FORMAT_VERSION_ERASURE`]).
    #[serde(skip)]
    pub erasure: Option<Erasure>,
}

/// A manifest that cannot be decoded or breaks a validation rule. Variants
/// carry the offending path, name or field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a syncnode manifest (bad magic)")]
    BadMagic,
    /// The format version is not [`FORMAT_VERSION`].
    #[error("unsupported manifest format version {0}")]
    UnsupportedFormatVersion(u16),
    /// The postcard body is malformed or truncated.
    #[error("manifest decode failed: {0}")]
    Decode(String),
    /// Bytes left after the postcard body.
    #[error("{0} trailing bytes after the manifest body")]
    TrailingBytes(usize),
    /// A count in the manifest claims more entries than the bytes left could hold.
    #[error(
        "manifest claims {count} {what}, which needs at least {need} bytes, but only {have} remain"
    )]
    CountExceedsInput {
        /// What is counted (`files`, or the chunks of a named file).
        what: String,
        /// The claimed count.
        count: u64,
        /// The fewest bytes that many entries take.
        need: u64,
        /// The bytes left in the manifest.
        have: usize,
    },
    /// A channel or version name breaks the naming rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `"channel"` or `"version"`.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The chunker config is invalid.
    #[error("invalid chunker config: {0}")]
    Chunker(#[from] ChunkerConfigError),
    /// More than [`MAX_FILES`] files.
    #[error("manifest has {count} files, more than {MAX_FILES}")]
    TooManyFiles {
        /// Number of files.
        count: usize,
    },
    /// More than [`MAX_CHUNKS`] chunks over all files.
    #[error("manifest has {count} chunks, more than {MAX_CHUNKS}")]
    TooManyChunks {
        /// Number of chunks.
        count: u64,
    },
    /// A path that is not a safe relative path.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The offending path.
        path: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Files are not in strictly increasing path order.
    #[error("files not sorted by path: {path:?} comes after {prev:?}")]
    NotSorted {
        /// The preceding path.
        prev: String,
        /// The path out of order.
        path: String,
    },
    /// Two files have the same path.
    #[error("duplicate path {path:?}")]
    DuplicatePath {
        /// The duplicated path.
        path: String,
    },
    /// A file path is also a directory of another file.
    #[error("path {path:?} is a file and also a directory of {child:?}")]
    FileIsDirectory {
        /// The file that is also a directory.
        path: String,
        /// A file under it.
        child: String,
    },
    /// The erasure section does not fit the chunks.
    #[error("invalid erasure section: {0}")]
    Erasure(#[from] ErasureError),
    /// A file's size is not the sum of its chunk lengths.
    #[error("file {path:?}: size {size} but chunks sum to {chunk_sum}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Its declared size.
        size: u64,
        /// Sum of its chunk lengths.
        chunk_sum: u64,
    },
    /// A chunk length of 0 or above the chunker's `max_size`.
    #[error("file {path:?}: chunk {index} has length {len}, allowed 1..={max}")]
    BadChunkLen {
        /// The file.
        path: String,
        /// Position of the chunk in the file.
        index: usize,
        /// Its length.
        len: u32,
        /// The chunker's `max_size`.
        max: u32,
    },
}

/// Checks a channel or version name: 1..=128 bytes of `[A-Za-z0-9._-]`, not
/// starting with `.`, and not `current` (reserved for the current-version link).
/// `kind` (`"channel"` or `"version"`) goes into the error.
pub fn validate_name(kind: &'static str, s: &str) -> Result<(), ManifestError> {
    let reason = if s.is_empty() {
        Some("empty")
    } else if s.len() > MAX_NAME_LEN {
        Some("longer than 128 bytes")
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("characters other than [A-Za-z0-9._-]")
    } else if s.starts_with('.') {
        Some("starts with '.'")
    } else if s == "current" {
        Some("\"current\" is reserved")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ManifestError::InvalidName {
            kind,
            name: s.to_owned(),
            reason,
        }),
    }
}

/// Checks that `path` is a safe relative path: non-empty, at most 4096 bytes,
/// `/`-separated, no leading `/`, no backslash, no NUL, and no empty, `.` or
/// `..` component (so no `a//b` and no trailing `/`), and no component
/// longer than [`MAX_COMPONENT_LEN`] (255) bytes.
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    let reason = if path.is_empty() {
        Some("empty")
    } else if path.len() > MAX_PATH_LEN {
        Some("longer than 4096 bytes")
    } else if path.starts_with('/') {
        Some("absolute (leading '/')")
    } else if path.contains('\\') {
        Some("contains a backslash")
    } else if path.contains('\0') {
        Some("contains NUL")
    } else {
        path.split('/').find_map(|c| match c {
            "" => Some("empty component"),
            "." => Some("'.' component"),
            ".." => Some("'..' component"),
            c if c.len() > MAX_COMPONENT_LEN => Some("a component longer than 255 bytes"),
            _ => None,
        })
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ManifestError::UnsafePath {
            path: path.to_owned(),
            reason,
        }),
    }
}

impl Manifest {
    /// Version root: `BLAKE3(0x03 || u32le(channel.len) || channel ||
    /// u32le(version.len) || version || files_root)`, where `files_root` is the
    /// [`merkle_root`] over one leaf per file ([`FileEntry::leaf`]:
    /// `BLAKE3(0x02 || u32le(path.len) || path || u32le(mode) || u64le(size) ||
    /// sha256 || file_root)`), files sorted by path (no files: `BLAKE3(0x00)`).
    ///
    /// Binding the names makes the root a unique id of a published version:
    /// the same content published as another version or in another channel
    /// gets another root (its chunks are still shared, being addressed by hash).
    pub fn root(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&[VERSION_TAG]);
        for name in [&self.channel, &self.version] {
            let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
            h.update(&len.to_le_bytes());
            h.update(name.as_bytes());
        }
        h.update(&self.files_root().0);
        if let Some(erasure) = &self.erasure {
            h.update(&erasure.leaf().0);
        }
        h.finalize().into()
    }

    /// The Merkle root over the files alone (see [`Manifest::root`]).
    pub fn files_root(&self) -> Hash {
        let mut files: Vec<&FileEntry> = self.files.iter().collect();
        if !files.is_sorted_by(|a, b| a.path <= b.path) {
            files.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let leaves: Vec<Hash> = files.iter().map(|f| f.leaf()).collect();
        merkle_root(&leaves)
    }

    /// `MAGIC || u16le(FORMAT_VERSION) || postcard(self)`, or with an
    /// erasure section `MAGIC || u16le(FORMAT_VERSION_ERASURE) ||
    /// postcard(self) || postcard(erasure)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.files.len() * 64);
        out.extend_from_slice(&MAGIC);
        let version = match self.erasure {
            None => FORMAT_VERSION,
            Some(_) => FORMAT_VERSION_ERASURE,
        };
        out.extend_from_slice(&version.to_le_bytes());
        let out = postcard::to_extend(self, out).expect("postcard encoding into a Vec cannot fail");
        match &self.erasure {
            None => out,
            Some(e) => {
                postcard::to_extend(e, out).expect("postcard encoding into a Vec cannot fail")
            }
        }
    }

    /// Decodes and [validates](Manifest::validate) an encoded manifest. Checks
    /// the magic, the format version, then (without allocating) that the file
    /// count is at most [`MAX_FILES`], the chunk count at most [`MAX_CHUNKS`]
    /// and that no count claims more entries than the remaining bytes could
    /// hold, then that the body is exactly one postcard `Manifest`, then every
    /// validation rule. Never panics on any input; memory use is bounded by a
    /// small multiple of `bytes.len()`.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.get(..4) != Some(&MAGIC[..]) {
            return Err(ManifestError::BadMagic);
        }
        let Some(&[lo, hi]) = bytes.get(4..6) else {
            return Err(ManifestError::Decode("truncated format version".into()));
        };
        let version = u16::from_le_bytes([lo, hi]);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_ERASURE {
            return Err(ManifestError::UnsupportedFormatVersion(version));
        }
        crate::scan::prescan(&bytes[6..])?;
        let decode_err = |e: postcard::Error| match e {
            postcard::Error::DeserializeUnexpectedEnd => {
                ManifestError::Decode("truncated manifest body".into())
            }
            e => ManifestError::Decode(e.to_string()),
        };
        let (mut manifest, mut rest): (Manifest, &[u8]) =
            postcard::take_from_bytes(&bytes[6..]).map_err(decode_err)?;
        if version == FORMAT_VERSION_ERASURE {
            let (erasure, tail): (Erasure, &[u8]) =
                postcard::take_from_bytes(rest).map_err(decode_err)?;
            manifest.erasure = Some(erasure);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes(rest.len()));
        }
        manifest.validate()?;
        manifest.validate_erasure()?;
        Ok(manifest)
    }

    /// Checks the erasure section, if any, against the unique chunks (stripe
    /// shape in range, one parity piece per stripe and parity slot, each as
    /// long as its stripe's shard). [`Manifest::decode`] runs it after
    /// [`Manifest::validate`].
    pub fn validate_erasure(&self) -> Result<(), ManifestError> {
        match &self.erasure {
            None => Ok(()),
            Some(e) => Ok(e.validate(&self.unique_chunks())?),
        }
    }

    /// Checks every rule: channel and version names ([`validate_name`]), the
    /// chunker config, at most [`MAX_FILES`] files and [`MAX_CHUNKS`] chunks,
    /// every path safe ([`validate_path`]), files sorted strictly by path (no
    /// duplicates), no file path that is also a directory of another file,
    /// every chunk length in `1..=chunker.max_size`, and each file's size equal
    /// to the sum of its chunk lengths.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name("channel", &self.channel)?;
        validate_name("version", &self.version)?;
        self.chunker.validate()?;
        if self.files.len() > MAX_FILES {
            return Err(ManifestError::TooManyFiles {
                count: self.files.len(),
            });
        }
        let chunk_count: u64 = self.files.iter().map(|f| f.chunks.len() as u64).sum();
        if chunk_count > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks { count: chunk_count });
        }
        let mut prev: Option<&str> = None;
        for file in &self.files {
            validate_path(&file.path)?;
            if let Some(prev) = prev {
                if prev == file.path {
                    return Err(ManifestError::DuplicatePath {
                        path: file.path.clone(),
                    });
                }
                if prev > file.path.as_str() {
                    return Err(ManifestError::NotSorted {
                        prev: prev.to_owned(),
                        path: file.path.clone(),
                    });
                }
            }
            prev = Some(&file.path);
            self.validate_chunks(file)?;
        }
        check_no_file_is_directory(&self.files)
    }

    fn validate_chunks(&self, file: &FileEntry) -> Result<(), ManifestError> {
        let max = self.chunker.max_size;
        let mut sum = 0u64;
        for (index, c) in file.chunks.iter().enumerate() {
            if c.len == 0 || c.len > max {
                return Err(ManifestError::BadChunkLen {
                    path: file.path.clone(),
                    index,
                    len: c.len,
                    max,
                });
            }
            // At most MAX_CHUNKS * 16 MiB: no overflow.
            sum += u64::from(c.len);
        }
        if sum != file.size {
            return Err(ManifestError::SizeMismatch {
                path: file.path.clone(),
                size: file.size,
                chunk_sum: sum,
            });
        }
        Ok(())
    }

    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |acc, f| acc.saturating_add(f.size))
    }

    /// Number of chunks over all files, duplicates included.
    pub fn chunk_count(&self) -> u64 {
        self.files.iter().map(|f| f.chunks.len() as u64).sum()
    }

    /// Every piece a node fetches, holds and serves: the unique chunks
    /// ([`Manifest::unique_chunks`]) followed by the parity pieces of the
    /// erasure section, if any. `Have` indices and fetch indices refer to
    /// this list.
    pub fn pieces(&self) -> Vec<ChunkRef> {
        let mut pieces = self.unique_chunks();
        if let Some(e) = &self.erasure {
            pieces.extend_from_slice(&e.parity);
        }
        pieces
    }

    /// Distinct chunks `(hash, len)` in first-seen order (files in list order,
    /// chunks in file order).
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter(|c| seen.insert(**c))
            .copied()
            .collect()
    }
}

/// Rejects a file path that is also a directory prefix of another file path
/// (`a` and `a/b`). Paths must already be valid.
fn check_no_file_is_directory(files: &[FileEntry]) -> Result<(), ManifestError> {
    let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for file in files {
        let p = file.path.as_str();
        for (i, _) in p.match_indices('/') {
            if paths.contains(&p[..i]) {
                return Err(ManifestError::FileIsDirectory {
                    path: p[..i].to_owned(),
                    child: p.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, data: &[u8]) -> FileEntry {
        let chunks = if data.is_empty() {
            vec![]
        } else {
            vec![ChunkRef {
                hash: Hash::of(data),
                len: data.len() as u32,
            }]
        };
        FileEntry {
            path: path.into(),
            mode: 0o644,
            size: data.len() as u64,
            sha256: crate::sha256(data),
            chunks,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            channel: "llama".into(),
            version: "v1".into(),
            created_unix: 1_700_000_000,
            chunker: ChunkerConfig::default(),
            files,
            erasure: None,
        }
    }

    #[test]
    fn unsafe_paths_are_rejected_naming_the_path() {
        for p in [
            "../x",
            "/etc/passwd",
            "a/./b",
            "a//b",
            "a\\b",
            "",
            "a/",
            "a/..",
            "x\0y",
            ".",
        ] {
            match validate_path(p) {
                Err(ManifestError::UnsafePath { path, .. }) => assert_eq!(path, p),
                other => panic!("{p:?}: {other:?}"),
            }
            let err = manifest(vec![entry(p, b"x")]).validate().unwrap_err();
            assert!(matches!(&err, ManifestError::UnsafePath { path, .. } if path == p));
            assert!(err.to_string().contains(&format!("{p:?}")), "{err}");
        }
        // 17 components of 240 bytes and 16 slashes: exactly 4096 bytes.
        let max = vec!["a".repeat(240); 17].join("/");
        assert_eq!(max.len(), 4096);
        assert!(validate_path(&max).is_ok());
        assert!(validate_path(&format!("{max}b")).is_err());
        assert!(validate_path(&"a".repeat(255)).is_ok());
        assert!(validate_path(&"a".repeat(256)).is_err());
        for p in [
            "a",
            "a/b",
            "model-00001.safetensors",
            ".hidden/x",
            "a..b",
            "日本/語",
        ] {
            assert_eq!(validate_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn names() {
        for n in ["llama-3.1_70B", "v1", "a", &"x".repeat(128)] {
            assert_eq!(validate_name("channel", n), Ok(()), "{n}");
        }
        for n in [
            "",
            ".hidden",
            "current",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(129),
        ] {
            let err = validate_name("version", n).unwrap_err();
            assert!(
                matches!(&err, ManifestError::InvalidName { kind: "version", name, .. } if name == n)
            );
        }
    }

    #[test]
    fn ordering_duplicates_and_directories() {
        let ok = manifest(vec![
            entry("a.txt", b"1"),
            entry("a/b", b"2"),
            entry("b", b""),
        ]);
        assert_eq!(ok.validate(), Ok(()));
        let unsorted = manifest(vec![entry("b", b"1"), entry("a", b"2")]);
        assert!(matches!(
            unsorted.validate(),
            Err(ManifestError::NotSorted { .. })
        ));
        let dup = manifest(vec![entry("a", b"1"), entry("a", b"2")]);
        assert!(matches!(
            dup.validate(),
            Err(ManifestError::DuplicatePath { .. })
        ));
        // "a.txt" sorts between "a" and "a/b": the check must not rely on adjacency.
        let dir = manifest(vec![
            entry("a", b"1"),
            entry("a.txt", b"1"),
            entry("a/b/c", b"2"),
        ]);
        assert_eq!(
            dir.validate(),
            Err(ManifestError::FileIsDirectory {
                path: "a".into(),
                child: "a/b/c".into()
            })
        );
    }

    #[test]
    fn sizes_and_chunk_lengths() {
        let mut m = manifest(vec![entry("a", b"hello")]);
        m.files[0].size = 4;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::SizeMismatch { .. })
        ));
        m.files[0].size = 0;
        m.files[0].chunks[0].len = 0;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::BadChunkLen { index: 0, .. })
        ));
        m.files[0].chunks[0].len = (1 << 20) + 1;
        m.files[0].size = (1 << 20) + 1;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::BadChunkLen { .. })
        ));
    }

    #[test]
    fn root_construction_by_hand() {
        let m = manifest(vec![entry("a", b"xyz")]);
        let f = &m.files[0];
        let mut buf = vec![2u8];
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(b"a");
        buf.extend_from_slice(&0o644u32.to_le_bytes());
        buf.extend_from_slice(&3u64.to_le_bytes());
        buf.extend_from_slice(&f.sha256);
        buf.extend_from_slice(&Hash::of(b"xyz").0);
        assert_eq!(f.root(), Hash::of(b"xyz"));
        // A forged SHA-256 changes the version root.
        let mut forged = m.clone();
        forged.files[0].sha256[0] ^= 1;
        assert_ne!(forged.root(), m.root());
        assert_eq!(m.files_root(), Hash::of(&buf));
        let mut v = vec![3u8];
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(b"llama");
        v.extend_from_slice(&2u32.to_le_bytes());
        v.extend_from_slice(b"v1");
        v.extend_from_slice(&Hash::of(&buf).0);
        assert_eq!(m.root(), Hash::of(&v));
        assert_eq!(manifest(vec![]).files_root(), Hash::of(&[0]));
        // The same content under another version or channel name has another root.
        let mut renamed = m.clone();
        renamed.version = "v2".into();
        assert_ne!(renamed.root(), m.root());
        renamed.version = "v1".into();
        renamed.channel = "other".into();
        assert_ne!(renamed.root(), m.root());
        // Order of the list does not matter to root().
        let a = manifest(vec![entry("a", b"1"), entry("b", b"2")]);
        let b = manifest(vec![entry("b", b"2"), entry("a", b"1")]);
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn encode_layout_and_decode_errors() {
        let m = manifest(vec![entry("a", b"xyz"), entry("b", b"xyz")]);
        let bytes = m.encode();
        assert_eq!(&bytes[..6], b"SNMF\x01\x00");
        assert_eq!(&bytes[6..12], b"\x05llama");
        assert_eq!(Manifest::decode(&bytes), Ok(m.clone()));
        assert_eq!(m.unique_chunks().len(), 1);
        assert_eq!(m.total_size(), 6);
        assert_eq!(Manifest::decode(b"SNM"), Err(ManifestError::BadMagic));
        assert_eq!(
            Manifest::decode(b"XXXX\x01\x00"),
            Err(ManifestError::BadMagic)
        );
        assert!(matches!(
            Manifest::decode(b"SNMF\x01"),
            Err(ManifestError::Decode(_))
        ));
        assert_eq!(
            Manifest::decode(b"SNMF\x03\x00"),
            Err(ManifestError::UnsupportedFormatVersion(3))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Manifest::decode(&long),
            Err(ManifestError::TrailingBytes(1))
        );
        assert!(matches!(
            Manifest::decode(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Decode(_) | ManifestError::CountExceedsInput { .. })
        ));
    }
}
