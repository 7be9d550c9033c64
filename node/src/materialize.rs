//! Materialization: rebuilding a version's files from verified chunks into
//! `<data_dir>/<channel>/<version>/` and switching `<data_dir>/<channel>/current`.
//!
//! Files are written into a fresh staging folder `<channel>/.staging-…`; every
//! chunk is re-verified (BLAKE3) as it is read from the store, every file's
//! SHA-256 is checked against the manifest and the file fsynced; only then is
//! the staging folder renamed to `<version>` and `current` (a relative symlink)
//! replaced by `rename(2)` of a new symlink, which is atomic. On any error the
//! staging folder is removed and `current` is left as it was.
//!
//! **Staged while fetching, written once.** The daemon opens a [`Stager`]
//! when it starts fetching a version: the staging folder
//! `<channel>/.staging-<version>-<root>` and its (sparse) files are created at
//! once, and every chunk is verified and written at its offsets as soon as it
//! arrives ([`Stager::store_chunk`]), on a blocking thread. The chunk store
//! keeps a reference to the chunk's first place in the version's files
//! instead of a second copy in a pack (`crate::store`, "Chunks kept in a
//! version's files"). Materialization then only fills in the chunks that were
//! not staged (held from an earlier version, rebuilt from parity, or a staged
//! write that failed) from the store, reads each file back for its SHA-256
//! and fsyncs it (up to four files at once: the read-back is CPU-bound, and
//! a checkpoint is usually many shard files), and renames. Without staging the whole version was read back from
//! the store, re-hashed and written at the end, which on the fan-out
//! benchmark's 1 GiB case was 18 s of tail after every chunk was held
//! (`docs/performance.md`); with staging but a copy in the packs too, every
//! byte was written twice. A stager that is dropped (the process stops or is
//! killed, a newer version superseded it) leaves its folder: the next stager
//! of the same root, in this process or the next, takes it over with the
//! chunks in it. [`Stager::discard`] removes one for good (a fetch failed on a
//! full disk); staging folders no stager uses are removed when a stager is
//! created or a version materialized in the channel.
//!
//! Every path stays inside `data_dir` (rules in `docs/manifest.md` and the
//! "Security" section of `docs/operations.md`): the manifest is validated
//! again here, each file path is joined component by component
//! ([`confined_join`]), the channel folder must be a real folder (not a
//! symlink), `current` must be a symlink or absent, a `<version>` symlink is
//! replaced rather than followed, and files are created with `O_NOFOLLOW`.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use merkle::{Hash, Manifest};
use sha2::Digest;

