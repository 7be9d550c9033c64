// Copyright 2019 Parity Technologies (UK) Ltd.
//
// Permission is hereby granted, free of charge, to any person obtaining a
// copy of this software and associated documentation files (the "Software"),
// to deal in the Software without restriction, including without limitation
// the rights to use, copy, modify, merge, publish, distribute, sublicense,
// and/or sell copies of the Software, and to permit persons to whom the
// Software is furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in
// all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
// OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
// FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
// DEALINGS IN THE SOFTWARE.

//! [Noise protocol framework][noise] support for libp2p.
//!
//! > **Note**: This crate is still experimental and subject to major breaking changes
//! > both on the API and the wire protocol.
//!
//! This crate provides `libp2p_core::InboundUpgrade` and `libp2p_core::OutboundUpgrade`
//! implementations for various noise handshake patterns (currently `IK`, `IX`, and `XX`)
//! over a particular choice of Diffie–Hellman key agreement (currently only X25519).
//!
//! > **Note**: Only the `XX` handshake pattern is currently guaranteed to provide
//! > interoperability with other libp2p implementations.
//!
//! All upgrades produce as output a pair, consisting of the remote's static public key
//! and a `NoiseOutput` which represents the established cryptographic session with the
//! remote, implementing `futures::io::AsyncRead` and `futures::io::AsyncWrite`.
//!
//! # Usage
//!
//! Example:
//!
//! ```
//! use libp2p_core::{Transport, transport::MemoryTransport, upgrade};
//! use libp2p_identity as identity;
//! use libp2p_noise as noise;
//!
//! # fn main() {
//! let id_keys = identity::Keypair::generate_ed25519();
//! let noise = noise::Config::new(&id_keys).unwrap();
//! let builder = MemoryTransport::default()
//!     .upgrade(upgrade::Version::V1)
//!     .authenticate(noise);
//! // let transport = builder.multiplex(...);
//! # }
//! ```
//!
//! [noise]: http://noiseprotocol.org/

#![cfg_attr(docsrs, feature(doc_cfg, doc_auto_cfg))]

mod io;
mod protocol;

use std::{collections::HashSet, fmt::Write, pin::Pin};

use futures::prelude::*;
pub use io::Output;
use libp2p_core::{
    UpgradeInfo,
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade},
};
use libp2p_identity as identity;
use libp2p_identity::PeerId;
use multiaddr::Protocol;
use multihash::Multihash;
use snow::params::NoiseParams;

use crate::{
    handshake::State,
    io::handshake,
    protocol::{
        AuthenticKeypair, Keypair, PARAMS_XX, PARAMS_XX_AES_GCM, noise_params_into_builder,
    },
};

/// The configuration for the noise handshake.
#[derive(Clone)]
pub struct Config {
    dh_keys: AuthenticKeypair,
    params: NoiseParams,
    webtransport_certhashes: Option<HashSet<Multihash<64>>>,

    /// Prologue to use in the noise handshake.
    ///
    /// The prologue can contain arbitrary data that will be hashed into the noise handshake.
    /// For the handshake to succeed, both parties must set the same prologue.
    ///
    /// For further information, see <https://noiseprotocol.org/noise.html#prologue>.
    prologue: Vec<u8>,

    /// syncnode: offer [`AES_GCM_PROTOCOL`] ahead of [`PROTOCOL`].
    aes_gcm: bool,
}

/// The standard libp2p Noise protocol: `Noise_XX_25519_ChaChaPoly_SHA256`.
pub const PROTOCOL: &str = "/noise";

/// syncnode: the libp2p Noise handshake (same XX pattern, payloads and
/// identity signatures) with AES-256-GCM as the cipher:
/// `Noise_XX_25519_AESGCM_SHA256`. Offered only by [`Config::with_aes_gcm`].
pub const AES_GCM_PROTOCOL: &str = "/syncnode/noise-aesgcm/1";

impl Config {
    /// Construct a new configuration for the noise handshake using the XX handshake pattern.
    pub fn new(identity: &identity::Keypair) -> Result<Self, Error> {
        let noise_keys = Keypair::new().into_authentic(identity)?;

        Ok(Self {
            dh_keys: noise_keys,
            params: PARAMS_XX.clone(),
            webtransport_certhashes: None,
            prologue: vec![],
            aes_gcm: false,
        })
    }

