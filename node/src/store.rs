//! The on-disk content-addressed chunk store.
//!
//! Layout under `<data_dir>/.syncnode/`:
//! - `chunks/<first two hex digits>/<64 hex digits>`: one file per verified chunk;
//! - `tmp/`: chunks being written; emptied on open.
//!
//! A chunk becomes visible only by `rename` from `tmp/` after its bytes were
//! written and (by default) fsynced, so a partially written chunk is never
//! readable under its final name, whatever instant the process dies at. The
//! in-memory index is rebuilt by listing `chunks/` on open. Reads re-check
//! BLAKE3, so a chunk damaged on disk is dropped (and refetched) rather than
//! served or materialized.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use merkle::Hash;

/// Errors of the chunk store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error, with the path and the operation that failed.
    #[error("chunk store: {op} {path}: {source}{hint}", hint = io_hint(source))]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bytes handed to `put` do not hash to the claimed hash.
    #[error("chunk {expected} rejected: its bytes hash to {actual}")]
    HashMismatch {
        /// The claimed hash.
        expected: Hash,
        /// The hash of the bytes.
        actual: Hash,
    },
    /// A stored chunk no longer matches its hash (disk damage); it was removed.
    #[error("stored chunk {0} was corrupt on disk and has been removed; it will be fetched again")]
    Corrupt(Hash),
}

fn io_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        " (the disk is full: free space under data_dir or point data_dir at a larger disk; \
         nothing partial was kept)"
    } else {
        ""
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A content-addressed store of verified chunks.
#[derive(Debug)]
pub struct ChunkStore {
    chunks: PathBuf,
    tmp: PathBuf,
    index: RwLock<HashMap<Hash, u32>>,
    fsync: bool,
    tmp_seq: AtomicU64,
}

impl ChunkStore {
    /// Opens (creating if needed) the store under `root`, clears leftovers in
    /// `tmp/` and rebuilds the index from `chunks/`.
    pub fn open(root: &Path, fsync: bool) -> Result<ChunkStore, StoreError> {
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
        fs::create_dir_all(&chunks).map_err(io("create", &chunks))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io("clear", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        let mut index = HashMap::new();
        for shard in fs::read_dir(&chunks).map_err(io("list", &chunks))? {
            let shard = shard.map_err(io("list", &chunks))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(io("list", &shard))? {
                let entry = entry.map_err(io("list", &shard))?;
                let name = entry.file_name();
                let Some(hash) = name.to_str().and_then(|n| Hash::from_hex(n).ok()) else {
                    tracing::warn!(path = %entry.path().display(), "ignoring stray file in chunk store");
                    continue;
                };
                let len = entry.metadata().map_err(io("stat", &entry.path()))?.len();
                index.insert(hash, u32::try_from(len).unwrap_or(u32::MAX));
            }
        }
        Ok(ChunkStore {
            chunks,
            tmp,
            index: RwLock::new(index),
            fsync,
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.chunks.join(&hex[..2]).join(hex)
    }

    /// Whether the chunk is stored.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.index.read().expect("index lock").contains_key(hash)
    }

    /// Number of stored chunks and their total bytes.
    pub fn stats(&self) -> (usize, u64) {
        let idx = self.index.read().expect("index lock");
        (idx.len(), idx.values().map(|&l| u64::from(l)).sum())
    }

    /// Stores a chunk after checking that `data` hashes to `hash`. Idempotent:
    /// returns `Ok(false)` when the chunk was already stored, `Ok(true)` when
    /// this call wrote it.
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        let actual = Hash::of(data);
        if actual != *hash {
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        if self.contains(hash) {
            return Ok(false);
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{seq}", hash.to_hex(), std::process::id()));
        let result = self.write_new(&tmp, hash, data);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_new(&self, tmp: &Path, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        let mut f = fs::File::create(tmp).map_err(io("create", tmp))?;
        f.write_all(data).map_err(io("write", tmp))?;
        if self.fsync {
            f.sync_all().map_err(io("fsync", tmp))?;
        }
        drop(f);
        let dest = self.path_of(hash);
        let shard = dest.parent().expect("chunk path has a shard folder");
        fs::create_dir_all(shard).map_err(io("create", shard))?;
        fs::rename(tmp, &dest).map_err(io("rename", &dest))?;
        // Two writers of the same chunk may race (an endgame duplicate): both
        // renames install identical bytes; only the first insert counts as new.
        let fresh = self
            .index
            .write()
            .expect("index lock")
            .insert(*hash, data.len() as u32)
            .is_none();
        Ok(fresh)
    }

    /// Reads a chunk and re-verifies it. `Ok(None)` if it is not stored.
    pub fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.contains(hash) {
            return Ok(None);
        }
        let path = self.path_of(hash);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(hash);
                return Ok(None);
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        if Hash::of(&data) != *hash {
            self.forget(hash);
            let _ = fs::remove_file(&path);
            return Err(StoreError::Corrupt(*hash));
        }
        Ok(Some(data))
    }

    fn forget(&self, hash: &Hash) {
        self.index.write().expect("index lock").remove(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_reopen_rebuilds_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), true).unwrap();
        let a = b"hello chunk".to_vec();
        let h = Hash::of(&a);
        assert!(!s.contains(&h));
        assert!(s.put(&h, &a).unwrap());
        assert!(
            !s.put(&h, &a).unwrap(),
            "second put of the same chunk writes nothing"
        );
        assert_eq!(s.get(&h).unwrap().unwrap(), a);
        drop(s);
        let s = ChunkStore::open(dir.path(), true).unwrap();
        assert!(s.contains(&h));
        assert_eq!(s.stats(), (1, a.len() as u64));
    }

    #[test]
    fn put_refuses_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), false).unwrap();
        let h = Hash::of(b"right");
        let e = s.put(&h, b"wrong").unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { .. }));
        assert!(!s.contains(&h));
        assert!(s.get(&h).unwrap().is_none());
    }

    #[test]
    fn partial_tmp_files_are_never_visible_and_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        drop(ChunkStore::open(dir.path(), false).unwrap());
        // A crash mid-write leaves only a temp file.
        let h = Hash::of(b"complete chunk");
        fs::write(dir.path().join("tmp").join(h.to_hex()), b"compl").unwrap();
        let s = ChunkStore::open(dir.path(), false).unwrap();
        assert!(!s.contains(&h));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn damaged_chunk_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), false).unwrap();
        let data = vec![7u8; 1000];
        let h = Hash::of(&data);
        s.put(&h, &data).unwrap();
        fs::write(s.path_of(&h), vec![8u8; 1000]).unwrap();
        assert!(matches!(s.get(&h), Err(StoreError::Corrupt(_))));
        assert!(!s.contains(&h));
        assert!(!s.path_of(&h).exists());
    }
}

#[cfg(test)]
mod race {
    use super::*;

    /// Concurrent puts of one chunk: exactly one reports it as newly stored.
    #[test]
    fn concurrent_puts_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), false).unwrap();
        for round in 0..20u32 {
            let data = round.to_le_bytes().repeat(5000);
            let h = Hash::of(&data);
            let fresh: usize = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..4)
                    .map(|_| sc.spawn(|| s.put(&h, &data).unwrap()))
                    .collect();
                hs.into_iter().map(|t| usize::from(t.join().unwrap())).sum()
            });
            assert_eq!(fresh, 1, "round {round}");
            assert_eq!(s.get(&h).unwrap().unwrap(), data);
        }
    }
}
