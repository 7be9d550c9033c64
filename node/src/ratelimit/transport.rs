//! The libp2p TCP transport with the rate-limited stream under Noise.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, Transport, identity, tcp, yamux};

use super::{Limited, Limiter};

/// TCP (`tcp_config`) → [`Limited`] → private network (with `psk`) →
/// Noise → yamux, like `SwarmBuilder::with_tcp` plus the limiter and the
/// optional pre-shared key (`crate::security`). Every TCP stream, dialled
/// or accepted, is wrapped and its fd registered for `TCP_INFO` sampling;
/// the limiter sits under the private-network layer, so it counts every
/// byte on the wire.
pub fn transport(
    key: &identity::Keypair,
    tcp_config: tcp::Config,
    limiter: Arc<Limiter>,
    psk: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp =
        tcp::tokio::Transport::new(tcp_config).map(move |stream: tcp::tokio::TcpStream, _| {
            let fd = stream.0.as_raw_fd();
            Limited::new(stream, limiter.clone(), Some(fd))
        });
    let noise = crate::security::noise_config(key)?;
    let yamux = yamux::Config::default();
    Ok(match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    })
}
