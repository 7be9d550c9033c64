//! The on-disk content-addressed chunk store.
//!
//! Layout under `<data_dir>/.syncnode/packs/`: append-only pack files
//! `pack-000001.snp`, … of records
//!
//! ```text
//! record = b"SNCK" | len: u32 LE | BLAKE3 hash: 32 bytes | data[len]
//! ```
//!
//! One pack file holds many chunks, so storing a chunk costs no new inode (a
//! file per chunk spent about a quarter of the daemon's CPU in ext4 inode
//! allocation). A chunk becomes visible (indexed, readable, served) only after
//! its whole record was written; a failed write (disk full) truncates the pack
//! back, so nothing partial stays. On open the index is rebuilt by walking the
//! record headers; a torn record at the end of a pack (the process died
//! mid-append) is cut off. Reads re-check BLAKE3, so a record damaged on disk
//! is dropped from the index (and refetched) rather than served or
//! materialized. Space of dropped records is reclaimed only by garbage
//! collection, which is future work.
//!
//! **Durability: group commit.** With `fsync` on, the pack is synced once
//! [`SYNC_BATCH`] bytes were appended since the last sync, when a pack is
//! closed, and whenever [`ChunkStore::sync`] is called, which materialization
//! does before it records a version as complete. Not after every chunk: that
//! cost the fan-out benchmark 5 of its 20 CPU-s (8 daemons on 2 cores, 128 MiB
//! at 200 Mbit/s: 2.09 x S/B with a sync per chunk, 1.55 with none;
//! `docs/performance.md`). What a sync per chunk bought is small: a killed
//! process loses nothing either way (the page cache outlives it), and after a
//! power loss the unsynced tail is cut off or fails its BLAKE3 check, so the
//! node refetches at most [`SYNC_BATCH`] bytes; a chunk is never served or
//! materialized wrong.
//!
//! **Chunks kept in a version's files: one write, not two.** A chunk that
//! arrives for a version being staged (`crate::materialize::Stager`) is
//! written once, into the staged file, and the store keeps a *reference* to
//! it rather than a second copy:
//!
//! ```text
//! ref  = b"SNRF" | body_len: u32 LE | BLAKE3 hash: 32 bytes | body[body_len]
//! body = chunk_len: u32 LE | offset: u64 LE | path_len: u16 LE | path
//!        | staged_len: u16 LE | staged_path
//! ```
//!
//! `path` is the file once the version is materialized, `staged_path` the
//! same file in its staging folder (both relative to `data_dir`); a read
//! opens whichever exists, final first, and re-checks BLAKE3 like any read.
//! The copy into pack records cost the fan-out benchmark a sixth of its CPU
//! (page-cache writes are the most expensive thing the daemon does on the
//! benchmark's VM) and doubled the disk a node needs. What a reference
//! changes: deleting or editing a materialized version's files takes its
//! chunks out of the store (they fail their check, are dropped and fetched
//! again if needed); a staging folder that is removed unfinished (a newer
//! version superseded it) first moves its chunks into a pack
//! ([`ChunkStore::adopt_file`]), so nothing verified is lost.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use merkle::Hash;

const MAGIC: &[u8; 4] = b"SNCK";
const MAGIC_REF: &[u8; 4] = b"SNRF";
const HEADER: u64 = 40;
/// A pack is closed for appends beyond this size.
const PACK_LIMIT: u64 = 1 << 30;
/// With `fsync` on, the pack is synced after this many appended bytes (and on
/// [`ChunkStore::sync`]): what a power loss can make a node fetch again.
pub const SYNC_BATCH: u64 = 64 << 20;

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

/// Where a chunk lives.
#[derive(Debug, Clone)]
struct Loc {
    src: Src,
    offset: u64,
    len: u32,
}

/// The file holding a chunk: a pack, or a file of a version ([`ExtFile`]).
#[derive(Debug, Clone)]
enum Src {
    Pack(u32),
    File(Arc<ExtFile>),
}