use crate::store::{ChunkStore, ExtFile, StoreError};
use std::sync::Arc;

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
    /// The manifest breaks a validation rule (names, paths, sizes).
    #[error("refusing to materialize: {0}")]
    InvalidManifest(#[from] merkle::ManifestError),
    /// A manifest path would leave the version folder.
    #[error("refusing to materialize {path:?}: {reason}")]
    UnsafePath {
        /// The manifest path.
        path: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Something in `data_dir` that syncnode must not follow or replace.
    #[error("refusing to materialize into {path}: {reason}", path = path.display())]
    UnsafeTarget {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: &'static str,
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

/// Joins a manifest path under `base`, one checked component at a time: every
/// component must be a plain name (not empty, `.` or `..`, no NUL or
/// backslash), so the result always lies inside `base`. This repeats the
/// manifest's own validation on purpose: it is what the file system sees.
pub fn confined_join(base: &Path, path: &str) -> Result<PathBuf, MaterializeError> {
    let bad = |reason| MaterializeError::UnsafePath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute path"));
    }
    let mut out = base.to_path_buf();
    for c in path.split('/') {
        match c {
            "" => return Err(bad("empty component")),
            "." | ".." => return Err(bad("'.' or '..' component")),
            c if c.contains('\0') || c.contains('\\') => {
                return Err(bad("NUL or backslash in a component"));
            }
            c if c.len() > merkle::MAX_COMPONENT_LEN => {
                return Err(bad("component longer than 255 bytes"));
            }
            c => {
                let mut parts = Path::new(c).components();
                if !matches!(
                    (parts.next(), parts.next()),
                    (Some(std::path::Component::Normal(_)), None)
                ) {
                    return Err(bad("component is not a plain name"));
                }
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Refuses a symlink (or anything but a folder) at `dir`, which syncnode
/// creates itself; absent is fine.
fn check_real_dir(dir: &Path) -> Result<(), MaterializeError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(MaterializeError::UnsafeTarget {
            path: dir.to_owned(),
            reason: "the channel folder is a symlink; syncnode does not follow symlinks inside \
                     data_dir (point data_dir itself elsewhere instead, or remove the link)",
        }),
        Ok(m) if !m.is_dir() => Err(MaterializeError::UnsafeTarget {
            path: dir.to_owned(),
            reason: "not a folder; move it out of data_dir",
        }),
        _ => Ok(()),
    }
}

/// Refuses a `current` that is not a symlink (a folder or file an operator
/// put there would otherwise be replaced or block the switch).
fn check_current(channel_dir: &Path) -> Result<(), MaterializeError> {
    let current = channel_dir.join("current");
    match fs::symlink_metadata(&current) {
        Ok(m) if !m.file_type().is_symlink() => Err(MaterializeError::UnsafeTarget {
            path: current,
            reason: "`current` is not a symlink; syncnode will not replace it (move it away)",
        }),
        _ => Ok(()),
    }
}

/// Whether `<channel>/<version>` already holds exactly this root.
pub fn is_materialized(data_dir: &Path, manifest: &Manifest, root: &Hash) -> bool {
    let channel_dir = data_dir.join(&manifest.channel);
    fs::symlink_metadata(channel_dir.join(&manifest.version)).is_ok_and(|m| m.is_dir())
        && fs::read_to_string(record_path(&channel_dir, &manifest.version))
            .is_ok_and(|s| s.trim() == root.to_hex())
}

/// The version `current` points at, if any.
pub fn current_version(data_dir: &Path, channel: &str) -> Option<String> {
    let target = fs::read_link(data_dir.join(channel).join("current")).ok()?;
    target.to_str().map(str::to_owned)
}

/// Staging folders in use in this process (by a [`Stager`] or a build from
/// the store): [`remove_stale_staging`] leaves them alone.
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Registers a staging folder as in use until dropped.
struct Live(PathBuf);

impl Live {
    fn new(p: &Path) -> Live {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.to_path_buf());
        Live(p.to_path_buf())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = live.iter().position(|p| *p == self.0) {
            live.swap_remove(i);
        }
    }
}

/// A version's staging folder, filled while its chunks arrive (module docs).
pub struct Stager {
    staging: PathBuf,
    /// Each file's final and staged path, as the chunk store references it.
    exts: Vec<Arc<ExtFile>>,
    _live: Live,
    /// The files, opened for each write (a version may have more files
    /// than a process may keep open).
    files: Vec<PathBuf>,
    /// Chunk hash → (file index, offset) of every place it goes, and
    /// whether it was written there.
    places: HashMap<Hash, (Vec<(u32, u64)>, AtomicBool)>,
    /// Set (under the write lock) once materialization takes the folder
    /// over: later writes (late endgame duplicates) are dropped.
    closed: RwLock<bool>,
    /// Start the disk writeback of every chunk written ([`Stager::with_writeback`]).
    writeback: bool,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("staging", &self.staging)
            .field("files", &self.files.len())
            .finish()
    }
}

/// Versions with more files than this are not staged (creating them all
/// would hold up the daemon's event loop); they are built at the end.
pub const STAGE_MAX_FILES: usize = 4096;

impl Stager {
    /// Creates the staging folder of `manifest` under `data_dir` with every
    /// file at its final size (sparse) and every folder (staged writes are
    /// not synced one by one: materialization fsyncs every file before the
    /// rename; fdatasync per chunk measured no faster). `Ok(None)` for a
    /// version of more than [`STAGE_MAX_FILES`] files.
    ///
    /// The folder is named after the version and its root, so a daemon
    /// restarted after a kill takes over the folder its predecessor left
    /// (the chunk store references the chunks written there) instead of
    /// fetching them again. A folder left by a dropped stager is kept for
    /// that reason; [`Stager::discard`] removes one for good.
    pub fn create(
        data_dir: &Path,
        manifest: &Manifest,
        store: &ChunkStore,
    ) -> Result<Option<Stager>, MaterializeError> {
        if manifest.files.len() > STAGE_MAX_FILES {
            return Ok(None);
        }
        manifest.validate()?;
        let channel_dir = confined_join(data_dir, &manifest.channel)?;
        check_real_dir(&channel_dir)?;
        fs::create_dir_all(&channel_dir).map_err(io("create", &channel_dir))?;
        check_real_dir(&channel_dir)?;
        let root = manifest.root().to_hex();
        let staging = channel_dir.join(format!(".staging-{}-{}", manifest.version, &root[..16]));
        let final_dir = confined_join(&channel_dir, &manifest.version)?;
        if LIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&staging)
        {
            // Another stager of this process has the version: build at the end.
            return Ok(None);
        }
        let live = Live::new(&staging);
        remove_stale_staging(&channel_dir, store);
        // Take over a folder left by an earlier process only if it is a real
        // folder (not a link) whose files are all regular files.
        let reuse = match fs::symlink_metadata(&staging) {
            Ok(md) if md.is_dir() => true,
            Ok(_) => {
                fs::remove_file(&staging).map_err(io("remove", &staging))?;
                false
            }
            Err(_) => false,
        };
        if !reuse {
            fs::create_dir(&staging).map_err(io("create", &staging))?;
        }
        let mut stager = Stager {
            staging,
            exts: Vec::with_capacity(manifest.files.len()),
            _live: live,
            files: Vec::with_capacity(manifest.files.len()),
            places: HashMap::new(),
            closed: RwLock::new(false),
            writeback: false,
        };
        for (i, file) in manifest.files.iter().enumerate() {
            let path = confined_join(&stager.staging, &file.path)?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            let out = if reuse {
                match fs::symlink_metadata(&path) {
                    Ok(md) if md.is_file() => open_nofollow(&path)?,
                    Ok(_) => {
                        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                        create_new_nofollow(&path)?
                    }
                    Err(_) => create_new_nofollow(&path)?,
                }
            } else {
                create_new_nofollow(&path)?
            };
            out.set_len(file.size).map_err(io("size", &path))?;
            stager.exts.push(Arc::new(ExtFile {
                path: confined_join(&final_dir, &file.path)?,
                staged: path.clone(),
            }));
            stager.files.push(path);
            let mut off = 0u64;
            for c in &file.chunks {
                stager
                    .places
                    .entry(c.hash)
                    .or_insert_with(|| (Vec::new(), AtomicBool::new(false)))
                    .0
                    .push((i as u32, off));
                off += u64::from(c.len);
            }
        }
        Ok(Some(stager))
    }

    /// Stores a chunk that arrived for this version: checks `data` against
    /// `hash`, writes it at every place the version has it and records it in
    /// `store` as kept there (one write, no copy in a pack; `store.rs`). A
    /// chunk the version does not hold (a parity piece), one already
    /// written, or one that cannot be staged goes to a pack instead.
    pub fn store_chunk(
        &self,
        store: &ChunkStore,
        hash: &Hash,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let actual = Hash::of(data);
        if actual != *hash {
            return Err(StoreError::HashMismatch {
                expected: *hash,
                actual,
            });
        }
        match self.write_chunk(hash, data) {
            Ok(Some((file, off))) => {
                store.put_ref(hash, data.len() as u32, &self.exts[file as usize], off)
            }
            Ok(None) => store.put(hash, data),
            Err(e) => {
                tracing::warn!(chunk = %hash, error = %e,
                    "cannot stage chunk; it goes to a pack and is written from there at the end");
                store.put(hash, data)
            }
        }
    }

    /// With `on`, every chunk written starts its disk writeback at once
    /// ([`crate::sys::start_writeback`]): for daemons that fsync a version
    /// before it becomes `current`, so that fsync finds little left to do.
    pub fn with_writeback(mut self, on: bool) -> Self {
        self.writeback = on;
        self
    }

    /// Removes the staging folder for good (a failed fetch on a full disk):
    /// the chunk store forgets the chunks kept in it, which count as missing.
    pub fn discard(&self, store: &ChunkStore) {
        for ext in &self.exts {
            store.forget_file(ext);
        }
        self.close();
        let _ = fs::remove_dir_all(&self.staging);
    }

    /// The staging folder.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Writes a chunk at every place the version has it; returns the first
    /// place (file index, offset), or `None` if nothing was written: a chunk
    /// the version does not contain (a parity piece), one already written,
    /// or any write once materialization has started. Call it only with
    /// bytes verified against `hash` ([`Stager::store_chunk`] checks them).
    pub fn write_chunk(
        &self,
        hash: &Hash,
        data: &[u8],
    ) -> Result<Option<(u32, u64)>, MaterializeError> {
        let Some((places, written)) = self.places.get(hash) else {
            return Ok(None);
        };
        let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed || written.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut open: Option<(u32, fs::File)> = None;
        for &(file, off) in places {
            if open.as_ref().is_none_or(|(i, _)| *i != file) {
                open = Some((file, open_nofollow(&self.files[file as usize])?));
            }
            let (_, f) = open.as_ref().expect("just opened");
            f.write_all_at(data, off)
                .map_err(io("write", &self.files[file as usize]))?;
            if self.writeback {
                // A hint: a failure here shows up in the final fsync if it matters.
                let _ = crate::sys::start_writeback(f, off, data.len() as u64);
            }
        }
        written.store(true, Ordering::Release);
        Ok(places.first().copied())
    }

    fn close(&self) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = true;
    }
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
    materialize_staged(data_dir, manifest, root, store, fsync, pause, None)
}

