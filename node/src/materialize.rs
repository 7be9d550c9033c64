//! Materialization: rebuilding a version's files from verified chunks into
//! `<data_dir>/<channel>/<version>/` and switching `<data_dir>/<channel>/current`.
//!
//! Files are written into a fresh staging folder `<channel>/.staging-…`; every
//! chunk is re-verified (BLAKE3) as it is read from the store, every file's
//! SHA-256 is checked against the manifest and the file fsynced; only then is
//! the staging folder renamed to `<version>` and `current` (a relative symlink)
//! replaced by `rename(2)` of a new symlink, which is atomic. On any error the
//! staging folder is removed and `current` is left as it was.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use merkle::{Hash, Manifest};
use sha2::Digest;

use crate::store::{ChunkStore, StoreError};

/// Errors while materializing a version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaterializeError {
    /// File system error, with the path.
    #[error("materialize: {op} {path}: {source}{hint}", hint = if source.raw_os_error() == Some(libc::ENOSPC) { " (disk full: free space under data_dir; the previous `current` is unchanged)" } else { "" })]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The chunk store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A chunk the manifest lists is not in the store.
    #[error("chunk {hash} of {path} is missing from the store")]
    MissingChunk {
        /// The file.
        path: String,
        /// The chunk.
        hash: Hash,
    },
    /// The rebuilt file's SHA-256 differs from the manifest.
    #[error("{path}: SHA-256 of the rebuilt file is {actual}, the manifest says {expected}")]
    Sha256Mismatch {
        /// The file.
        path: String,
        /// From the manifest (hex).
        expected: String,
        /// Computed (hex).
        actual: String,
    },
}

fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MaterializeError + 'a {
    move |source| MaterializeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Name of the record, inside the channel folder, of which root a materialized version holds.
fn record_path(channel_dir: &Path, version: &str) -> PathBuf {
    channel_dir.join(format!(".{version}.root"))
}

/// Whether `<channel>/<version>` already holds exactly this root.
pub fn is_materialized(data_dir: &Path, manifest: &Manifest, root: &Hash) -> bool {
    let channel_dir = data_dir.join(&manifest.channel);
    channel_dir.join(&manifest.version).is_dir()
        && fs::read_to_string(record_path(&channel_dir, &manifest.version))
            .is_ok_and(|s| s.trim() == root.to_hex())
}

/// The version `current` points at, if any.
pub fn current_version(data_dir: &Path, channel: &str) -> Option<String> {
    let target = fs::read_link(data_dir.join(channel).join("current")).ok()?;
    target.to_str().map(str::to_owned)
}

/// Rebuilds `manifest` from `store` and makes it `current`. Returns the version folder.
pub fn materialize(
    data_dir: &Path,
    manifest: &Manifest,
    root: &Hash,
    store: &ChunkStore,
    fsync: bool,
) -> Result<PathBuf, MaterializeError> {
    materialize_paced(data_dir, manifest, root, store, fsync, Duration::ZERO)
}