/// A version's file that holds referenced chunks: its final path and its
/// staging path (absolute). Opened per read, so a rename between the two
/// (materialization) needs no bookkeeping and no descriptor stays open.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ExtFile {
    /// Where the file is once its version is materialized.
    pub path: PathBuf,
    /// Where it is while the version is staged.
    pub staged: PathBuf,
}

impl ExtFile {
    fn open(&self) -> std::io::Result<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
        };
        open(&self.path).or_else(|_| open(&self.staged))
    }
}

#[derive(Debug)]
struct Writer {
    pack: u32,
    file: Arc<fs::File>,
    len: u64,
    /// Bytes appended to `file` since its last sync.
    unsynced: u64,
}

/// A content-addressed store of verified chunks.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    /// `data_dir`: reference paths are stored relative to it.
    base: PathBuf,
    index: RwLock<HashMap<Hash, Loc>>,
    files: RwLock<HashMap<u32, Arc<fs::File>>>,
    writer: Mutex<Writer>,
    fsync: bool,
}

fn pack_name(n: u32) -> String {
    format!("pack-{n:06}.snp")
}

fn same_place(a: &Loc, b: &Loc) -> bool {
    a.offset == b.offset
        && match (&a.src, &b.src) {
            (Src::Pack(x), Src::Pack(y)) => x == y,
            (Src::File(x), Src::File(y)) => Arc::ptr_eq(x, y) || x == y,
            _ => false,
        }
}

/// A record found by [`scan_pack`].
#[derive(Debug)]
enum Record {
    /// A chunk's bytes in this pack, at `offset`.
    Data { hash: Hash, offset: u64, len: u32 },
    /// A chunk kept in a version's file (paths relative to `data_dir`).
    Ref {
        hash: Hash,
        len: u32,
        offset: u64,
        path: PathBuf,
        staged: PathBuf,
    },
}

/// Encodes a reference record (format in the module docs).
fn ref_record(hash: &Hash, len: u32, offset: u64, path: &Path, staged: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let (p, st) = (path.as_os_str().as_bytes(), staged.as_os_str().as_bytes());
    let body_len = 4 + 8 + 2 + p.len() + 2 + st.len();
    let mut r = Vec::with_capacity(HEADER as usize + body_len);
    r.extend_from_slice(MAGIC_REF);
    r.extend_from_slice(&(body_len as u32).to_le_bytes());
    r.extend_from_slice(&hash.0);
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&offset.to_le_bytes());
    r.extend_from_slice(&(p.len() as u16).to_le_bytes());
    r.extend_from_slice(p);
    r.extend_from_slice(&(st.len() as u16).to_le_bytes());
    r.extend_from_slice(st);
    r
}

/// Decodes a reference record's body; `None` if it is malformed.
fn parse_ref(hash: Hash, body: &[u8]) -> Option<Record> {
    use std::os::unix::ffi::OsStrExt;
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let offset = u64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let pl = usize::from(u16::from_le_bytes(body.get(12..14)?.try_into().ok()?));
    let path = body.get(14..14 + pl)?;
    let at = 14 + pl;
    let sl = usize::from(u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?));
    let staged = body.get(at + 2..at + 2 + sl)?;
    (at + 2 + sl == body.len()).then(|| Record::Ref {
        hash,
        len,
        offset,
        path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
        staged: PathBuf::from(std::ffi::OsStr::from_bytes(staged)),
    })
}

