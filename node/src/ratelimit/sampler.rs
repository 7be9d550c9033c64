//! The adaptive mode's I/O half: read `TCP_INFO` of every live connection
//! every 20 ms and, every 100 ms, hand the controller one [`Sample`].
//! Everything else is in [`swarm::rate::Adaptive`].
//!
//! A connection's queueing delay is its smoothed RTT minus its own minimum
//! RTT, taken as the *minimum* over the five probes of an interval (as
//! CoDel does with sojourn times): a standing queue persists through the
//! whole interval, while an RTT spike from a descheduled receiver or a
//! burst does not, so noise does not read as congestion.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use swarm::rate::Sample;

use super::{Limiter, tcpinfo};

/// How often sockets are probed.
pub const PROBE: Duration = Duration::from_millis(20);
/// Probes per controller interval (100 ms).
pub const PROBES_PER_SAMPLE: u32 = 5;

/// Spawns the sampler task (it idles cheaply in fixed mode).
pub fn spawn_sampler(limiter: Arc<Limiter>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut window = Window::default();
        let mut n = 0u32;
        loop {
            tick.tick().await;
            if !limiter.is_adaptive() {
                window = Window::default();
                continue;
            }
            limiter.with_sockets(|socks| window.probe(socks.fds()));
            n += 1;
            if n.is_multiple_of(PROBES_PER_SAMPLE) {
                let sample = window.finish();
                let rate = limiter.on_sample(super::stream::now(), &sample);
                tracing::trace!(?sample, ?rate, "adaptive sample");
            }
        }
    })
}

/// One connection over the current interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Conn {
    /// Counters at the start of the interval.
    acked_start: u64,
    retrans_start: u32,
    /// Latest counters.
    acked: u64,
    retrans: u32,
    /// Smallest `srtt − min_rtt` probed in the interval.
    min_queue: Option<Duration>,
}

/// Per-connection state across one controller interval.
#[derive(Debug, Default)]
struct Window {
    conns: HashMap<u64, Conn>,
}

impl Window {
    /// Reads every live socket once; forgets closed ones.
    fn probe(&mut self, socks: impl Iterator<Item = (u64, RawFd)>) {
        let socks: HashMap<u64, RawFd> = socks.collect();
        self.conns.retain(|id, _| socks.contains_key(id));
        for (id, fd) in socks {
            if let Ok(info) = tcpinfo::read(fd) {
                self.observe(id, &info);
            }
        }
    }

    fn observe(&mut self, id: u64, info: &tcpinfo::TcpInfo) {
        let c = self.conns.entry(id).or_insert(Conn {
            acked_start: info.bytes_acked,
            retrans_start: info.total_retrans,
            ..Conn::default()
        });
        c.acked = info.bytes_acked;
        c.retrans = info.total_retrans;
        let q = info.srtt.saturating_sub(info.min_rtt.unwrap_or(info.srtt));
        c.min_queue = Some(c.min_queue.map_or(q, |m| m.min(q)));
    }

    /// The interval's sample; starts the next interval.
    fn finish(&mut self) -> Sample {
        let mut s = Sample::default();
        for c in self.conns.values_mut() {
            let acked = c.acked.saturating_sub(c.acked_start);
            s.acked_bytes += acked;
            s.retransmits += u64::from(c.retrans.saturating_sub(c.retrans_start));
            if acked > 0 {
                s.queue_delay = s.queue_delay.max(c.min_queue);
            }
            *c = Conn {
                acked_start: c.acked,
                retrans_start: c.retrans,
                acked: c.acked,
                retrans: c.retrans,
                min_queue: None,
            };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(acked: u64, retrans: u32, srtt_ms: u64, min_ms: u64) -> tcpinfo::TcpInfo {
        tcpinfo::TcpInfo {
            srtt: Duration::from_millis(srtt_ms),
            min_rtt: Some(Duration::from_millis(min_ms)),
            total_retrans: retrans,
            bytes_acked: acked,
        }
    }

    #[test]
    fn samples_take_each_connections_standing_queue_over_its_own_base() {
        let mut w = Window::default();
        // Interval starts: far peer (base 40 ms), near peer (base 1 ms), idle peer.
        w.observe(1, &info(1000, 2, 40, 40));
        w.observe(2, &info(1000, 2, 1, 1));
        w.observe(3, &info(1000, 2, 300, 1));
        let first = w.finish();
        assert_eq!(first.acked_bytes, 0, "no interval before the first probe");
        // The far one holds 2 ms of queue all along; the near one spikes to
        // 30 ms once but sits at 8 ms otherwise: its standing queue is 8 ms.
        for (far, near) in [(42, 9), (42, 31), (43, 9), (42, 10)] {
            w.observe(1, &info(5000, 2, far, 40));
            w.observe(2, &info(3000, 5, near, 1));
        }
        let s = w.finish();
        assert_eq!(s.acked_bytes, 4000 + 2000, "the idle peer acked nothing");
        assert_eq!(s.retransmits, 3);
        assert_eq!(s.queue_delay, Some(Duration::from_millis(8)));
        // Next interval: counters continue from where the last one ended.
        w.observe(2, &info(3500, 5, 1, 1));
        let s = w.finish();
        assert_eq!((s.acked_bytes, s.retransmits), (500, 0));
        assert_eq!(s.queue_delay, Some(Duration::ZERO));
        // Nothing sent: no delay information at all.
        assert_eq!(w.finish().queue_delay, None);
    }

    #[test]
    fn closed_sockets_are_forgotten() {
        let mut w = Window::default();
        w.observe(7, &info(0, 0, 1, 1));
        w.probe(std::iter::empty());
        assert!(w.conns.is_empty());
    }
}
