//! ed25519 signatures over version roots.
//!
//! The signed message is `b"syncnode-root-v1\0" || postcard((channel, version,
//! root, created_unix))`: channel and version as postcard strings (varint
//! length, UTF-8 bytes), the root as its 32 raw bytes, `created_unix` as a
//! varint. Which publisher keys are trusted is the node's decision.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::manifest::Manifest;

/// Context prefix of every signed-root message (NUL-terminated).
pub const SIGNED_ROOT_CONTEXT: &[u8] = b"syncnode-root-v1\0";

/// A version root signed by a publisher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoot {
    /// Channel name.
    pub channel: String,
    /// Version name.
    pub version: String,
    /// The version root ([`Manifest::root`]).
    pub root: Hash,
    /// Creation time chosen by the publisher, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The publisher's ed25519 public key.
    pub publisher: [u8; 32],
    /// ed25519 signature over [`SignedRoot::message`]; 64 bytes.
    pub signature: Vec<u8>,
}

/// A signed root that does not decode, verify or match.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature is not 64 bytes long.
    #[error("signature must be 64 bytes, got {0}")]
    BadLength(usize),
    /// The publisher key is not a valid ed25519 point.
    #[error("publisher key is not a valid ed25519 public key")]
    BadPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
    /// The encoding is malformed or has trailing bytes.
    #[error("signed root decode failed: {0}")]
    Decode(String),
    /// A verified signed root does not match the manifest.
    #[error("signed root does not match the manifest: {field} differs")]
    Mismatch {
        /// `"channel"`, `"version"`, `"created_unix"` or `"root"`.
        field: &'static str,
    },
}

/// The bytes a publisher signs for `(channel, version, root, created_unix)`.
pub fn signed_message(channel: &str, version: &str, root: &Hash, created_unix: u64) -> Vec<u8> {
    let out = SIGNED_ROOT_CONTEXT.to_vec();
    postcard::to_extend(&(channel, version, root, created_unix), out)
        .expect("postcard encoding into a Vec cannot fail")
}

impl SignedRoot {
    /// Signs `(channel, version, root, created_unix)` with `key`.
    pub fn sign(
        key: &SigningKey,
        channel: &str,
        version: &str,
        root: Hash,
        created_unix: u64,
    ) -> SignedRoot {
        let msg = signed_message(channel, version, &root, created_unix);
        SignedRoot {
            channel: channel.to_owned(),
            version: version.to_owned(),
            root,
            created_unix,
            publisher: key.verifying_key().to_bytes(),
            signature: key.sign(&msg).to_bytes().to_vec(),
        }
    }

    /// The signed message: `b"syncnode-root-v1\0" || postcard((channel, version, root, created_unix))`.
    pub fn message(&self) -> Vec<u8> {
        signed_message(&self.channel, &self.version, &self.root, self.created_unix)
    }

    /// Checks the signature length, the publisher key and the signature
    /// (strict ed25519 verification: no malleable signatures, no weak keys).
    /// Does not decide whether the publisher is trusted.
    pub fn verify(&self) -> Result<(), SignatureError> {
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::BadLength(self.signature.len()))?;
        let key =
            VerifyingKey::from_bytes(&self.publisher).map_err(|_| SignatureError::BadPublicKey)?;
        key.verify_strict(&self.message(), &Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::Invalid)
    }

    /// [`SignedRoot::verify`], then checks that `manifest` has this channel,
    /// version and creation time and that its recomputed [`Manifest::root`]
    /// equals [`SignedRoot::root`].
    pub fn verify_manifest(&self, manifest: &Manifest) -> Result<(), SignatureError> {
        self.verify()?;
        let field = if manifest.channel != self.channel {
            "channel"
        } else if manifest.version != self.version {
            "version"
        } else if manifest.created_unix != self.created_unix {
            "created_unix"
        } else if manifest.root() != self.root {
            "root"
        } else {
            return Ok(());
        };
        Err(SignatureError::Mismatch { field })
    }

    /// Postcard encoding of all fields in declaration order.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encoding into a Vec cannot fail")
    }

    /// Decodes [`SignedRoot::encode`] output; rejects trailing bytes. Does not
    /// verify. Never panics.
    pub fn decode(b: &[u8]) -> Result<SignedRoot, SignatureError> {
        let (s, rest): (SignedRoot, &[u8]) =
            postcard::take_from_bytes(b).map_err(|e| SignatureError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SignatureError::Decode(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn sign_verify_roundtrip() {
        let s = SignedRoot::sign(&key(), "chan", "v1", Hash::of(b"r"), 42);
        assert_eq!(s.verify(), Ok(()));
        assert_eq!(SignedRoot::decode(&s.encode()), Ok(s.clone()));
        let mut msg = b"syncnode-root-v1\0\x04chan\x02v1".to_vec();
        msg.extend_from_slice(&Hash::of(b"r").0);
        msg.push(42);
        assert_eq!(s.message(), msg);
    }

    #[test]
    fn tampering_is_detected() {
        let s = SignedRoot::sign(&key(), "chan", "v1", Hash::of(b"r"), 42);
        let mut t = s.clone();
        t.signature.pop();
        assert_eq!(t.verify(), Err(SignatureError::BadLength(63)));
        let mut t = s.clone();
        t.created_unix += 1;
        assert_eq!(t.verify(), Err(SignatureError::Invalid));
        let mut t = s.clone();
        t.publisher = SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert_eq!(t.verify(), Err(SignatureError::Invalid));
        let mut enc = s.encode();
        enc.push(0);
        assert!(matches!(
            SignedRoot::decode(&enc),
            Err(SignatureError::Decode(_))
        ));
    }
}