/// [`materialize_paced`] finishing what `stager` (made for this manifest
/// under this `data_dir`) has staged; without one, the version is built
/// from the store alone. The stager's folder becomes the version folder,
/// or is removed on error.
pub fn materialize_staged(
    data_dir: &Path,
    manifest: &Manifest,
    root: &Hash,
    store: &ChunkStore,
    fsync: bool,
    pause: Duration,
    stager: Option<&Stager>,
) -> Result<PathBuf, MaterializeError> {
    if let Some(st) = stager {
        st.close();
    }
    manifest.validate()?;
    let channel_dir = confined_join(data_dir, &manifest.channel)?;
    let final_dir = confined_join(&channel_dir, &manifest.version)?;
    check_real_dir(&channel_dir)?;
    fs::create_dir_all(&channel_dir).map_err(io("create", &channel_dir))?;
    check_real_dir(&channel_dir)?;
    check_current(&channel_dir)?;
    remove_stale_staging(&channel_dir, store);
    if !is_materialized(data_dir, manifest, root) {
        let (staging, _live) = match stager {
            Some(st) => (st.staging.clone(), None),
            None => {
                let staging = channel_dir.join(format!(
                    ".staging-{}-{}-{}",
                    manifest.version,
                    std::process::id(),
                    unique()
                ));
                let live = Live::new(&staging);
                fs::create_dir(&staging).map_err(io("create", &staging))?;
                (staging, Some(live))
            }
        };
        let built = match stager {
            Some(st) => finish_files(st, manifest, store, fsync, pause),
            None => write_files(&staging, manifest, store, fsync, pause),
        };
        // The store syncs in batches (`store.rs`, "Durability"): before the
        // version is recorded, every chunk it was built from is made durable too.
        let built = built.and_then(|()| Ok(store.sync()?));
        if let Err(e) = built {
            match stager {
                Some(st) => st.discard(store),
                None => {
                    let _ = fs::remove_dir_all(&staging);
                }
            }
            return Err(e);
        }
        let record = record_path(&channel_dir, &manifest.version);
        let _ = fs::remove_file(&record);
        if fs::symlink_metadata(&final_dir).is_ok() {
            // A folder of that name holding something else (an older attempt or
            // another root), or a symlink: move it aside (the link itself, never
            // its target), never mix content.
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

/// Removes staging folders no stager of this process uses: left by an
/// earlier process (killed mid-way, or for a root no longer wanted) or by a
/// build that failed. One daemon owns a data_dir. The chunks the store keeps
/// in such a folder are first copied into a pack
/// ([`ChunkStore::adopt_staged_under`]): a later version may share them.
fn remove_stale_staging(channel_dir: &Path, store: &ChunkStore) {
    let Ok(entries) = fs::read_dir(channel_dir) else {
        return;
    };
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with(".staging-") || name.starts_with(".old-")) && !live.contains(&e.path())
        {
            if let Err(err) = store.adopt_staged_under(&e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err,
                    "cannot keep the chunks of a stale staging folder; they will be fetched again");
            }
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
        let path = confined_join(staging, &file.path)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut out = create_new_nofollow(&path)?;
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

/// Completes a stager's files: writes the chunks it did not stage from the
/// store, then reads every file back for its SHA-256.
fn finish_files(
    st: &Stager,
    manifest: &Manifest,
    store: &ChunkStore,
    fsync: bool,
    pause: Duration,
) -> Result<(), MaterializeError> {
    // Files are independent: up to 4 at once, since reading a file back for
    // its SHA-256 is CPU-bound (one checkpoint is usually many shard files).
    // One at a time under the fault-injection pause, which tests use to kill
    // materialization between files.
    let n = manifest.files.len();
    let threads = if pause.is_zero() {
        std::thread::available_parallelism()
            .map_or(1, |c| c.get())
            .min(MATERIALIZE_THREADS)
            .min(n)
    } else {
        1
    };
    if threads <= 1 {
        let mut buf = vec![0u8; 1 << 20];
        for (i, file) in manifest.files.iter().enumerate() {
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            finish_file(st, i, file, store, fsync, &mut buf)?;
        }
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed: Mutex<Option<MaterializeError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                            break;
                        }
                        if let Err(e) =
                            finish_file(st, i, &manifest.files[i], store, fsync, &mut buf)
                        {
                            failed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
    }
    if fsync {
        sync_dir(&st.staging)?;
    }
    Ok(())
}

/// Most files [`finish_files`] finishes at once.
const MATERIALIZE_THREADS: usize = 4;

/// Fills in one staged file's missing chunks from the store, checks its
/// SHA-256 by reading it back, sets its mode and fsyncs it.
fn finish_file(
    st: &Stager,
    i: usize,
    file: &merkle::FileEntry,
    store: &ChunkStore,
    fsync: bool,
    buf: &mut [u8],
) -> Result<(), MaterializeError> {
    let path = &st.files[i];
    let out = open_nofollow(path)?;
    let mut off = 0u64;
    for c in &file.chunks {
        let staged = st
            .places
            .get(&c.hash)
            .is_some_and(|(_, w)| w.load(Ordering::Acquire));
        if !staged {
            let data = store
                .get(&c.hash)?
                .filter(|d| d.len() == c.len as usize)
                .ok_or_else(|| MaterializeError::MissingChunk {
                    path: file.path.clone(),
                    hash: c.hash,
                })?;
            out.write_all_at(&data, off).map_err(io("write", path))?;
        }
        off += u64::from(c.len);
    }
    let mut sha = sha2::Sha256::new();
    let mut rd = fs::File::open(path).map_err(io("read back", path))?;
    loop {
        let n = rd.read(buf).map_err(io("read back", path))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
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
        .map_err(io("chmod", path))?;
    if fsync {
        out.sync_all().map_err(io("fsync", path))?;
    }
    Ok(())
}

/// Opens a staged file for writing, never following a symlink.
fn open_nofollow(path: &Path) -> Result<fs::File, MaterializeError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("open", path))
}

/// Creates a file that must not exist yet, never following a symlink.
fn create_new_nofollow(path: &Path) -> Result<fs::File, MaterializeError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("create", path))
}