    /// syncnode: with `on`, offer (as dialer) and accept (as listener)
    /// [`AES_GCM_PROTOCOL`] as well as [`PROTOCOL`], preferring it:
    /// multistream-select settles on the first protocol of the dialer's list
    /// that the listener speaks, so two peers that both enable it use
    /// AES-256-GCM and any other peer still connects over ChaCha20-Poly1305.
    /// Worth it where the CPU has AES and carry-less multiply instructions
    /// (AES-NI and PCLMULQDQ, or the ARMv8 crypto extensions); without them
    /// ChaCha20-Poly1305 is the faster cipher.
    pub fn with_aes_gcm(mut self, on: bool) -> Self {
        self.aes_gcm = on;
        self
    }

    /// syncnode: the Noise parameters for a negotiated protocol name.
    fn params_for(&self, protocol: &str) -> NoiseParams {
        if self.aes_gcm && protocol == AES_GCM_PROTOCOL {
            PARAMS_XX_AES_GCM.clone()
        } else {
            self.params.clone()
        }
    }

    /// Set the noise prologue.
    pub fn with_prologue(mut self, prologue: Vec<u8>) -> Self {
        self.prologue = prologue;
        self
    }

    /// Set WebTransport certhashes extension.
    ///
    /// In case of initiator, these certhashes will be used to validate the ones reported by
    /// responder.
    ///
    /// In case of responder, these certhashes will be reported to initiator.
    pub fn with_webtransport_certhashes(mut self, certhashes: HashSet<Multihash<64>>) -> Self {
        self.webtransport_certhashes = Some(certhashes).filter(|h| !h.is_empty());
        self
    }

    fn into_responder<S: AsyncRead + AsyncWrite>(
        self,
        socket: S,
        params: NoiseParams,
    ) -> Result<State<S>, Error> {
        let session =
            noise_params_into_builder(params, &self.prologue, self.dh_keys.keypair.secret(), None)?
                .build_responder()?;

        let state = State::new(
            socket,
            session,
            self.dh_keys.identity,
            None,
            self.webtransport_certhashes,
        );

        Ok(state)
    }

    fn into_initiator<S: AsyncRead + AsyncWrite>(
        self,
        socket: S,
        params: NoiseParams,
    ) -> Result<State<S>, Error> {
        let session =
            noise_params_into_builder(params, &self.prologue, self.dh_keys.keypair.secret(), None)?
                .build_initiator()?;

        let state = State::new(
            socket,
            session,
            self.dh_keys.identity,
            None,
            self.webtransport_certhashes,
        );

        Ok(state)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::vec::IntoIter<Self::Info>;

    // syncnode: the AES-GCM variant first, when enabled.
    fn protocol_info(&self) -> Self::InfoIter {
        if self.aes_gcm {
            vec![AES_GCM_PROTOCOL, PROTOCOL].into_iter()
        } else {
            vec![PROTOCOL].into_iter()
        }
    }
}

impl<T> InboundConnectionUpgrade<T> for Config
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, Output<T>);
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Output, Self::Error>> + Send>>;

    fn upgrade_inbound(self, socket: T, protocol: Self::Info) -> Self::Future {
        async move {
            let params = self.params_for(protocol);
            let mut state = self.into_responder(socket, params)?;

            handshake::recv_empty(&mut state).await?;
            handshake::send_identity(&mut state).await?;
            handshake::recv_identity(&mut state).await?;

            let (pk, io) = state.finish()?;

            Ok((pk.to_peer_id(), io.with_protocol(protocol)))
        }
        .boxed()
    }
}

impl<T> OutboundConnectionUpgrade<T> for Config
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, Output<T>);
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Output, Self::Error>> + Send>>;

    fn upgrade_outbound(self, socket: T, protocol: Self::Info) -> Self::Future {
        async move {
            let params = self.params_for(protocol);
            let mut state = self.into_initiator(socket, params)?;

            handshake::send_empty(&mut state).await?;
            handshake::recv_identity(&mut state).await?;
            handshake::send_identity(&mut state).await?;

            let (pk, io) = state.finish()?;

            Ok((pk.to_peer_id(), io.with_protocol(protocol)))
        }
        .boxed()
    }
}

