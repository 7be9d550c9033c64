//! Bandwidth rate control: one global token bucket per direction, shared by
//! every connection of the daemon, enforced on the TCP byte stream under
//! libp2p (so every byte on the wire is counted: chunks, manifests, gossip,
//! Noise and yamux framing), optionally steered by the adaptive controller.
//!
//! - [`Limiter`]: the shared state (buckets, configured limits, mode,
//!   controller, socket registry), changed at run time by the control socket.
//! - [`Limited`]: the `AsyncRead`/`AsyncWrite` wrapper around each TCP stream.
//!   It takes tokens before each read or write and, when none are left,
//!   reserves a place in the bucket's FIFO queue and sleeps on a tokio timer
//!   until it is covered: no busy polling, and no connection is overtaken by
//!   one that asked later (see [`swarm::rate::TokenBucket`]).
//! - [`transport`]: the libp2p TCP transport with the wrapper inserted under
//!   Noise; `build_swarm` uses it instead of `with_tcp`.
//! - [`spawn_sampler`]: in adaptive mode, probes `TCP_INFO` of every live
//!   socket every 20 ms and feeds [`swarm::rate::Adaptive`] every 100 ms.
//!
//! Limits are in Mbit/s (10⁶ bits per second) of TCP payload; `0` means
//! unlimited (as in rsync's `--bwlimit=0` and aria2's `--max-*-limit=0`).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use swarm::rate::{Adaptive, AdaptiveConfig, Rate, Sample, TokenBucket, default_burst};

use crate::control::BandwidthStatus;
use crate::metrics::Metrics;

mod sampler;
mod stream;
mod tcpinfo;
mod transport;

pub use sampler::spawn_sampler;
pub use stream::Limited;
pub use transport::transport;

/// Highest accepted limit: 1 Tbit/s.
pub const MAX_MBPS: f64 = 1_000_000.0;
/// Lowest accepted non-zero limit: 0.01 Mbit/s (1,250 bytes/s).
pub const MIN_MBPS: f64 = 0.01;
/// The adaptive controller's ceiling when no limit is configured: 100 Gbit/s.
pub const ADAPTIVE_CEILING_MBPS: f64 = 100_000.0;

/// A bandwidth limit value problem (from the config, a flag or the control socket).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{value} Mbit/s is not a valid limit: use 0 for unlimited or a number from {MIN_MBPS} to {MAX_MBPS}"
)]
pub struct LimitError {
    /// The rejected value.
    pub value: f64,
}

/// Checks a limit in Mbit/s and converts it (0 = unlimited).
pub fn rate_from_mbps(mbps: f64) -> Result<Rate, LimitError> {
    if mbps == 0.0 {
        return Ok(Rate::Unlimited);
    }
    if !mbps.is_finite() || !(MIN_MBPS..=MAX_MBPS).contains(&mbps) {
        return Err(LimitError { value: mbps });
    }
    Ok(Rate::from_bytes_per_sec((mbps * 125_000.0).round() as u64))
}

/// Bytes per second to Mbit/s, `None` for unlimited.
pub fn mbps(rate: Rate) -> Option<f64> {
    rate.bytes_per_sec().map(|b| b as f64 / 125_000.0)
}

/// How the upload rate is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Upload and download run at the configured limits.
    #[default]
    Fixed,
    /// Upload runs at the adaptive controller's rate (at most the configured
    /// upload limit); download stays at its fixed limit.
    Adaptive,
}

impl Mode {
    /// `fixed` or `adaptive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Adaptive => "adaptive",
        }
    }
}

/// The configured limits, one per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes we send.
    pub upload: Rate,
    /// Bytes we receive.
    pub download: Rate,
}

impl Limits {
    /// No limit either way.
    pub const UNLIMITED: Limits = Limits {
        upload: Rate::Unlimited,
        download: Rate::Unlimited,
    };
}

/// A direction on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Bytes we send.
    Up,
    /// Bytes we receive.
    Down,
}

struct State {
    up: TokenBucket,
    down: TokenBucket,
    limits: Limits,
    mode: Mode,
    adaptive: Option<Adaptive>,
}

/// What [`Limiter::settled`] reads off the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Running total of bytes that no longer wait on the uplink.
    pub settled: u64,
    /// Largest smoothed round trip of the connections with bytes in flight.
    pub rtt: Duration,
}