/// Writes `header` then `data` at the file's end (the pack is opened in append
/// mode), in one `writev` unless the kernel writes less.
fn write_all_vectored(mut file: &fs::File, header: &[u8], data: &[u8]) -> std::io::Result<()> {
    let total = header.len() + data.len();
    let mut done = 0;
    while done < total {
        let n = match if done < header.len() {
            file.write_vectored(&[
                std::io::IoSlice::new(&header[done..]),
                std::io::IoSlice::new(data),
            ])
        } else {
            file.write(&data[done - header.len()..])
        } {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// Walks the records of one pack: each whole record, and the length up to
/// the last whole record (a torn or malformed record ends the walk).
fn scan_pack(file: &fs::File) -> std::io::Result<(Vec<Record>, u64)> {
    let end = file.metadata()?.len();
    let mut pos = 0u64;
    let mut out = Vec::new();
    let mut h = [0u8; HEADER as usize];
    while pos + HEADER <= end {
        file.read_exact_at(&mut h, pos)?;
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if pos + HEADER + u64::from(len) > end {
            break;
        }
        let hash = Hash(h[8..40].try_into().expect("32 bytes"));
        if &h[..4] == MAGIC {
            out.push(Record::Data {
                hash,
                offset: pos + HEADER,
                len,
            });
        } else if &h[..4] == MAGIC_REF && len <= 1 << 17 {
            let mut body = vec![0u8; len as usize];
            file.read_exact_at(&mut body, pos + HEADER)?;
            match parse_ref(hash, &body) {
                Some(r) => out.push(r),
                None => break,
            }
        } else {
            break;
        }
        pos += HEADER + u64::from(len);
    }
    Ok((out, pos))
}

/// Every chunk in the store under `root` (`<data_dir>/.syncnode`) as
/// `(hash, bytes)`: each data record, and each reference whose file still
/// exists, read from that file (final path first). For offline inspection
/// (tests, tools); the daemon need not be stopped.
pub fn read_all(root: &Path) -> std::io::Result<Vec<(Hash, Vec<u8>)>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(root.join("packs")) else {
        return Ok(out);
    };
    let base = root.parent().unwrap_or(root);
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        let f = fs::File::open(&p)?;
        for r in scan_pack(&f)?.0 {
            match r {
                Record::Data { hash, offset, len } => {
                    let mut data = vec![0u8; len as usize];
                    f.read_exact_at(&mut data, offset)?;
                    out.push((hash, data));
                }
                Record::Ref {
                    hash,
                    len,
                    offset,
                    path,
                    staged,
                } => {
                    let ext = ExtFile {
                        path: base.join(path),
                        staged: base.join(staged),
                    };
                    if let Ok(file) = ext.open() {
                        let mut data = vec![0u8; len as usize];
                        if file.read_exact_at(&mut data, offset).is_ok() {
                            out.push((hash, data));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

impl ChunkStore {
    /// Opens (creating if needed) the store under `root` and rebuilds the
    /// index from the pack files, cutting off a torn record at a pack's end.
    pub fn open(root: &Path, fsync: bool) -> Result<ChunkStore, StoreError> {
        let dir = root.join("packs");
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let mut packs: Vec<u32> = fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name();
                let n = n.to_str()?;
                n.strip_prefix("pack-")?.strip_suffix(".snp")?.parse().ok()
            })
            .collect();
        packs.sort_unstable();
        let base = root.parent().unwrap_or(root).to_path_buf();
        let mut index: HashMap<Hash, Loc> = HashMap::new();
        let mut files = HashMap::new();
        let mut last = (1u32, 0u64);
        // Files named by references, and whether either of their paths exists.
        let mut exts: HashMap<(PathBuf, PathBuf), Option<Arc<ExtFile>>> = HashMap::new();
        for &n in &packs {
            let path = dir.join(pack_name(n));
            let f = fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io("open", &path))?;
            let (records, whole) = scan_pack(&f).map_err(io("read", &path))?;
            let len = f.metadata().map_err(io("stat", &path))?.len();
            if whole < len {
                tracing::warn!(path = %path.display(), cut = len - whole, "cutting off a torn record");
                f.set_len(whole).map_err(io("truncate", &path))?;
            }
            for r in records {
                match r {
                    Record::Data { hash, offset, len } => {
                        index.insert(
                            hash,
                            Loc {
                                src: Src::Pack(n),
                                offset,
                                len,
                            },
                        );
                    }
                    Record::Ref {
                        hash,
                        len,
                        offset,
                        path,
                        staged,
                    } => {
                        // A copy in a pack wins; a later reference replaces
                        // an earlier one; one whose file is gone is skipped.
                        if matches!(index.get(&hash), Some(l) if matches!(l.src, Src::Pack(_))) {
                            continue;
                        }
                        let ext = exts
                            .entry((path, staged))
                            .or_insert_with_key(|(p, st)| {
                                let e = ExtFile {
                                    path: base.join(p),
                                    staged: base.join(st),
                                };
                                (e.path.exists() || e.staged.exists()).then(|| Arc::new(e))
                            })
                            .clone();
                        if let Some(ext) = ext {
                            index.insert(
                                hash,
                                Loc {
                                    src: Src::File(ext),
                                    offset,
                                    len,
                                },
                            );
                        }
                    }
                }
            }
            files.insert(n, Arc::new(f));
            last = (n, whole);
        }
        let (pack, len) = if last.1 >= PACK_LIMIT || !files.contains_key(&last.0) {
            let n = if files.is_empty() { 1 } else { last.0 + 1 };
            let path = dir.join(pack_name(n));
            let f = fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(io("create", &path))?;
            files.insert(n, Arc::new(f));
            (n, 0)
        } else {
            last
        };
        let writer = Writer {
            pack,
            file: files[&pack].clone(),
            len,
            unsynced: 0,
        };
        Ok(ChunkStore {
            dir,
            base,
            index: RwLock::new(index),
            files: RwLock::new(files),
            writer: Mutex::new(writer),
            fsync,
        })
    }

    /// Whether the chunk is stored.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.index.read().expect("index lock").contains_key(hash)
    }

    /// Number of stored chunks and their total bytes.
    pub fn stats(&self) -> (usize, u64) {
        let idx = self.index.read().expect("index lock");
        (idx.len(), idx.values().map(|l| u64::from(l.len)).sum())
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
        let len = u32::try_from(data.len()).expect("chunks are at most 16 MiB");
        let mut w = self.writer.lock().expect("writer lock");
        // Checked under the writer lock: two racing puts store one record.
        if self.contains(hash) {
            return Ok(false);
        }
        if w.len >= PACK_LIMIT {
            self.rotate(&mut w)?;
        }
        let path = self.dir.join(pack_name(w.pack));
        let mut header = [0u8; HEADER as usize];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..].copy_from_slice(&hash.0);
        // Header and data in one writev: no copy of the chunk into a record.
        let mut written = write_all_vectored(&w.file, &header, data);
        let record = HEADER + u64::from(len);
        if written.is_ok() && self.fsync && w.unsynced + record >= SYNC_BATCH {
            written = w.file.sync_data();
            if written.is_ok() {
                w.unsynced = 0;
            }
        } else if written.is_ok() && self.fsync {
            w.unsynced += record;
        }
        if let Err(e) = written {
            // Nothing partial may stay: cut the pack back to its last record.
            let _ = w.file.set_len(w.len);
            return Err(io("write", &path)(e));
        }
        let loc = Loc {
            src: Src::Pack(w.pack),
            offset: w.len + HEADER,
            len,
        };
        w.len += record;
        self.index.write().expect("index lock").insert(*hash, loc);
        Ok(true)
    }

    /// Makes every stored chunk durable (with `fsync` on; a no-op without):
    /// syncs the open pack if anything was appended since its last sync.
    /// Called before anything durable claims the chunks are held (a version
    /// recorded as materialized) and on shutdown.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut w = self.writer.lock().expect("writer lock");
        self.sync_writer(&mut w)
    }

    /// Bytes appended since the last sync (0 right after [`ChunkStore::sync`]).
    pub fn unsynced(&self) -> u64 {
        self.writer.lock().expect("writer lock").unsynced
    }

    fn sync_writer(&self, w: &mut Writer) -> Result<(), StoreError> {
        if self.fsync && w.unsynced > 0 {
            let path = self.dir.join(pack_name(w.pack));
            w.file.sync_data().map_err(io("fsync", &path))?;
            w.unsynced = 0;
        }
        Ok(())
    }

    fn rotate(&self, w: &mut Writer) -> Result<(), StoreError> {
        // The closed pack gets no later sync: make it durable now.
        self.sync_writer(w)?;
        let n = w.pack + 1;
        let path = self.dir.join(pack_name(n));
        let f = Arc::new(
            fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(io("create", &path))?,
        );
        self.files.write().expect("files lock").insert(n, f.clone());
        *w = Writer {
            pack: n,
            file: f,
            len: 0,
            unsynced: 0,
        };
        Ok(())
    }

    /// Reads a chunk and re-verifies it. `Ok(None)` if it is not stored. A
    /// chunk whose bytes no longer match, or whose referenced file is gone,
    /// is dropped from the index: `Err(Corrupt)`, and it will be fetched again.
    pub fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(loc) = self.index.read().expect("index lock").get(hash).cloned() else {
            return Ok(None);
        };
        let mut data = vec![0u8; loc.len as usize];
        match &loc.src {
            Src::Pack(n) => {
                let file = self.files.read().expect("files lock")[n].clone();
                let path = self.dir.join(pack_name(*n));
                file.read_exact_at(&mut data, loc.offset)
                    .map_err(io("read", &path))?;
            }
            Src::File(ext) => {
                let read = ext
                    .open()
                    .and_then(|f| f.read_exact_at(&mut data, loc.offset));
                if let Err(e) = read {
                    tracing::warn!(chunk = %hash, path = %ext.path.display(), error = %e,
                        "a chunk kept in a version's file cannot be read; it will be fetched again");
                    self.drop_if_same(hash, &loc);
                    return Err(StoreError::Corrupt(*hash));
                }
            }
        }
        if Hash::of(&data) != *hash {
            self.drop_if_same(hash, &loc);
            return Err(StoreError::Corrupt(*hash));
        }
        Ok(Some(data))
    }

    /// Removes `hash` from the index if it still points where `loc` does.
    fn drop_if_same(&self, hash: &Hash, loc: &Loc) {
        let mut idx = self.index.write().expect("index lock");
        if idx.get(hash).is_some_and(|l| same_place(l, loc)) {
            idx.remove(hash);
        }
    }

    /// Records that the chunk `hash` (`len` bytes) is held in `file` at
    /// `offset`, without a copy (module docs). The caller must have written
    /// there bytes it verified against `hash`; every later read re-checks
    /// them. Idempotent like [`ChunkStore::put`]: `Ok(false)` if the chunk
    /// was already stored.
    pub fn put_ref(
        &self,
        hash: &Hash,
        len: u32,
        file: &Arc<ExtFile>,
        offset: u64,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().expect("writer lock");
        if self.contains(hash) {
            return Ok(false);
        }
        if w.len >= PACK_LIMIT {
            self.rotate(&mut w)?;
        }
        let rel = |p: &Path| p.strip_prefix(&self.base).unwrap_or(p).to_path_buf();
        let record = ref_record(hash, len, offset, &rel(&file.path), &rel(&file.staged));
        let path = self.dir.join(pack_name(w.pack));
        let mut written = (&*w.file).write_all(&record);
        let n = record.len() as u64;
        if written.is_ok() && self.fsync {
            w.unsynced += n;
            if w.unsynced >= SYNC_BATCH {
                written = w.file.sync_data();
                if written.is_ok() {
                    w.unsynced = 0;
                }
            }
        }
        if let Err(e) = written {
            let _ = w.file.set_len(w.len);
            return Err(io("write", &path)(e));
        }
        w.len += n;
        self.index.write().expect("index lock").insert(
            *hash,
            Loc {
                src: Src::File(file.clone()),
                offset,
                len,
            },
        );
        Ok(true)
    }

    /// Forgets every chunk kept in `file` (it is about to be removed); they
    /// count as missing from now on. Returns how many.
    pub fn forget_file(&self, file: &ExtFile) -> usize {
        let mut idx = self.index.write().expect("index lock");
        let before = idx.len();
        idx.retain(|_, l| !matches!(&l.src, Src::File(f) if **f == *file));
        before - idx.len()
    }

    /// Before the staging folder `dir` is removed: copies into a pack every
    /// chunk kept in a file staged under `dir` whose final file does not
    /// exist (a version that never completed), so a later version that
    /// shares them does not fetch them again. Returns how many.
    pub fn adopt_staged_under(&self, dir: &Path) -> Result<usize, StoreError> {
        let exts: Vec<Arc<ExtFile>> = {
            let idx = self.index.read().expect("index lock");
            let mut v: Vec<Arc<ExtFile>> = Vec::new();
            for l in idx.values() {
                if let Src::File(f) = &l.src
                    && f.staged.starts_with(dir)
                    && !v.iter().any(|e| Arc::ptr_eq(e, f))
                {
                    v.push(f.clone());
                }
            }
            v
        };
        let mut n = 0;
        for f in exts {
            if !f.path.exists() {
                n += self.adopt_file(&f)?;
            }
        }
        Ok(n)
    }

    /// Copies every chunk kept in `file` into a pack (checked on the way),
    /// so the file can be removed without losing them; chunks that fail
    /// their check are dropped. Returns how many were copied.
    pub fn adopt_file(&self, file: &Arc<ExtFile>) -> Result<usize, StoreError> {
        let held: Vec<Hash> = self
            .index
            .read()
            .expect("index lock")
            .iter()
            .filter(|(_, l)| matches!(&l.src, Src::File(f) if **f == **file))
            .map(|(h, _)| *h)
            .collect();
        let mut copied = 0;
        for hash in held {
            let Ok(Some(data)) = self.get(&hash) else {
                continue;
            };
            self.index.write().expect("index lock").remove(&hash);
            self.put(&hash, &data)?;
            copied += 1;
        }
        Ok(copied)
    }

    #[cfg(test)]
    fn damage(&self, hash: &Hash) {
        let loc = self.index.read().unwrap()[hash].clone();
        let Src::Pack(pack) = loc.src else {
            panic!("not in a pack")
        };
        // Not through the append-mode handle: pwrite on O_APPEND appends.
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join(pack_name(pack)))
            .unwrap();
        file.write_all_at(&[0xAA; 8], loc.offset).unwrap();
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
        let b = vec![9u8; 70_000];
        s.put(&Hash::of(&b), &b).unwrap();
        assert_eq!(s.get(&h).unwrap().unwrap(), a);
        drop(s);
        let s = ChunkStore::open(dir.path(), true).unwrap();
        assert!(s.contains(&h));
        assert_eq!(s.stats(), (2, (a.len() + b.len()) as u64));
        assert_eq!(s.get(&Hash::of(&b)).unwrap().unwrap(), b);
        // Appends after reopen land after the existing records.
        let c = b"third".to_vec();
        s.put(&Hash::of(&c), &c).unwrap();
        assert_eq!(s.get(&h).unwrap().unwrap(), a);
        assert_eq!(read_all(dir.path()).unwrap().len(), 3);
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
    fn puts_are_synced_in_batches_and_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), true).unwrap();
        let a = vec![5u8; 1 << 20];
        assert!(s.put(&Hash::of(&a), &a).unwrap());
        // Visible at once, durable later: one chunk is far below a batch.
        assert_eq!(s.unsynced(), HEADER + (1 << 20));
        assert_eq!(s.get(&Hash::of(&a)).unwrap().unwrap(), a);
        s.sync().unwrap();
        assert_eq!(s.unsynced(), 0);
        // A batch's worth of appends syncs by itself.
        let n = SYNC_BATCH / (1 << 20);
        for i in 0..=n {
            let c = vec![i as u8 ^ 0x5A; (1 << 20) + 1];
            s.put(&Hash::of(&c), &c).unwrap();
        }
        assert!(s.unsynced() < SYNC_BATCH, "{} bytes unsynced", s.unsynced());
        assert!(s.unsynced() > 0);
        // Without fsync nothing counts as pending.
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = ChunkStore::open(dir2.path(), false).unwrap();
        s2.put(&Hash::of(&a), &a).unwrap();
        assert_eq!(s2.unsynced(), 0);
        s2.sync().unwrap();
        assert_eq!(ChunkStore::open(dir2.path(), false).unwrap().stats().0, 1);
    }

    #[test]
    fn references_follow_the_file_and_adoption_copies_into_a_pack() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(".syncnode");
        let s = ChunkStore::open(&root, false).unwrap();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (staged, fin) = (dir.path().join("st/f"), dir.path().join("v/f"));
        fs::create_dir_all(staged.parent().unwrap()).unwrap();
        fs::write(&staged, &bytes).unwrap();
        let ext = Arc::new(ExtFile {
            path: fin.clone(),
            staged: staged.clone(),
        });
        let (a, b) = (&bytes[..4000], &bytes[4000..]);
        assert!(s.put_ref(&Hash::of(a), 4000, &ext, 0).unwrap());
        assert!(!s.put_ref(&Hash::of(a), 4000, &ext, 0).unwrap());
        assert!(s.put_ref(&Hash::of(b), 6000, &ext, 4000).unwrap());
        assert_eq!(s.get(&Hash::of(b)).unwrap().unwrap(), b);
        // Materialized: the file moves to its final path; a reopen finds it.
        drop(s);
        fs::create_dir_all(fin.parent().unwrap()).unwrap();
        fs::rename(&staged, &fin).unwrap();
        let s = ChunkStore::open(&root, false).unwrap();
        assert_eq!(s.get(&Hash::of(a)).unwrap().unwrap(), a);
        // Adopted into a pack, the chunks outlive the file.
        assert_eq!(s.adopt_file(&ext).unwrap(), 2);
        fs::remove_file(&fin).unwrap();
        assert_eq!(s.get(&Hash::of(b)).unwrap().unwrap(), b);
        drop(s);
        let s = ChunkStore::open(&root, false).unwrap();
        assert_eq!(s.get(&Hash::of(a)).unwrap().unwrap(), a);
        // A reference whose file is gone is not indexed at open.
        let gone = Arc::new(ExtFile {
            path: dir.path().join("nowhere/f"),
            staged: dir.path().join("nowhere2/f"),
        });
        let c = vec![7u8; 100];
        fs::create_dir_all(dir.path().join("nowhere")).unwrap();
        fs::write(dir.path().join("nowhere/f"), &c).unwrap();
        s.put_ref(&Hash::of(&c), 100, &gone, 0).unwrap();
        assert!(s.contains(&Hash::of(&c)));
        assert_eq!(s.forget_file(&gone), 1);
        s.put_ref(&Hash::of(&c), 100, &gone, 0).unwrap();
        drop(s);
        fs::remove_file(dir.path().join("nowhere/f")).unwrap();
        let s = ChunkStore::open(&root, false).unwrap();
        assert!(!s.contains(&Hash::of(&c)));
        assert_eq!(s.stats().0, 2);
    }

    #[test]
    fn torn_record_is_cut_off_and_never_visible() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), false).unwrap();
        let whole = vec![1u8; 5000];
        s.put(&Hash::of(&whole), &whole).unwrap();
        drop(s);
        // A crash mid-append leaves a header and part of the data.
        let torn = vec![2u8; 5000];
        let th = Hash::of(&torn);
        let pack = dir.path().join("packs").join(pack_name(1));
        let mut f = fs::OpenOptions::new().append(true).open(&pack).unwrap();
        f.write_all(MAGIC).unwrap();
        f.write_all(&5000u32.to_le_bytes()).unwrap();
        f.write_all(&th.0).unwrap();
        f.write_all(&torn[..1000]).unwrap();
        drop(f);
        let s = ChunkStore::open(dir.path(), false).unwrap();
        assert!(!s.contains(&th));
        assert!(s.contains(&Hash::of(&whole)));
        assert_eq!(fs::metadata(&pack).unwrap().len(), HEADER + 5000);
        // And the store keeps working after the cut.
        assert!(s.put(&th, &torn).unwrap());
        drop(s);
        let s = ChunkStore::open(dir.path(), false).unwrap();
        assert_eq!(s.get(&th).unwrap().unwrap(), torn);
    }

    #[test]
    fn damaged_chunk_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path(), false).unwrap();
        let data = vec![7u8; 1000];
        let h = Hash::of(&data);
        s.put(&h, &data).unwrap();
        s.damage(&h);
        assert!(matches!(s.get(&h), Err(StoreError::Corrupt(_))));
        assert!(!s.contains(&h));
        assert!(s.get(&h).unwrap().is_none());
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
