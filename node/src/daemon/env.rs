//! Where the daemon runs: the real process, or a simulated host.
//!
//! In production ([`Env::default`]) the daemon loads its identity from disk,
//! speaks TCP, samples `TCP_INFO`, serves the control socket and metrics,
//! stops on signals, and runs blocking work (chunk store, materialization,
//! Reed-Solomon) on tokio's blocking pool.
//!
//! The simulator's packet tier ([`SimHost`]) runs the same daemon on a
//! turmoil host: the identity and scheduling seed come from the scenario's
//! seed, the transport is turmoil's TCP under the same Noise + yamux stack,
//! blocking work runs inline on the host's thread (so it takes no
//! simulated time and happens at the same point in every run), and the
//! control socket, metrics endpoint, `TCP_INFO` sampler and signal handlers
//! are off (status is read with [`super::Daemon::status_sender`]).

use std::error::Error;
use std::sync::Arc;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::{PeerId, identity, tcp};
use tokio::sync::mpsc;

use crate::config::Validated;
use crate::ratelimit::Limiter;

/// Builds the libp2p transport from the node key and the bandwidth limiter.
pub type TransportFn = Box<
    dyn FnOnce(
            &identity::Keypair,
            Arc<Limiter>,
        ) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn Error + Send + Sync>>
        + Send,
>;

/// A simulated host (the packet tier of `syncnode sim`).
pub struct SimHost {
    /// The node's libp2p identity (derived from the scenario seed).
    pub identity: identity::Keypair,
    /// Seed of the daemon's scheduling RNG.
    pub rng_seed: u64,
    /// The simulated network's transport.
    pub transport: TransportFn,
    /// Fault switches, in `SYNCNODE_FAULT` syntax (the process environment
    /// is shared by every simulated host, so it is not read).
    pub faults: String,
    /// gossipsub's mesh degree is raised to at least this many peers.
    pub mesh_peers: usize,
}

/// The daemon's environment (see the module docs).
#[derive(Default)]
pub struct Env {
    /// `Some` on a simulated host.
    pub sim: Option<SimHost>,
}

/// The production transport: TCP (no delay) → limiter → (private network) →
/// Noise → yamux.
pub(super) fn tcp_transport(cfg: &Validated) -> TransportFn {
    let psk = cfg.psk;
    let tcp_config = tcp::Config::default().nodelay(true);
    Box::new(move |key, limiter| crate::ratelimit::transport(key, tcp_config, limiter, psk))
}

/// Runs `f` off the event loop and sends its result to `tx`: on tokio's
/// blocking pool, or (`inline`, a simulated host) right now on this thread,
/// with the send itself queued as a task so the loop sees it as an event.
pub(super) fn offload<T: Send + 'static>(
    inline: bool,
    tx: mpsc::Sender<T>,
    f: impl FnOnce() -> T + Send + 'static,
) {
    if inline {
        let v = f();
        tokio::spawn(async move {
            let _ = tx.send(v).await;
        });
    } else {
        tokio::task::spawn_blocking(move || {
            let _ = tx.blocking_send(f());
        });
    }
}
