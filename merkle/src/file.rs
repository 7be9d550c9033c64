//! Streaming per-file digest: chunk boundaries, a BLAKE3 per chunk and a
//! SHA-256 over the whole file, over any slicing of the input.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::chunker::{Chunker, ChunkerConfig, ChunkerConfigError};
use crate::hash::Hash;
use crate::tree::merkle_root;

/// One chunk of a file: its BLAKE3 and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes (the Merkle leaf).
    pub hash: Hash,
    /// Length in bytes, `1..=max_size`.
    pub len: u32,
}

/// Chunks a file fed in slices of any size, hashing as it goes without
/// buffering the data.
#[derive(Clone, Debug)]
pub struct FileChunker {
    chunker: Chunker,
    /// BLAKE3 over the current chunk's bytes so far.
    chunk_hasher: blake3::Hasher,
    /// SHA-256 over the whole file so far.
    file_hasher: sha2::Sha256,
    chunks: Vec<ChunkRef>,
    size: u64,
}

/// The result of chunking one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedFile {
    /// The chunks in file order; empty for an empty file.
    pub chunks: Vec<ChunkRef>,
    /// File size in bytes (the sum of the chunk lengths).
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
}

impl ChunkedFile {
    /// Merkle root of the chunk hashes (see [`merkle_root`]).
    pub fn root(&self) -> Hash {
        let leaves: Vec<Hash> = self.chunks.iter().map(|c| c.hash).collect();
        merkle_root(&leaves)
    }
}

impl FileChunker {
    /// A chunker at the start of a file.
    pub fn new(cfg: ChunkerConfig) -> Result<FileChunker, ChunkerConfigError> {
        Ok(FileChunker {
            chunker: Chunker::new(cfg)?,
            chunk_hasher: blake3::Hasher::new(),
            file_hasher: sha2::Sha256::new(),
            chunks: Vec::new(),
            size: 0,
        })
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) {
        self.file_hasher.update(data);
        self.update_chunks(data);
    }

    /// Like [`FileChunker::update`] but leaves out the SHA-256, for callers
    /// that only need chunk hashes (the SHA-256 in the result is then that of
    /// the bytes given to [`FileChunker::update`] only).
    pub fn update_chunks(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        let mut rest = data;
        loop {
            let before = self.chunker.pending();
            match self.chunker.find_cut(rest) {
                Some(n) => {
                    self.chunk_hasher.update(&rest[..n]);
                    let len = before + n as u64;
                    debug_assert!(len <= u64::from(self.chunker.config().max_size));
                    self.push_chunk(len as u32);
                    rest = &rest[n..];
                }
                None => {
                    self.chunk_hasher.update(rest);
                    return;
                }
            }
        }
    }

    /// Marks a natural boundary of the content at the current position (for
    /// example the edge between two large tensors of a safetensors file): the
    /// current chunk, if it holds any bytes, ends here and chunking restarts.
    /// Cutting at such boundaries keeps a rewritten tensor from dragging chunks
    /// of its unchanged neighbours into a delta. The caller picks which edges
    /// are worth it: each boundary can leave one chunk shorter than
    /// `min_size`, so mark edges between pieces of at least `min_size` bytes,
    /// not around tiny tensors. The result depends only on the content and the
    /// boundaries, never on how the input was sliced.
    pub fn boundary(&mut self) {
        let pending = self.chunker.pending();
        if pending > 0 {
            self.push_chunk(pending as u32);
            self.chunker.reset();
        }
    }

    fn push_chunk(&mut self, len: u32) {
        let hash = Hash::from(self.chunk_hasher.finalize());
        self.chunk_hasher.reset();
        self.chunks.push(ChunkRef { hash, len });
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Ends the file: the unfinished chunk, if any, becomes the last chunk.
    pub fn finish(mut self) -> ChunkedFile {
        let pending = self.chunker.pending();
        if pending > 0 {
            self.push_chunk(pending as u32);
        }
        ChunkedFile {
            chunks: self.chunks,
            size: self.size,
            sha256: self.file_hasher.finalize().into(),
        }
    }
}