/// One live stream, for `TCP_INFO` sampling and the settled count.
struct Sock {
    /// The TCP socket; `None` for streams that are not one (tests).
    fd: Option<RawFd>,
    /// Bytes written to it.
    written: u64,
    /// Bytes its peer acknowledged, as last read (at most `written`).
    acked: u64,
}

/// Every stream's sent and acknowledged bytes (see [`Limiter::settled`]).
#[derive(Default)]
pub(crate) struct Sockets {
    live: HashMap<u64, Sock>,
    /// Bytes of closed streams (all of what they were given: it arrived or
    /// is lost), streams without a socket, and a simulated NIC's deliveries.
    settled: u64,
}

impl Sockets {
    /// The live TCP sockets: (stream id, fd).
    pub(crate) fn fds(&self) -> impl Iterator<Item = (u64, RawFd)> + '_ {
        self.live
            .iter()
            .filter_map(|(id, s)| s.fd.map(|fd| (*id, fd)))
    }
}

/// The daemon's shared rate limiter. See the module docs.
pub struct Limiter {
    state: Mutex<State>,
    /// Live streams, for `TCP_INFO` sampling and [`Limiter::settled`].
    sockets: Mutex<Sockets>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("status", &self.status())
            .finish()
    }
}

impl Limiter {
    /// A limiter with these limits and mode; gauges are published to `metrics`.
    pub fn new(limits: Limits, mode: Mode, metrics: Arc<Metrics>) -> Arc<Limiter> {
        let now = stream::now();
        let l = Limiter {
            state: Mutex::new(State {
                up: TokenBucket::with_default_burst(limits.upload, now),
                down: TokenBucket::with_default_burst(limits.download, now),
                limits,
                mode: Mode::Fixed,
                adaptive: None,
            }),
            sockets: Mutex::new(Sockets::default()),
            next_id: AtomicU64::new(1),
            metrics,
        };
        l.set(Some(limits), Some(mode));
        Arc::new(l)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the limits and/or the mode at run time; `None` keeps a value.
    pub fn set(&self, limits: Option<Limits>, mode: Option<Mode>) -> BandwidthStatus {
        let now = stream::now();
        {
            let mut s = self.lock();
            s.limits = limits.unwrap_or(s.limits);
            s.mode = mode.unwrap_or(s.mode);
            let down = s.limits.download;
            s.down.set_rate(now, down, default_burst(down));
            let ceiling = adaptive_ceiling(s.limits.upload);
            match (s.mode, s.adaptive.as_mut()) {
                (Mode::Fixed, _) => s.adaptive = None,
                (Mode::Adaptive, Some(a)) => a.set_max_rate(ceiling),
                (Mode::Adaptive, None) => {
                    let cfg = AdaptiveConfig {
                        max_rate: ceiling,
                        ..AdaptiveConfig::default()
                    };
                    s.adaptive = Some(Adaptive::new(cfg, now));
                }
            }
            let up = effective_upload(&s);
            s.up.set_rate(now, up, default_burst(up));
            tracing::info!(
                mode = s.mode.as_str(),
                upload_mbps = ?mbps(s.limits.upload),
                download_mbps = ?mbps(s.limits.download),
                "bandwidth limits set"
            );
        }
        self.publish_gauges()
    }

    /// Feeds one adaptive sample (no-op in fixed mode); returns the new upload rate.
    pub fn on_sample(&self, now: Instant, sample: &Sample) -> Rate {
        let mut s = self.lock();
        if let Some(a) = s.adaptive.as_mut() {
            let r = Rate::from_bytes_per_sec(a.on_sample(now, sample));
            let burst = default_burst(r);
            s.up.set_rate(now, r, burst);
        }
        let r = s.up.rate();
        drop(s);
        self.publish_gauges();
        r
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        self.lock().limits
    }

    /// True in adaptive mode.
    pub fn is_adaptive(&self) -> bool {
        self.lock().mode == Mode::Adaptive
    }

    /// Runs `f` on the bucket of `dir`.
    pub(crate) fn with_bucket<R>(&self, dir: Dir, f: impl FnOnce(&mut TokenBucket) -> R) -> R {
        let mut s = self.lock();
        match dir {
            Dir::Up => f(&mut s.up),
            Dir::Down => f(&mut s.down),
        }
    }

    /// Counts bytes that crossed the wire.
    pub(crate) fn count(&self, dir: Dir, n: usize) {
        let c = match dir {
            Dir::Up => &self.metrics.wire_bytes_sent,
            Dir::Down => &self.metrics.wire_bytes_received,
        };
        Metrics::add(c, n as u64);
    }

    pub(crate) fn register(&self, fd: Option<RawFd>) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.sockets_lock().live.insert(
            id,
            Sock {
                fd,
                written: 0,
                acked: 0,
            },
        );
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        let mut s = self.sockets_lock();
        if let Some(sock) = s.live.remove(&id) {
            s.settled += sock.written;
        }
    }