fn write_synced(path: &Path, data: &[u8], fsync: bool) -> Result<(), MaterializeError> {
    let _ = fs::remove_file(path);
    let mut f = create_new_nofollow(path)?;
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

    fn staging_dirs(dir: &Path) -> Vec<String> {
        fs::read_dir(dir.join("ch"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".staging-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn staged_chunks_plus_the_store_give_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        // A file that repeats itself (a chunk at several places), another
        // file, an empty one.
        let mut f1 = data(9_000, 3);
        f1.extend_from_within(..9_000);
        let f2 = data(7_000, 4);
        let m = manifest_for(
            &store,
            "v1",
            &[
                ("x/a.bin", f1.clone()),
                ("b.bin", f2.clone()),
                ("e", vec![]),
            ],
        );
        let root = m.root();
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        assert_eq!(staging_dirs(dir.path()).len(), 1);
        // Stage every other chunk of the first file only; the rest must come
        // from the store at the end.
        let a = m.files.iter().find(|f| f.path == "x/a.bin").unwrap();
        assert!(a.chunks.len() >= 4, "{} chunks", a.chunks.len());
        let mut off = 0usize;
        for (k, c) in a.chunks.iter().enumerate() {
            if k % 2 == 0 {
                st.write_chunk(&c.hash, &f1[off..off + c.len as usize])
                    .unwrap();
            }
            off += c.len as usize;
        }
        let out = materialize_staged(
            dir.path(),
            &m,
            &root,
            &store,
            true,
            Duration::ZERO,
            Some(&st),
        )
        .unwrap();
        assert_eq!(fs::read(out.join("x/a.bin")).unwrap(), f1);
        assert_eq!(fs::read(out.join("b.bin")).unwrap(), f2);
        assert_eq!(fs::read(out.join("e")).unwrap(), b"");
        assert_eq!(current_version(dir.path(), "ch").as_deref(), Some("v1"));
        // A late write (an endgame duplicate) after materialization is dropped,
        // and dropping the stager keeps the version folder.
        let b = m.files.iter().find(|f| f.path == "b.bin").unwrap();
        let c = &b.chunks[0];
        st.write_chunk(&c.hash, &vec![0xee; c.len as usize])
            .unwrap();
        drop(st);
        assert_eq!(fs::read(out.join("b.bin")).unwrap(), f2);
        assert!(staging_dirs(dir.path()).is_empty());
    }

    #[test]
    fn files_finished_at_once_are_all_checked() {
        // More files than `MATERIALIZE_THREADS`, all staged; one has a wrong
        // byte: its mismatch is reported whichever thread checks it, and
        // nothing becomes current. Then, staged right, all are correct.
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..9)
            .map(|k| (format!("shard-{k}.bin"), data(6_000 + 977 * k, k as u8)))
            .collect();
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
        let m = manifest_for(&store, "v1", &refs);
        let root = m.root();
        let stage = |st: &Stager, bad: Option<&str>| {
            for f in &m.files {
                let bytes = &files.iter().find(|(p, _)| *p == f.path).unwrap().1;
                let mut off = 0usize;
                for c in &f.chunks {
                    let mut b = bytes[off..off + c.len as usize].to_vec();
                    if Some(f.path.as_str()) == bad && off == 0 {
                        b[0] ^= 0x40;
                    }
                    st.write_chunk(&c.hash, &b).unwrap();
                    off += c.len as usize;
                }
            }
        };
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        stage(&st, Some("shard-6.bin"));
        let err = materialize_staged(
            dir.path(),
            &m,
            &root,
            &store,
            false,
            Duration::ZERO,
            Some(&st),
        )
        .unwrap_err();
        match err {
            MaterializeError::Sha256Mismatch { path, .. } => assert_eq!(path, "shard-6.bin"),
            other => panic!("expected a SHA-256 mismatch, got {other}"),
        }
        assert_eq!(current_version(dir.path(), "ch"), None);
        drop(st);
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        stage(&st, None);
        let out = materialize_staged(
            dir.path(),
            &m,
            &root,
            &store,
            true,
            Duration::ZERO,
            Some(&st),
        )
        .unwrap();
        for (p, d) in &files {
            assert_eq!(&fs::read(out.join(p)).unwrap(), d, "{p}");
        }
        assert_eq!(current_version(dir.path(), "ch").as_deref(), Some("v1"));
    }

    #[test]
    fn wrong_staged_bytes_fail_the_sha256_check_and_keep_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        let f1 = data(12_000, 5);
        let m = manifest_for(&store, "v1", &[("a.bin", f1)]);
        let root = m.root();
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        let c = &m.files[0].chunks[0];
        st.write_chunk(&c.hash, &vec![0u8; c.len as usize]).unwrap();
        let err = materialize_staged(
            dir.path(),
            &m,
            &root,
            &store,
            false,
            Duration::ZERO,
            Some(&st),
        )
        .unwrap_err();
        assert!(
            matches!(err, MaterializeError::Sha256Mismatch { .. }),
            "{err}"
        );
        assert_eq!(current_version(dir.path(), "ch"), None);
        assert!(!dir.path().join("ch/v1").exists());
        drop(st);
        assert!(staging_dirs(dir.path()).is_empty());
    }

    #[test]
    fn materializing_makes_the_store_durable_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join(".syncnode"), true).unwrap();
        let m = manifest_for(&store, "v1", &[("a.bin", data(20_000, 7))]);
        // The store syncs in 64 MiB batches: these chunks are not synced yet.
        assert!(store.unsynced() > 0);
        materialize_staged(
            dir.path(),
            &m,
            &m.root(),
            &store,
            true,
            Duration::ZERO,
            None,
        )
        .unwrap();
        assert_eq!(store.unsynced(), 0);
        assert!(is_materialized(dir.path(), &m, &m.root()));
    }

    /// The chunks of `files` (as given to `manifest_for`) in file order.
    fn chunks_of(m: &Manifest, files: &[(&str, Vec<u8>)]) -> Vec<(Hash, Vec<u8>)> {
        let mut out = Vec::new();
        for f in &m.files {
            let bytes = &files.iter().find(|(p, _)| *p == f.path).unwrap().1;
            let mut off = 0usize;
            for c in &f.chunks {
                out.push((c.hash, bytes[off..off + c.len as usize].to_vec()));
                off += c.len as usize;
            }
        }
        out
    }

    fn pack_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir.join(".syncnode/packs"))
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn staged_chunks_are_written_once_and_served_from_the_version_files() {
        let (dir, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = [("a.bin", data(30_000, 8)), ("sub/b.bin", data(20_000, 9))];
        let m = manifest_for(
            &ChunkStore::open(scratch.path(), false).unwrap(),
            "v1",
            &files,
        );
        let store = ChunkStore::open(&dir.path().join(".syncnode"), true).unwrap();
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        let chunks = chunks_of(&m, &files);
        for (h, b) in &chunks {
            st.store_chunk(&store, h, b).unwrap();
        }
        let e = st.store_chunk(&store, &chunks[0].0, b"junk").unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
        // No chunk's bytes went into a pack: only references of ~100 bytes.
        let packed = pack_bytes(dir.path());
        assert!(
            packed < 150 * chunks.len() as u64,
            "{packed} bytes in packs"
        );
        materialize_staged(
            dir.path(),
            &m,
            &m.root(),
            &store,
            true,
            Duration::ZERO,
            Some(&st),
        )
        .unwrap();
        drop(st);
        assert_eq!(
            fs::read(dir.path().join("ch/v1/a.bin")).unwrap(),
            files[0].1
        );
        assert_eq!(
            fs::read(dir.path().join("ch/v1/sub/b.bin")).unwrap(),
            files[1].1
        );
        // The version's files hold the chunks: served from there, after a
        // reopen of the store too (the staging folder is gone by now).
        for (h, b) in &chunks {
            assert_eq!(store.get(h).unwrap().as_ref(), Some(b));
        }
        drop(store);
        let store = ChunkStore::open(&dir.path().join(".syncnode"), true).unwrap();
        for (h, b) in &chunks {
            assert_eq!(store.get(h).unwrap().as_ref(), Some(b));
        }
        let distinct: std::collections::HashSet<_> = chunks.iter().map(|c| c.0).collect();
        assert_eq!(
            crate::store::read_all(&dir.path().join(".syncnode"))
                .unwrap()
                .len(),
            distinct.len()
        );
        // An edited file takes its chunk out of the store; it is never served.
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("ch/v1/a.bin"))
            .unwrap();
        f.write_all_at(b"edited", 0).unwrap();
        let first = m.files[0].chunks[0].hash;
        assert!(matches!(store.get(&first), Err(StoreError::Corrupt(_))));
        assert!(!store.contains(&first));
        assert!(store.contains(&m.files[1].chunks[0].hash));
    }

    #[test]
    fn a_restarted_daemon_takes_over_its_staging_folder() {
        let (dir, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = [("a.bin", data(40_000, 10))];
        let m = manifest_for(
            &ChunkStore::open(scratch.path(), false).unwrap(),
            "v1",
            &files,
        );
        let chunks = chunks_of(&m, &files);
        let half = chunks.len() / 2;
        {
            let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
            let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
            for (h, b) in &chunks[..half] {
                st.store_chunk(&store, h, b).unwrap();
            }
            // Killed here: the stager and the store go without a goodbye.
        }
        assert_eq!(staging_dirs(dir.path()).len(), 1);
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        for (h, _) in &chunks[..half] {
            assert!(store.contains(h), "a chunk staged before the kill was lost");
        }
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        assert_eq!(
            staging_dirs(dir.path()).len(),
            1,
            "the folder was taken over"
        );
        for (h, b) in &chunks[half..] {
            st.store_chunk(&store, h, b).unwrap();
        }
        materialize_staged(
            dir.path(),
            &m,
            &m.root(),
            &store,
            false,
            Duration::ZERO,
            Some(&st),
        )
        .unwrap();
        assert_eq!(
            fs::read(dir.path().join("ch/v1/a.bin")).unwrap(),
            files[0].1
        );
        assert!(staging_dirs(dir.path()).is_empty());
        for (h, b) in &chunks {
            assert_eq!(store.get(h).unwrap().as_ref(), Some(b));
        }
    }

    #[test]
    fn a_discarded_stager_takes_its_chunks_out_of_the_store() {
        let (dir, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = [("a.bin", data(5_000, 6))];
        let m = manifest_for(
            &ChunkStore::open(scratch.path(), false).unwrap(),
            "v1",
            &files,
        );
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        let st = Stager::create(dir.path(), &m, &store).unwrap().unwrap();
        assert_eq!(fs::metadata(st.path().join("a.bin")).unwrap().len(), 5_000);
        let chunks = chunks_of(&m, &files);
        for (h, b) in &chunks {
            st.store_chunk(&store, h, b).unwrap();
        }
        st.discard(&store);
        assert!(staging_dirs(dir.path()).is_empty());
        for (h, _) in &chunks {
            assert!(!store.contains(h));
        }
        drop(store);
        let store = ChunkStore::open(&dir.path().join(".syncnode"), false).unwrap();
        assert_eq!(store.stats().0, 0);
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
    fn confined_join_accepts_only_plain_components() {
        let base = Path::new("/data/ch/.staging-x");
        assert_eq!(
            confined_join(base, "a/b.bin").unwrap(),
            base.join("a").join("b.bin")
        );
        assert!(confined_join(base, &"n".repeat(255)).is_ok());
        for p in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/",
            "",
            "./a",
            "a/.",
            "a\0b",
            "a\\b",
            &"n".repeat(256),
        ] {
            let e = confined_join(base, p).unwrap_err();
            assert!(
                matches!(&e, MaterializeError::UnsafePath { path, .. } if path == p),
                "{p:?}: {e}"
            );
        }
    }

    /// A manifest that skipped validation (a bug elsewhere, or a hand-built
    /// one) is still refused, and nothing lands outside the version folder.
    #[test]
    fn unsafe_manifest_paths_are_refused_at_materialization() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let store = ChunkStore::open(&data_dir.join(".syncnode"), false).unwrap();
        for (paths, channel, version) in [
            (vec!["../../escape"], "ch", "v1"),
            (vec!["/tmp/abs"], "ch", "v1"),
            (vec!["a//b"], "ch", "v1"),
            (vec!["a", "a"], "ch", "v1"),
            (vec!["a", "a/b"], "ch", "v1"),
            (vec!["x"], "..", "v1"),
            (vec!["x"], "ch", "../../v1"),
            (vec!["x"], "ch", "current"),
            (vec!["x"], "a/b", "v1"),
        ] {
            let mut m = manifest_for(&store, "v1", &[("x", data(100, 1))]);
            let template = m.files[0].clone();
            m.files = paths
                .iter()
                .map(|p| FileEntry {
                    path: (*p).to_owned(),
                    ..template.clone()
                })
                .collect();
            m.channel = channel.into();
            m.version = version.into();
            let e = materialize(&data_dir, &m, &m.root(), &store, false).unwrap_err();
            assert!(
                matches!(e, MaterializeError::InvalidManifest(_)),
                "{paths:?} {channel}/{version}: {e}"
            );
        }
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["data"], "nothing may appear next to data_dir");
        assert!(!data_dir.join("ch").exists());
    }

    #[test]
    fn symlinks_in_the_target_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), b"mine").unwrap();
        let store = ChunkStore::open(&data_dir.join(".syncnode"), false).unwrap();
        let m = manifest_for(&store, "v1", &[("x", data(3000, 7))]);

        // A channel folder that is a symlink is refused.
        let link = data_dir.join("ch");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = materialize(&data_dir, &m, &m.root(), &store, false).unwrap_err();
        assert!(matches!(e, MaterializeError::UnsafeTarget { .. }), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
        fs::remove_file(&link).unwrap();

        // A `current` that is a real folder is refused and left alone.
        fs::create_dir_all(data_dir.join("ch/current")).unwrap();
        let e = materialize(&data_dir, &m, &m.root(), &store, false).unwrap_err();
        assert!(matches!(e, MaterializeError::UnsafeTarget { .. }), "{e}");
        assert!(data_dir.join("ch/current").is_dir());
        fs::remove_dir(data_dir.join("ch/current")).unwrap();

        // A `<version>` symlink and a root-record symlink are replaced, not followed.
        std::os::unix::fs::symlink(&outside, data_dir.join("ch/v1")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), data_dir.join("ch/.v1.root")).unwrap();
        let out = materialize(&data_dir, &m, &m.root(), &store, false).unwrap();
        assert!(!fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(out.join("x")).unwrap(), data(3000, 7));
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"mine");
        let mut names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["keep"], "nothing may be written through a symlink");
        assert_eq!(current_version(&data_dir, "ch").as_deref(), Some("v1"));
        assert!(is_materialized(&data_dir, &m, &m.root()));
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
