//! The syncnode swarm protocol core, as a sans-IO state machine.
//!
//! `swarm` decides *what* a node asks *whom* for, and when to give up on a
//! request; the driver in `node/` (libp2p) or `sim/` (turmoil) does the I/O.
//! The core never touches a socket, a clock or a global RNG: time comes in as
//! [`std::time::Instant`] arguments, randomness from a caller-provided seed
//! ([`rng::SplitMix64`]), so the same seed and the same inputs always give the
//! same actions, and what the simulator proves is what ships.
//!
//! # What it owns now
//!
//! [`Fetch`]: the download of one version by one node. The driver feeds it
//! [`Input`]s (peers connecting, announcing chunks, answering requests) and
//! drains [`Action`]s (request, cancel, penalise, ban, complete); it calls
//! [`Fetch::handle_timeout`] at [`Fetch::poll_timeout`]. Each chunk is in
//! exactly one state ([`ChunkState`]); the invariants are written down in
//! `swarm/STATE.md` and asserted by [`Fetch::check_invariants`]. Peer choice is
//! a pluggable [`policy::SelectionPolicy`] (default [`policy::TieredRandom`]:
//! known holders, then peers of unknown availability, then the origin).
//!
//! ```
//! use std::time::Instant;
//! use swarm::{Action, ChunkIdx, Fetch, FetchConfig, Input};
//!
//! let now = Instant::now();
//! let mut fetch = Fetch::new(FetchConfig::default(), vec![10, 20], 7);
//! fetch.handle(now, Input::PeerConnected { peer: "a", origin: false });
//! fetch.handle(now, Input::PeerHasAll { peer: "a" });
//! let mut asked = Vec::new();
//! while let Some(action) = fetch.poll_action(now) {
//!     if let Action::Request { peer, chunk } = action {
//!         asked.push((peer, chunk));
//!     }
//! }
//! assert_eq!(asked.len(), 2);
//! for (peer, chunk) in asked {
//!     fetch.handle(now, Input::Verified { peer, chunk });
//! }
//! assert_eq!(fetch.poll_action(now), Some(Action::Complete));
//! assert!(fetch.is_complete());
//! ```
//!
//! Chunks are picked rarest first (availability counted from `PeerHas` /
//! `PeerHasAll`); the origin is asked only for chunks no other peer holds;
//! nearer peers are preferred ([`Input::PeerTopology`]) and chunks held only
//! outside the rack are brought in by one responsible member
//! ([`Input::LocalGroup`], [`responsible_rank`]); per-peer caps and timeouts
//! follow the measured rate ([`Fetch::peer_stats`]); the tail is duplicated
//! (endgame). See `swarm/STATE.md`.
//!
//! [`serve::UploadGate`]: the serving side's admission control (upload
//! slots answered `Busy` beyond the limit; an origin spreading distinct
//! chunks first).
//!
//! [`Session`]: one peer's connection across every fetch: liveness
//! (heartbeats and bytes; a silent link is suspect, then cut after
//! [`SessionConfig::peer_timeout`]), reconnect with jittered exponential
//! backoff, resending what is missing, and bans for a while after repeated
//! offences. Its actions become `Fetch` inputs (see `docs/session.md`).
//!
//! [`rate`]: the token bucket behind the bandwidth limit and the adaptive
//! (RTT/loss driven) upload rate controller, both pure.
//!
//! # What comes later
//!
//! Reaching ~S/B fan-out (see "Open problems" in `swarm/STATE.md`) and
//! grouping chunks into pieces.

mod fetch;
mod peer;
pub mod policy;
pub mod rate;
pub mod rng;
pub mod serve;
mod session;

pub use fetch::{
    Action, ChunkState, Fetch, FetchConfig, Input, Outstanding, PeerStats, Progress,
    REASON_CORRUPT, REASON_LYING, responsible_rank,
};
pub use session::{
    Session, SessionAction, SessionConfig, SessionError, SessionInput, SessionState,
};

/// Index into the list of chunks this fetch needs (the driver maps it to a chunk hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkIdx(pub u32);
