//! BLAKE3 digests ([`Hash`](struct@Hash)) and SHA-256 ([`sha256`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// A BLAKE3 digest: a chunk hash, a file root or a version root.
///
/// `Display` (and [`Hash::to_hex`]) prints the full lowercase hex form;
/// `Debug` prints only the first 12 hex characters, e.g. `Hash(3fa1c0d2e4b5...)`.
/// Postcard encodes it as its 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

/// Error from [`Hash::from_hex`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseHashError {
    /// The string is not 64 characters long.
    #[error("hash hex must be 64 characters, got {0}")]
    InvalidLength(usize),
    /// The string holds a character that is not a hex digit.
    #[error("hash hex holds a non-hex character")]
    InvalidHex,
}

impl Hash {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// Full lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Hash, ParseHashError> {
        if s.len() != 64 {
            return Err(ParseHashError::InvalidLength(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseHashError::InvalidHex)?;
        Ok(Hash(out))
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Hash {
        Hash(*h.as_bytes())
    }
}

impl FromStr for Hash {
    type Err = ParseHashError;
    fn from_str(s: &str) -> Result<Hash, ParseHashError> {
        Hash::from_hex(s)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}...)", &hex::encode(&self.0[..6]))
    }
}

/// SHA-256 of `data` (the per-file digest that model hubs publish).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_formats() {
        let h = Hash::of(b"abc");
        // Known BLAKE3("abc").
        assert_eq!(
            h.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(Hash::from_hex(&h.to_hex()), Ok(h));
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), Ok(h));
        assert_eq!(format!("{h}"), h.to_hex());
        assert_eq!(format!("{h:?}"), "Hash(6437b3ac3846...)");
        assert_eq!(Hash::from_hex("abc"), Err(ParseHashError::InvalidLength(3)));
        assert_eq!(
            Hash::from_hex(&"zz".repeat(32)),
            Err(ParseHashError::InvalidHex)
        );
        // Multi-byte UTF-8 of byte length 64 must not panic.
        assert!(Hash::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