    /// Stream `id` wrote `n` bytes.
    pub(crate) fn wrote(&self, id: u64, n: usize) {
        let mut s = self.sockets_lock();
        let no_socket = match s.live.get_mut(&id) {
            Some(sock) => {
                sock.written += n as u64;
                sock.fd.is_none()
            }
            None => true,
        };
        if no_socket {
            s.settled += n as u64;
        }
    }

    /// A simulated NIC put `n` bytes on the wire (the packet tier has no
    /// sockets to ask): they count as settled.
    pub fn delivered(&self, n: u64) {
        self.sockets_lock().settled += n;
    }

    /// Running total of bytes written by this daemon that no longer wait on
    /// the uplink: acknowledged by the receiver (`TCP_INFO`'s
    /// `tcpi_bytes_acked`, read now from every live socket), written to a
    /// stream since closed, or delivered by a simulated NIC. Bytes written
    /// minus this is the uplink backlog that upload admission bounds
    /// (`upload_backlog_kib`). It only grows. With it, the round trip of
    /// the connections that still have bytes in flight: the largest smoothed
    /// RTT (`tcpi_rtt`) among them, zero when none.
    pub fn settled(&self) -> Uplink {
        let mut s = self.sockets_lock();
        let mut total = s.settled;
        let mut rtt = Duration::ZERO;
        for sock in s.live.values_mut() {
            if let Some(fd) = sock.fd
                && let Ok(info) = tcpinfo::read(fd)
            {
                sock.acked = sock.acked.max(info.bytes_acked.min(sock.written));
                if sock.acked < sock.written {
                    rtt = rtt.max(info.srtt);
                }
            }
            total += sock.acked;
        }
        Uplink {
            settled: total,
            rtt,
        }
    }

    /// Runs `f` with the live streams; a stream cannot close its fd meanwhile.
    pub(crate) fn with_sockets<R>(&self, f: impl FnOnce(&Sockets) -> R) -> R {
        f(&self.sockets_lock())
    }

    fn sockets_lock(&self) -> MutexGuard<'_, Sockets> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `status` and the `limit` command report.
    pub fn status(&self) -> BandwidthStatus {
        let s = self.lock();
        BandwidthStatus {
            mode: s.mode.as_str().to_owned(),
            upload_limit_mbps: mbps(s.limits.upload),
            download_limit_mbps: mbps(s.limits.download),
            upload_rate_mbps: mbps(s.up.rate()),
            download_rate_mbps: mbps(s.down.rate()),
            wire_bytes_sent: self.metrics.wire_bytes_sent.load(Relaxed),
            wire_bytes_received: self.metrics.wire_bytes_received.load(Relaxed),
        }
    }

    fn publish_gauges(&self) -> BandwidthStatus {
        let st = self.status();
        let bps = |m: Option<f64>| m.map_or(0, |m| (m * 125_000.0).round() as u64);
        let m = &self.metrics;
        m.upload_limit.store(bps(st.upload_limit_mbps), Relaxed);
        m.download_limit.store(bps(st.download_limit_mbps), Relaxed);
        m.upload_rate.store(bps(st.upload_rate_mbps), Relaxed);
        m.download_rate.store(bps(st.download_rate_mbps), Relaxed);
        st
    }
}

fn adaptive_ceiling(limit: Rate) -> u64 {
    limit
        .bytes_per_sec()
        .unwrap_or((ADAPTIVE_CEILING_MBPS * 125_000.0) as u64)
}

fn effective_upload(s: &State) -> Rate {
    match &s.adaptive {
        Some(a) => Rate::from_bytes_per_sec(a.rate()),
        None => s.limits.upload,
    }
}

#[cfg(test)]
mod tests;
