//! The libp2p TCP transport with the rate-limited stream under Noise.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::{PeerId, Transport, identity, noise, tcp, yamux};

use super::{Limited, Limiter};

/// TCP (`tcp_config`) → [`Limited`] → Noise → yamux, like
/// `SwarmBuilder::with_tcp` plus the limiter. Every TCP stream, dialled or
/// accepted, is wrapped and its fd registered for `TCP_INFO` sampling.
pub fn transport(
    key: &identity::Keypair,
    tcp_config: tcp::Config,
    limiter: Arc<Limiter>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(tcp::tokio::Transport::new(tcp_config)
        .map(move |stream: tcp::tokio::TcpStream, _| {
            let fd = stream.0.as_raw_fd();
            Limited::new(stream, limiter.clone(), Some(fd))
        })
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}