/// [`materialize`], sleeping `pause` after each file (a test fault switch:
/// it widens the window in which a kill lands mid-materialization).
pub fn materialize_paced(
    data_dir: &Path,
    manifest: &Manifest,
    root: &Hash,
    store: &ChunkStore,
    fsync: bool,
    pause: Duration,
) -> Result<PathBuf, MaterializeError> {
    let channel_dir = data_dir.join(&manifest.channel);
    let final_dir = channel_dir.join(&manifest.version);
    fs::create_dir_all(&channel_dir).map_err(io("create", &channel_dir))?;
    remove_stale_staging(&channel_dir);
    if !is_materialized(data_dir, manifest, root) {
        let staging = channel_dir.join(format!(
            ".staging-{}-{}-{}",
            manifest.version,
            std::process::id(),
            unique()
        ));
        fs::create_dir(&staging).map_err(io("create", &staging))?;
        let built = write_files(&staging, manifest, store, fsync, pause);
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        let record = record_path(&channel_dir, &manifest.version);
        let _ = fs::remove_file(&record);
        if final_dir.exists() {
            // A folder of that name holding something else (an older attempt or
            // another root): move it aside, never mix content.
            let aside = channel_dir.join(format!(".old-{}-{}", manifest.version, unique()));
            fs::rename(&final_dir, &aside).map_err(io("move aside", &final_dir))?;
            let _ = fs::remove_dir_all(&aside);
        }
        fs::rename(&staging, &final_dir).map_err(io("rename", &final_dir))?;
        write_synced(&record, root.to_hex().as_bytes(), fsync)?;
    }
    switch_current(&channel_dir, &manifest.version, fsync)?;
    Ok(final_dir)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Removes staging folders left by an earlier process (killed mid-way):
/// their names carry the writer's pid, and one daemon owns a data_dir.
fn remove_stale_staging(channel_dir: &Path) {
    let Ok(entries) = fs::read_dir(channel_dir) else {
        return;
    };
    let mine = format!("-{}-", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with(".staging-") || name.starts_with(".old-")) && !name.contains(&mine) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn write_files(
    staging: &Path,
    manifest: &Manifest,
    store: &ChunkStore,
    fsync: bool,
    pause: Duration,
) -> Result<(), MaterializeError> {
    for file in &manifest.files {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        // Manifest paths were validated: relative, no `..`, no empty components.
        let path = staging.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut out = fs::File::create(&path).map_err(io("create", &path))?;
        let mut sha = sha2::Sha256::new();
        for c in &file.chunks {
            let data = store
                .get(&c.hash)?
                .filter(|d| d.len() == c.len as usize)
                .ok_or_else(|| MaterializeError::MissingChunk {
                    path: file.path.clone(),
                    hash: c.hash,
                })?;
            sha.update(&data);
            out.write_all(&data).map_err(io("write", &path))?;
        }
        let actual: [u8; 32] = sha.finalize().into();
        if actual != file.sha256 {
            return Err(MaterializeError::Sha256Mismatch {
                path: file.path.clone(),
                expected: hex::encode(file.sha256),
                actual: hex::encode(actual),
            });
        }
        out.set_permissions(fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io("chmod", &path))?;
        if fsync {
            out.sync_all().map_err(io("fsync", &path))?;
        }
    }
    if fsync {
        sync_dir(staging)?;
    }
    Ok(())
}

fn write_synced(path: &Path, data: &[u8], fsync: bool) -> Result<(), MaterializeError> {
    let mut f = fs::File::create(path).map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))?;
    if fsync {
        f.sync_all().map_err(io("fsync", path))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), MaterializeError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Points `<channel_dir>/current` at `version` atomically.
fn switch_current(channel_dir: &Path, version: &str, fsync: bool) -> Result<(), MaterializeError> {
    let tmp = channel_dir.join(format!(".current-{}-{}", std::process::id(), unique()));
    std::os::unix::fs::symlink(version, &tmp).map_err(io("symlink", &tmp))?;
    let current = channel_dir.join("current");
    if let Err(e) = fs::rename(&tmp, &current) {
        let _ = fs::remove_file(&tmp);
        return Err(io("rename", &current)(e));
    }
    if fsync {
        sync_dir(channel_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use merkle::{ChunkerConfig, FileChunker, FileEntry};

    fn manifest_for(store: &ChunkStore, version: &str, files: &[(&str, Vec<u8>)]) -> Manifest {
        let cfg = ChunkerConfig {
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
        };
        let mut entries = Vec::new();
        for (path, data) in files {
            let mut fc = FileChunker::new(cfg).unwrap();
            fc.update(data);
            let cf = fc.finish();
            let mut off = 0usize;
            for c in &cf.chunks {
                store
                    .put(&c.hash, &data[off..off + c.len as usize])
                    .unwrap();
                off += c.len as usize;
            }
            entries.push(FileEntry {
                path: path.to_string(),
                mode: 0o644,
                size: cf.size,
                sha256: cf.sha256,
                chunks: cf.chunks,
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            channel: "ch".into(),
            version: version.into(),
            created_unix: 1,
            chunker: cfg,
            files: entries,
            erasure: None,
        }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 7) as u8)
            .collect()
    }

    #[test]
    fn materializes_and_switches_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        let f1 = data(10_000, 1);
        let m = manifest_for(&store, "v1", &[("a/b.bin", f1.clone()), ("c.txt", vec![])]);
        let root = m.root();
        let out = materialize(dir.path(), &m, &root, &store, true).unwrap();
        assert_eq!(fs::read(out.join("a/b.bin")).unwrap(), f1);
        assert_eq!(fs::read(out.join("c.txt")).unwrap(), b"");
        assert_eq!(current_version(dir.path(), "ch").as_deref(), Some("v1"));
        assert!(is_materialized(dir.path(), &m, &root));
        // Idempotent.
        materialize(dir.path(), &m, &root, &store, false).unwrap();
        let m2 = manifest_for(&store, "v2", &[("a/b.bin", data(5000, 2))]);
        materialize(dir.path(), &m2, &m2.root(), &store, false).unwrap();
        assert_eq!(current_version(dir.path(), "ch").as_deref(), Some("v2"));
    }

    #[test]
    fn missing_chunk_leaves_current_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        let m1 = manifest_for(&store, "v1", &[("x", data(3000, 3))]);
        materialize(dir.path(), &m1, &m1.root(), &store, false).unwrap();
        let mut m2 = manifest_for(&store, "v2", &[("x", data(3000, 4))]);
        m2.files[0].chunks[0].hash = Hash::of(b"not stored");
        let e = materialize(dir.path(), &m2, &m2.root(), &store, false).unwrap_err();
        assert!(matches!(e, MaterializeError::MissingChunk { .. }), "{e}");
        assert_eq!(current_version(dir.path(), "ch").as_deref(), Some("v1"));
        assert!(!dir.path().join("ch/v2").exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("ch"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".staging"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn sha_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        let mut m = manifest_for(&store, "v1", &[("x", data(3000, 5))]);
        m.files[0].sha256[0] ^= 1;
        let e = materialize(dir.path(), &m, &m.root(), &store, false).unwrap_err();
        assert!(matches!(e, MaterializeError::Sha256Mismatch { .. }), "{e}");
        assert!(current_version(dir.path(), "ch").is_none());
    }
}
