//! `node` owns everything in syncnode that touches the outside world: the
//! `syncnode` binary and daemon (tokio), libp2p networking (TCP + noise +
//! yamux, gossipsub for signed roots, request-response for manifests and
//! chunks), the on-disk content-addressed chunk store, materialization of
//! versions, configuration, logs, Prometheus metrics and the local control
//! socket.
//!
//! The content model (chunking, hashes, manifests, signatures) lives in
//! `merkle`; the fetch scheduling policy lives in `swarm` as a sans-IO state
//! machine that the [`daemon`] drives.
//!
//! Module map:
//! - [`config`]: the YAML config, defaults and validation;
//! - [`store`]: the crash-safe chunk store;
//! - [`materialize`]: files rebuilt from chunks, `current` switched atomically;
//! - [`publish`]: a source folder scanned into a manifest, chunks served from it;
//! - [`wire`]: the request-response codec and gossip messages;
//! - [`security`]: peer allowlist, private-network key, the transport;
//! - [`daemon`]: the event loop for `run` and `seed`;
//! - [`control`], [`metrics`]: local control socket, `/metrics` and `/healthz`;
//! - [`ratelimit`]: bandwidth limits (token buckets on every TCP stream) and
//!   the adaptive upload mode;
//! - [`packet_tier`]: the simulator's packet tier (the daemon on turmoil hosts);
//! - [`sys`]: Linux calls std lacks (disk writeback hints);
//! - [`cluster`], [`checkpoint`]: process orchestration and generated
//!   checkpoints, shared by `syncnode demo` and the integration tests.

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod materialize;
pub mod metrics;
pub mod packet_tier;
pub mod publish;
pub mod ratelimit;
pub mod security;
pub mod store;
pub mod sys;
pub mod wire;
