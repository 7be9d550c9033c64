//! Publishing: turning a source folder into a manifest, and serving its chunks
//! straight from the source files (no copy into the chunk store).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use merkle::{ChunkerConfig, ErasureConfig, FileChunker, FileEntry, Hash, Manifest};

/// Errors while reading a source folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A source file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A name that cannot go into a manifest.
    #[error("cannot publish {path}: {reason}")]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The manifest failed validation.
    #[error("invalid manifest: {0}")]
    Manifest(#[from] merkle::ManifestError),
    /// Parity could not be computed.
    #[error("cannot compute parity: {0}")]
    Erasure(#[from] merkle::ErasureError),
}

/// Where each chunk of a published version lives in the source files.
#[derive(Debug, Default)]
pub struct SourceIndex {
    files: Vec<PathBuf>,
    chunks: HashMap<Hash, (usize, u64, u32)>,
    /// Parity pieces (see [`add_parity`]): offset and length in `parity_file`.
    parity: HashMap<Hash, (u64, u32)>,
    parity_file: Option<PathBuf>,
}

impl SourceIndex {
    /// Whether the chunk is in the source.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.chunks.contains_key(hash) || self.parity.contains_key(hash)
    }

    /// Reads a chunk from its source file and re-verifies it (the file may have
    /// changed since it was scanned). `Ok(None)` if not part of the source.
    pub fn read(&self, hash: &Hash) -> Result<Option<Vec<u8>>, PublishError> {
        let (path, offset, len) = match (self.chunks.get(hash), self.parity.get(hash)) {
            (Some(&(file, offset, len)), _) => (&self.files[file], offset, len),
            (None, Some(&(offset, len))) => match &self.parity_file {
                Some(p) => (p, offset, len),
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let mut buf = vec![0u8; len as usize];
        fs::File::open(path)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .map_err(|source| PublishError::Io {
                path: path.clone(),
                source,
            })?;
        if Hash::of(&buf) != *hash {
            return Err(PublishError::BadPath {
                path: path.clone(),
                reason: format!(
                    "the file changed after it was published (chunk {hash} at offset {offset} \
                     no longer matches); publish a new version instead of editing in place"
                ),
            });
        }
        Ok(Some(buf))
    }
}

/// Computes Reed-Solomon parity for `manifest` (stripes of `config.data`
/// unique chunks, `config.parity` pieces each), writes the pieces to
/// `parity_path` (created or truncated, fsynced) so they are served like
/// chunks, and adds the erasure section to the manifest (which changes its
/// root). Reads one stripe of chunks at a time.
pub fn add_parity(
    manifest: &mut Manifest,
    index: &mut SourceIndex,
    config: ErasureConfig,
    parity_path: &Path,
) -> Result<(), PublishError> {
    use std::io::Write;
    let io = |source| PublishError::Io {
        path: parity_path.to_path_buf(),
        source,
    };
    if let Some(dir) = parity_path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut out = std::io::BufWriter::new(fs::File::create(parity_path).map_err(io)?);
    let unique = manifest.unique_chunks();
    let mut offsets = Vec::new();
    let mut offset = 0u64;
    let read = |i: usize| {
        index
            .read(&unique[i].hash)?
            .ok_or_else(|| PublishError::BadPath {
                path: parity_path.to_path_buf(),
                reason: format!("chunk {} vanished from the source index", unique[i].hash),
            })
    };
    let sink = |_: usize, piece: &[u8]| {
        out.write_all(piece).map_err(io)?;
        offsets.push(offset);
        offset += piece.len() as u64;
        Ok(())
    };
    let erasure = merkle::erasure::encode_all(config, &unique, read, sink)??;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    for (p, off) in erasure.parity.iter().zip(offsets) {
        index.parity.entry(p.hash).or_insert((off, p.len));
    }
    index.parity_file = Some(parity_path.to_path_buf());
    manifest.erasure = Some(erasure);
    manifest.validate_erasure()?;
    Ok(())
}

/// Lists the regular files under `root` (following symlinks to files), sorted by relative path.
fn list_files(root: &Path) -> Result<Vec<(String, PathBuf)>, PublishError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| PublishError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| PublishError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|source| PublishError::Io {
                path: path.clone(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let meta = fs::metadata(&path).map_err(|source| PublishError::Io {
                path: path.clone(),
                source,
            })?;
            if ft.is_symlink() && meta.is_dir() {
                tracing::warn!(path = %path.display(), "skipping symlink to a folder");
                continue;
            }
            if !meta.is_file() {
                tracing::warn!(path = %path.display(), "skipping special file");
                continue;
            }
            let rel = path.strip_prefix(root).expect("walked under root");
            let rel_str = rel.to_str().ok_or_else(|| PublishError::BadPath {
                path: path.clone(),
                reason: "the name is not valid UTF-8".into(),
            })?;
            out.push((rel_str.to_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// Offsets in a safetensors file where chunking should restart: the start of
/// every tensor that follows a piece (the header or a tensor) and is itself
/// at least `min_size` bytes, so a rewritten tensor moves only its own chunks.
/// `None` when the file is not a well-formed safetensors file (plain
/// content-defined chunking then applies).
fn safetensors_boundaries(f: &mut fs::File, file_len: u64, min_size: u32) -> Option<Vec<u64>> {
    let mut len_bytes = [0u8; 8];
    f.read_exact_at(&mut len_bytes, 0).ok()?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100 << 20 || 8 + header_len > file_len {
        return None;
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact_at(&mut header, 8).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let data_start = 8 + header_len;
    let mut ranges: Vec<(u64, u64)> = json
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| {
            let o = t.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?))
        })
        .filter(|(a, b)| a <= b && data_start + b <= file_len)
        .collect();
    ranges.sort_unstable();
    let min = u64::from(min_size);
    let mut prev_len = header_len.max(min); // the header counts as a large piece
    let mut cuts = Vec::new();
    for (start, end) in ranges {
        let len = end - start;
        if len >= min && prev_len >= min {
            cuts.push(data_start + start);
        }
        prev_len = len;
    }
    cuts.dedup();
    Some(cuts)
}

fn chunk_file(path: &Path, cfg: ChunkerConfig) -> Result<merkle::ChunkedFile, PublishError> {
    let err = |source| PublishError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::File::open(path).map_err(err)?;
    let file_len = f.metadata().map_err(err)?.len();
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let cuts = if is_safetensors {
        safetensors_boundaries(&mut f, file_len, cfg.min_size).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut cuts = cuts.into_iter().peekable();
    let mut fc = FileChunker::new(cfg).expect("chunker config validated by caller");
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            // Feed up to the next tensor boundary, then mark it.
            let until = cuts.peek().map_or(u64::MAX, |&c| c.saturating_sub(offset));
            let take = (data.len() as u64).min(until) as usize;
            if take == 0 {
                fc.boundary();
                cuts.next();
                continue;
            }
            fc.update(&data[..take]);
            data = &data[take..];
            offset += take as u64;
        }
    }
    Ok(fc.finish())
}

/// Chunks every file under `root` (in parallel across files) and builds the manifest.
pub fn scan(
    root: &Path,
    channel: &str,
    version: &str,
    created_unix: u64,
    cfg: ChunkerConfig,
) -> Result<(Manifest, SourceIndex), PublishError> {
    merkle::validate_name("channel", channel)?;
    merkle::validate_name("version", version)?;
    cfg.validate()
        .map_err(|e| PublishError::Manifest(merkle::ManifestError::from(e)))?;
    let meta = fs::metadata(root).map_err(|source| PublishError::Io {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PublishError::BadPath {
            path: root.to_owned(),
            reason: "not a folder; seed takes the folder that holds the checkpoint".into(),
        });
    }
    let files = list_files(root)?;
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results: Vec<Option<Result<merkle::ChunkedFile, PublishError>>> =
        (0..files.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.min(files.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= files.len() {
                            break done;
                        }
                        done.push((i, chunk_file(&files[i].1, cfg)));
                    }
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("chunking thread panicked") {
                results[i] = Some(r);
            }
        }
    });
    let mut index = SourceIndex::default();
    let mut entries = Vec::with_capacity(files.len());
    for ((rel, path), chunked) in files.into_iter().zip(results) {
        let chunked = chunked.expect("every file chunked")?;
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644);
        let file_idx = index.files.len();
        let mut offset = 0u64;
        for c in &chunked.chunks {
            index
                .chunks
                .entry(c.hash)
                .or_insert((file_idx, offset, c.len));
            offset += u64::from(c.len);
        }
        index.files.push(path);
        entries.push(FileEntry {
            path: rel,
            mode,
            size: chunked.size,
            sha256: chunked.sha256,
            chunks: chunked.chunks,
        });
    }
    let manifest = Manifest {
        channel: channel.to_owned(),
        version: version.to_owned(),
        created_unix,
        chunker: cfg,
        files: entries,
        erasure: None,
    };
    manifest.validate()?;
    Ok((manifest, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_builds_a_valid_manifest_and_serves_chunks() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.path().join("sub/model.bin"), &big).unwrap();
        fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let cfg = ChunkerConfig {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
        };
        let (m, idx) = scan(dir.path(), "c", "v1", 0, cfg).unwrap();
        assert_eq!(
            m.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["config.json", "sub/model.bin"]
        );
        assert_eq!(m.total_size(), 300_002);
        let first = m.files[1].chunks[0];
        assert_eq!(
            idx.read(&first.hash).unwrap().unwrap(),
            &big[..first.len as usize]
        );
        // Editing the source in place is detected when serving.
        fs::write(dir.path().join("sub/model.bin"), vec![0u8; 300_000]).unwrap();
        assert!(idx.read(&first.hash).is_err());
    }

    #[test]
    fn add_parity_serves_pieces_that_rebuild_lost_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 13 % 251) as u8).collect();
        fs::write(dir.path().join("a.bin"), &big).unwrap();
        let cfg = ChunkerConfig {
            min_size: 16 << 10,
            avg_size: 32 << 10,
            max_size: 64 << 10,
        };
        let (mut m, mut idx) = scan(dir.path(), "c", "v1", 0, cfg).unwrap();
        let root_before = m.root();
        let ec = ErasureConfig::new(4, 2).unwrap();
        let parity_path = dir.path().join("state/parity.bin");
        add_parity(&mut m, &mut idx, ec, &parity_path).unwrap();
        assert_ne!(m.root(), root_before, "parity is committed under the root");
        let unique = m.unique_chunks();
        let e = m.erasure.clone().unwrap();
        assert_eq!(e.parity.len(), unique.len().div_ceil(4) * 2);
        let decoded = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(decoded, m);
        // Lose the first two data chunks of stripe 0; rebuild from the rest.
        let stripe = &merkle::erasure::stripes(ec, &unique)[0];
        let data: Vec<Vec<u8>> = unique[stripe.data.clone()]
            .iter()
            .map(|c| idx.read(&c.hash).unwrap().unwrap())
            .collect();
        let parity: Vec<Vec<u8>> = e.parity[stripe.parity.clone()]
            .iter()
            .map(|p| idx.read(&p.hash).unwrap().unwrap())
            .collect();
        let held_data = [None, None, Some(&data[2][..]), Some(&data[3][..])];
        let held_parity = [Some(&parity[0][..]), Some(&parity[1][..])];
        let rebuilt = merkle::erasure::rebuild_stripe(
            &unique[stripe.data.clone()],
            &e.parity[stripe.parity.clone()],
            &held_data,
            &held_parity,
        )
        .unwrap();
        assert_eq!(rebuilt, data);
        // A damaged parity file is caught when serving.
        let mut bytes = fs::read(&parity_path).unwrap();
        bytes[0] ^= 1;
        fs::write(&parity_path, bytes).unwrap();
        assert!(idx.read(&e.parity[0].hash).is_err());
    }

    /// Rewriting a quarter of a safetensors file's tensors moves only those
    /// tensors' bytes (plus at most a chunk per edited edge of the header),
    /// because chunking restarts at tensor boundaries.
    #[test]
    fn safetensors_delta_is_confined_to_rewritten_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
        let size = 8 << 20;
        crate::checkpoint::write_v1(&v1, size, 3).unwrap();
        crate::checkpoint::copy_tree(&v1, &v2).unwrap();
        crate::checkpoint::edit_to_v2(&v2, size, 3).unwrap();
        let cfg = ChunkerConfig::default();
        let (m1, _) = scan(&v1, "c", "v1", 0, cfg).unwrap();
        let (m2, _) = scan(&v2, "c", "v2", 0, cfg).unwrap();
        let file = |m: &Manifest| {
            m.files
                .iter()
                .find(|f| f.path == "model.safetensors")
                .unwrap()
                .clone()
        };
        let (f1, f2) = (file(&m1), file(&m2));
        let old: std::collections::HashSet<Hash> = f1.chunks.iter().map(|c| c.hash).collect();
        let new_bytes: u64 = f2
            .chunks
            .iter()
            .filter(|c| !old.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        let shape = crate::checkpoint::Shape::of_size(size);
        let rewritten = (shape.tensors / 4 * shape.tensor_bytes) as u64;
        assert_eq!(new_bytes, rewritten, "only the rewritten tensors are new");
        // Plain content-defined chunking of the same bytes would move more.
        let plain = |path: &Path| {
            let mut fc = FileChunker::new(cfg).unwrap();
            fc.update(&fs::read(path).unwrap());
            fc.finish().chunks
        };
        let p1: std::collections::HashSet<Hash> = plain(&v1.join("model.safetensors"))
            .iter()
            .map(|c| c.hash)
            .collect();
        let plain_new: u64 = plain(&v2.join("model.safetensors"))
            .iter()
            .filter(|c| !p1.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        assert!(plain_new > new_bytes, "{plain_new} vs {new_bytes}");
    }

    #[test]
    fn scan_of_missing_folder_names_it() {
        let e = scan(
            Path::new("/nonexistent/ckpt"),
            "c",
            "v1",
            0,
            ChunkerConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ckpt"), "{e}");
    }
}
