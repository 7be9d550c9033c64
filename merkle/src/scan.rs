//! A structural pre-scan of an encoded manifest body, run before postcard
//! decodes it: it walks the varints and lengths without allocating and
//! refuses counts that break the limits ([`MAX_FILES`], [`MAX_CHUNKS`]) or
//! that claim more entries than the remaining bytes could hold. So a manifest
//! that claims billions of files or chunks is refused at once with an error
//! naming the count, and the decode that follows allocates in proportion to
//! the input.

use crate::manifest::{MAX_CHUNKS, MAX_FILES, ManifestError};

/// Fewest bytes one encoded `FileEntry` takes: path length (1), path (0),
/// mode (1), size (1), SHA-256 (32), chunk count (1).
pub const MIN_FILE_ENTRY_BYTES: u64 = 36;
/// Fewest bytes one encoded `ChunkRef` takes: hash (32), length (1).
pub const MIN_CHUNK_REF_BYTES: u64 = 33;

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn truncated(&self, what: &str) -> ManifestError {
        ManifestError::Decode(format!("truncated manifest: it ends inside {what}"))
    }

    /// A postcard varint (at most 10 bytes, non-minimal forms accepted).
    fn varint(&mut self, what: &str) -> Result<u64, ManifestError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .rest
                .split_first()
                .ok_or_else(|| self.truncated(what))?;
            self.rest = rest;
            value |= u64::from(b & 0x7f).checked_shl(7 * i).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ManifestError::Decode(format!(
            "{what}: varint longer than 10 bytes"
        )))
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<&'a [u8], ManifestError> {
        let n = usize::try_from(n).map_err(|_| self.truncated(what))?;
        if n > self.rest.len() {
            return Err(self.truncated(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], ManifestError> {
        let len = self.varint(what)?;
        self.skip(len, what)
    }

    /// Refuses `count` entries of at least `min` bytes each when fewer bytes remain.
    fn room_for(&self, what: String, count: u64, min: u64) -> Result<(), ManifestError> {
        let need = count.saturating_mul(min);
        if need > self.rest.len() as u64 {
            return Err(ManifestError::CountExceedsInput {
                what,
                count,
                need,
                have: self.rest.len(),
            });
        }
        Ok(())
    }
}

/// Checks the counts of an encoded manifest body (after magic and format
/// version) before it is decoded.
pub fn prescan(body: &[u8]) -> Result<(), ManifestError> {
    let mut c = Cursor { rest: body };
    c.string("the channel name")?;
    c.string("the version name")?;
    for what in [
        "created_unix",
        "chunker.min_size",
        "chunker.avg_size",
        "chunker.max_size",
    ] {
        c.varint(what)?;
    }
    let files = c.varint("the file count")?;
    if files > MAX_FILES as u64 {
        return Err(ManifestError::TooManyFiles {
            count: usize::try_from(files).unwrap_or(usize::MAX),
        });
    }
    c.room_for("files".into(), files, MIN_FILE_ENTRY_BYTES)?;
    let mut total = 0u64;
    for _ in 0..files {
        let path = c.string("a file path")?;
        c.varint("a file mode")?;
        c.varint("a file size")?;
        c.skip(32, "a file SHA-256")?;
        let chunks = c.varint("a chunk count")?;
        total = total.saturating_add(chunks);
        if total > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks { count: total });
        }
        let name = String::from_utf8_lossy(&path[..path.len().min(256)]);
        c.room_for(format!("chunks of {name:?}"), chunks, MIN_CHUNK_REF_BYTES)?;
        for _ in 0..chunks {
            c.skip(32, "a chunk hash")?;
            c.varint("a chunk length")?;
        }
    }
    Ok(())
}
