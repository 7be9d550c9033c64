//! The syncnode content model. This crate is pure: it does no file or network
//! I/O and reads no clock or global random source.
//!
//! It owns:
//! - [`Hash`](struct@Hash): BLAKE3 digests for chunks, file roots and version roots, and
//!   [`sha256`] for whole files;
//! - the content-defined chunker ([`Chunker`], [`chunk_lengths`]): Gear hash,
//!   FastCDC-style normalized chunking;
//! - streaming per-file digests ([`FileChunker`] → [`ChunkedFile`]);
//! - Merkle trees and inclusion proofs ([`merkle_root`], [`merkle_proof`],
//!   [`Proof`]);
//! - CRC32C wire frames ([`encode_frame`], [`decode_frame`], ...);
//! - the versioned manifest format ([`Manifest`], [`FileEntry`]) with its
//!   validation rules;
//! - ed25519-signed version roots ([`SignedRoot`]);
//! - Reed-Solomon parity over stripes of chunks ([`erasure`]).
//!
//! The byte-exact formats are specified in `docs/manifest.md` of the
//! workspace. [`ed25519_dalek`] is re-exported so that every crate of the
//! workspace uses the same version.

pub mod chunker;
pub mod erasure;
pub mod file;
pub mod frame;
pub mod hash;
pub mod manifest;
mod scan;
pub mod signed;
pub mod tree;

pub use chunker::{Chunker, ChunkerConfig, ChunkerConfigError, GEAR, chunk_lengths};
pub use ed25519_dalek;
pub use erasure::{Erasure, ErasureConfig, ErasureError, Stripe};
pub use file::{ChunkRef, ChunkedFile, FileChunker};
pub use frame::{
    FRAME_HEADER_LEN, FrameError, check_frame_crc, check_frame_crc_parts, decode_frame,
    encode_frame, frame_header, frame_header_parts, parse_frame_header,
};
pub use hash::{Hash, ParseHashError, sha256};
pub use manifest::{
    FORMAT_VERSION, FORMAT_VERSION_ERASURE, FileEntry, MAGIC, MAX_CHUNKS, MAX_COMPONENT_LEN,
    MAX_FILES, MAX_NAME_LEN, MAX_PATH_LEN, Manifest, ManifestError, validate_name, validate_path,
};
pub use signed::{SIGNED_ROOT_CONTEXT, SignatureError, SignedRoot};
pub use tree::{
    EMPTY_TAG, FILE_LEAF_TAG, NODE_TAG, Proof, VERSION_TAG, empty_root, merkle_proof, merkle_root,
};
