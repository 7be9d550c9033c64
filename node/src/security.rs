//! Who may talk to this node: the peer allowlist (`allowed_peers`), the
//! pre-shared private-network key (`private_network_key_file`) and the libp2p
//! transport that applies it, plus the log lines that explain a refused or
//! failed connection. The whole security model is described in
//! `docs/operations.md` ("Security").
//!
//! - The allowlist is enforced at the connection level by libp2p's
//!   `allow_block_list` behaviour: once the Noise handshake has authenticated
//!   the remote peer id, a connection to or from any other peer is closed
//!   before any protocol runs on it.
//! - The private-network key wraps every TCP connection in libp2p's `pnet`
//!   layer (XSalsa20 keyed by the shared key, the format and scheme of
//!   go-libp2p and IPFS private networks) below Noise: a node without the key
//!   cannot even complete the Noise handshake.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};

use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::pnet::PreSharedKey;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionDenied, DialError, ListenError};
use libp2p::{Multiaddr, PeerId, noise};

/// The first line of a private-network key file.
pub const PSK_HEADER: &str = "/key/swarm/psk/1.0.0/";

/// A problem with the private-network key or the transport built from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The key file could not be read.
    #[error(
        "cannot read private network key {}: {source} (create one with `syncnode keygen --psk --out {}` and copy it to every node)",
        path.display(),
        path.display()
    )]
    Read {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file is not in the `/key/swarm/psk/1.0.0/` format.
    #[error(
        "{} is not a private network key file: {reason}; expected the three lines `/key/swarm/psk/1.0.0/`, `/base16/` and 64 hex digits (create one with `syncnode keygen --psk --out FILE`)",
        path.display()
    )]
    Parse {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A new key file could not be written.
    #[error("cannot create {} (does it exist already?): {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The Noise configuration could not be built from the node identity.
    #[error("cannot set up Noise with the node identity: {0}")]
    Noise(#[from] noise::Error),
}

/// The Noise configuration of every connection: the standard libp2p Noise
/// XX handshake, with `Noise_XX_25519_AESGCM_SHA256` (protocol
/// `/syncnode/noise-aesgcm/1`, see `patches/libp2p-noise`) offered first
/// where this CPU has AES instructions ([`aes_gcm_in_hardware`]). Peers that
/// both offer it use AES-256-GCM; any other pair, or a plain libp2p peer,
/// negotiates the standard `/noise` (ChaCha20-Poly1305). Measured in
/// `docs/performance.md` ("Session of 2026-12-02 (4)").
pub fn noise_config(key: &libp2p::identity::Keypair) -> Result<noise::Config, noise::Error> {
    Ok(noise::Config::new(key)?.with_aes_gcm(aes_gcm_in_hardware()))
}

/// Whether AES-256-GCM is the faster transport cipher on this CPU: AES and
/// carry-less multiplication in hardware (x86-64: AES-NI and PCLMULQDQ;
/// AArch64: the AES and PMULL crypto extensions). Without them
/// ChaCha20-Poly1305, which needs neither, is faster and constant-time.
pub fn aes_gcm_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Reads a private-network key file (`/key/swarm/psk/1.0.0/`, `/base16/`,
/// 64 hex digits, one per line).
pub fn read_psk(path: &Path) -> Result<PreSharedKey, SecurityError> {
    // A key file is about 90 bytes; never read more than a few KiB of whatever
    // the path names (a device, a huge file).
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| io::Read::read_to_string(&mut io::Read::take(f, 4096), &mut text))
        .map_err(|source| SecurityError::Read {
            path: path.to_owned(),
            source,
        })?;
    parse_psk(&text).map_err(|reason| SecurityError::Parse {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the text of a private-network key file; the error says what is wrong.
///
/// This is our own parser on purpose: libp2p-pnet 0.27's `FromStr` panics
/// on a 64-byte key line holding a multi-byte character (it slices the line
/// two bytes at a time); found by the `config_parse` fuzz target, input kept
/// in `node/fuzz/regressions/`.
pub fn parse_psk(text: &str) -> Result<PreSharedKey, &'static str> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let (Some(kind), Some(encoding), Some(key)) = (lines.next(), lines.next(), lines.next()) else {
        return Err("it does not have three lines");
    };
    if kind != PSK_HEADER {
        return Err("the first line is not `/key/swarm/psk/1.0.0/`");
    }
    if encoding != "/base16/" {
        return Err("the second line is not `/base16/`");
    }
    let key = key.trim_end();
    if !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the key line holds a character that is not hex");
    }
    let bytes: [u8; 32] = hex::decode(key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the key line is not 64 hex digits")?;
    Ok(PreSharedKey::new(bytes))
}

/// Writes a new random private-network key to `path` (mode 0600, never
/// overwrites) and returns it.
pub fn write_psk(path: &Path) -> Result<PreSharedKey, SecurityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let key = PreSharedKey::new(bytes);
    let err = |source| SecurityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    io::Write::write_all(&mut f, key.to_key_file().as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(key)
}

/// The allowlist behaviour: off (any peer) when `peers` is empty.
pub fn allowlist(peers: &[PeerId]) -> Toggle<allow_block_list::Behaviour<AllowedPeers>> {
    if peers.is_empty() {
        return Toggle::from(None);
    }
    let mut b = allow_block_list::Behaviour::<AllowedPeers>::default();
    for p in peers {
        b.allow_peer(*p);
    }
    Toggle::from(Some(b))
}

/// Whether `allowed` (the `allowed_peers` list) lets `peer` connect.
pub fn is_allowed(allowed: &[PeerId], peer: &PeerId) -> bool {
    allowed.is_empty() || allowed.contains(peer)
}

/// How this node's connection security is set up, for the log lines below.
#[derive(Debug, Clone)]
pub struct Access {
    /// The `allowed_peers` list (empty: any peer).
    pub allowed: Vec<PeerId>,
    /// Fingerprint of the private-network key, if one is configured.
    pub psk_fingerprint: Option<String>,
}

impl Access {
    /// From the validated config.
    pub fn new(allowed: &[PeerId], psk: Option<&PreSharedKey>) -> Access {
        Access {
            allowed: allowed.to_vec(),
            psk_fingerprint: psk.map(|k| k.fingerprint().to_string()),
        }
    }

    /// Logs, at start, how peers are restricted.
    pub fn log_startup(&self, me: &PeerId) {
        tracing::info!(
            peer_id = %me,
            allowed_peers = self.allowed.len(),
            private_network = self.psk_fingerprint.as_deref().unwrap_or("none"),
            "node identity (give this peer id to other nodes' allowed_peers)"
        );
    }

    fn handshake_hint(&self) -> String {
        match &self.psk_fingerprint {
            Some(f) => format!(
                "the handshake failed: this node uses a private network key (fingerprint {f}); \
                 a peer with a different private_network_key_file, or none, cannot connect"
            ),
            None => "the handshake failed: this node uses no private network key; a peer that \
                     requires one (private_network_key_file) cannot connect"
                .to_owned(),
        }
    }

    /// Logs why an inbound connection failed or was refused.
    pub fn log_incoming_error(&self, peer: Option<PeerId>, addr: &Multiaddr, error: &ListenError) {
        let peer = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        match error {
            ListenError::Denied { cause } if not_allowed(cause) => tracing::warn!(
                %peer, %addr,
                "refused connection from a peer not in allowed_peers"
            ),
            ListenError::Denied { cause } => {
                tracing::debug!(%peer, %addr, error = %chain(cause), "inbound connection denied")
            }
            ListenError::Transport(e) => {
                let error = chain(e);
                let hint = (!is_network_error(&error)).then(|| self.handshake_hint());
                tracing::warn!(%peer, %addr, %error, hint, "inbound connection failed");
            }
            other => {
                tracing::debug!(%peer, %addr, error = %chain(other), "inbound connection failed")
            }
        }
    }

    /// Logs why an outbound connection failed or was refused.
    pub fn log_outgoing_error(&self, peer: Option<PeerId>, error: &DialError) {
        let peer = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        match error {
            DialError::Denied { cause } if not_allowed(cause) => tracing::warn!(
                %peer,
                "refused connection to a peer not in allowed_peers"
            ),
            DialError::Transport(errors) => {
                let error = chain(error);
                let network = errors.iter().all(|(_, e)| is_network_error(&chain(e)));
                let hint = (!network).then(|| self.handshake_hint());
                tracing::warn!(%peer, %error, hint, "cannot connect to peer; will retry with backoff");
            }
            _ => {
                tracing::warn!(%peer, error = %chain(error), "cannot connect to peer; will retry with backoff")
            }
        }
    }
}

fn not_allowed(cause: &ConnectionDenied) -> bool {
    cause
        .downcast_ref::<allow_block_list::NotAllowed>()
        .is_some()
}

/// An error message that says the network, not the handshake, failed.
fn is_network_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "connection refused",
        "timed out",
        "unreachable",
        "no route",
        "address not available",
        "multiaddr is not supported",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// An error and all its sources, `: `-separated.
pub fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "5d2fb2de4d0a4e27f5ddcb2a1a5bb7bc52e5b3c8e4b0ebd2e3c0d9a0d9b4c1e0";

    #[test]
    fn psk_file_format_is_checked_line_by_line() {
        let good = format!("{PSK_HEADER}\n/base16/\n{HEX}\n");
        let k = parse_psk(&good).unwrap();
        assert_eq!(k.to_key_file(), good);
        assert!(parse_psk(&good.replace('\n', "\r\n")).is_ok());
        let cases = [
            (format!("{PSK_HEADER}\n/base16/\n"), "three lines"),
            (
                format!("/key/swarm/psk/2.0.0/\n/base16/\n{HEX}\n"),
                "first line",
            ),
            (format!("{PSK_HEADER}\n/base64/\n{HEX}\n"), "second line"),
            (
                format!("{PSK_HEADER}\n/base16/\n{}\n", &HEX[..62]),
                "64 hex",
            ),
            (
                format!("{PSK_HEADER}\n/base16/\n{}zz\n", &HEX[..62]),
                "not hex",
            ),
        ];
        for (text, want) in cases {
            let why = parse_psk(&text).unwrap_err();
            assert!(why.contains(want), "{text:?}: {why}");
        }
    }

    /// Regression: a 64-byte key line with multi-byte characters made
    /// libp2p-pnet's parser panic (found by the `config_parse` fuzz target).
    #[test]
    fn non_ascii_key_line_is_an_error_not_a_panic() {
        let crash = include_bytes!("../fuzz/regressions/config_parse/psk-non-ascii-key-line");
        let text = std::str::from_utf8(crash).unwrap();
        assert_eq!(
            parse_psk(text).unwrap_err(),
            "the key line holds a character that is not hex"
        );
        let key_line = text.lines().nth(2).unwrap();
        assert_eq!(key_line.len(), 64, "the input is the panicking shape");
        assert!(!key_line.is_ascii());
    }

    #[test]
    fn written_psk_reads_back_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let k = write_psk(&path).unwrap();
        let back = read_psk(&path).unwrap();
        assert_eq!(k.fingerprint().to_string(), back.fingerprint().to_string());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(write_psk(&path), Err(SecurityError::Write { .. })));
        assert_eq!(
            read_psk(&path).unwrap().fingerprint().to_string(),
            k.fingerprint().to_string()
        );
        let other = write_psk(&dir.path().join("b.key")).unwrap();
        assert_ne!(
            other.fingerprint().to_string(),
            k.fingerprint().to_string(),
            "keys must be random"
        );
        let e = read_psk(&dir.path().join("missing.key")).unwrap_err();
        assert!(e.to_string().contains("syncnode keygen --psk"), "{e}");
    }

    #[test]
    fn empty_allowlist_allows_anyone() {
        let a = PeerId::random();
        let b = PeerId::random();
        assert!(is_allowed(&[], &a));
        assert!(is_allowed(&[a], &a));
        assert!(!is_allowed(&[a], &b));
        assert!(!allowlist(&[]).is_enabled());
        assert!(allowlist(&[a]).is_enabled());
    }

    #[test]
    fn network_errors_get_no_handshake_hint() {
        assert!(is_network_error("Connection refused (os error 111)"));
        assert!(!is_network_error("Multistream select failed"));
    }
}