/// libp2p_noise error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Noise(#[from] snow::Error),
    #[error("Invalid public key")]
    InvalidKey(#[from] libp2p_identity::DecodingError),
    #[error("Only keys of length 32 bytes are supported")]
    InvalidLength,
    #[error("Remote authenticated with an unexpected public key")]
    UnexpectedKey,
    #[error("The signature of the remote identity's public key does not verify")]
    BadSignature,
    #[error("Authentication failed")]
    AuthenticationFailed,
    #[error("failed to decode protobuf ")]
    InvalidPayload(#[from] DecodeError),
    #[error(transparent)]
    #[allow(clippy::enum_variant_names)]
    SigningError(#[from] libp2p_identity::SigningError),
    #[error("Expected WebTransport certhashes ({}) are not a subset of received ones ({})", certhashes_to_string(.0), certhashes_to_string(.1))]
    UnknownWebTransportCerthashes(HashSet<Multihash<64>>, HashSet<Multihash<64>>),
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DecodeError(prost::DecodeError);

fn certhashes_to_string(certhashes: &HashSet<Multihash<64>>) -> String {
    let mut s = String::new();

    for hash in certhashes {
        write!(&mut s, "{}", Protocol::Certhash(*hash)).unwrap();
    }

    s
}

/// syncnode: the AES-GCM variant and its negotiation.
#[cfg(test)]
mod syncnode_tests {
    use futures::{
        future::{join, try_join},
        io::{AsyncReadExt, AsyncWriteExt},
    };
    use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
    use multistream_select::{Version, dialer_select_proto, listener_select_proto};

    use super::*;

    fn config(aes_gcm: bool) -> (identity::Keypair, Config) {
        let id = identity::Keypair::generate_ed25519();
        let config = Config::new(&id).unwrap().with_aes_gcm(aes_gcm);
        (id, config)
    }

    /// Negotiates the protocol as libp2p-core's upgrade does, runs the
    /// handshake, sends 200 KiB each way and returns the protocol each
    /// side ended on.
    fn connect(dialer_aes: bool, listener_aes: bool) -> (&'static str, &'static str) {
        let (dialer_id, dialer) = config(dialer_aes);
        let (listener_id, listener) = config(listener_aes);
        let (a, b) = futures_ringbuf::Endpoint::pair(4096, 4096);
        futures::executor::block_on(async move {
            let dialer_protocols: Vec<_> = dialer.protocol_info().collect();
            let listener_protocols: Vec<_> = listener.protocol_info().collect();
            let ((d_proto, a), (l_proto, b)) = try_join(
                dialer_select_proto(a, dialer_protocols, Version::V1),
                listener_select_proto(b, listener_protocols),
            )
            .await
            .unwrap();
            let ((seen_listener, mut out), (seen_dialer, mut inc)) = try_join(
                dialer.upgrade_outbound(a, d_proto),
                listener.upgrade_inbound(b, l_proto),
            )
            .await
            .unwrap();
            assert_eq!(seen_listener, listener_id.public().to_peer_id());
            assert_eq!(seen_dialer, dialer_id.public().to_peer_id());
            let msg: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 251) as u8).collect();
            let send = async {
                out.write_all(&msg).await.unwrap();
                out.flush().await.unwrap();
                let mut back = vec![0; msg.len()];
                out.read_exact(&mut back).await.unwrap();
                back
            };
            let echo = async {
                let mut got = vec![0; msg.len()];
                inc.read_exact(&mut got).await.unwrap();
                inc.write_all(&got).await.unwrap();
                inc.flush().await.unwrap();
            };
            let (back, ()) = join(send, echo).await;
            assert_eq!(back, msg);
            (out.protocol(), inc.protocol())
        })
    }

    #[test]
    fn both_sides_with_aes_gcm_use_it() {
        assert_eq!(connect(true, true), (AES_GCM_PROTOCOL, AES_GCM_PROTOCOL));
    }

    #[test]
    fn a_side_without_it_falls_back_to_standard_noise() {
        assert_eq!(connect(true, false), (PROTOCOL, PROTOCOL));
        assert_eq!(connect(false, true), (PROTOCOL, PROTOCOL));
        assert_eq!(connect(false, false), (PROTOCOL, PROTOCOL));
    }

    #[test]
    fn the_protocol_name_selects_the_cipher() {
        // If both ends were told different protocols, the handshake must fail:
        // the protocol name is hashed into the Noise state, and the ciphers
        // differ. (Were the name ignored, this would connect.)
        let (_, dialer) = config(true);
        let (_, listener) = config(true);
        let (a, b) = futures_ringbuf::Endpoint::pair(4096, 4096);
        let result = futures::executor::block_on(async move {
            let (out, inc) = join(
                dialer.upgrade_outbound(a, AES_GCM_PROTOCOL),
                listener.upgrade_inbound(b, PROTOCOL),
            )
            .await;
            out.is_ok() || inc.is_ok()
        });
        assert!(
            !result,
            "a mismatched cipher must not complete the handshake"
        );
    }
}
