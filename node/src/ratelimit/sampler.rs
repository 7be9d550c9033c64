//! The adaptive mode's I/O half: every 100 ms, read `TCP_INFO` of every live
//! connection, turn the deltas into one [`Sample`] and hand it to the
//! limiter's controller. Everything else is in [`swarm::rate::Adaptive`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use swarm::rate::Sample;

use super::{Limiter, tcpinfo};

/// Sampling period.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Per-connection counters at the previous sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Prev {
    bytes_acked: u64,
    total_retrans: u32,
}

/// Spawns the sampler task (it idles cheaply in fixed mode).
pub fn spawn_sampler(limiter: Arc<Limiter>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev: HashMap<u64, Prev> = HashMap::new();
        loop {
            tick.tick().await;
            if !limiter.is_adaptive() {
                prev.clear();
                continue;
            }
            let sample = limiter.with_sockets(|socks| collect(socks, &mut prev));
            let rate = limiter.on_sample(super::stream::now(), &sample);
            tracing::trace!(?sample, ?rate, "adaptive sample");
        }
    })
}

/// One connection's contribution since the previous sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Delta {
    acked: u64,
    retrans: u64,
    /// `srtt − min_rtt`, if the connection sent data.
    queue: Option<Duration>,
}

fn delta(now: &tcpinfo::TcpInfo, before: Option<Prev>) -> Delta {
    let Some(p) = before else {
        return Delta::default(); // first sight: no interval yet
    };
    let acked = now.bytes_acked.saturating_sub(p.bytes_acked);
    Delta {
        acked,
        retrans: u64::from(now.total_retrans.saturating_sub(p.total_retrans)),
        queue: (acked > 0).then(|| now.srtt.saturating_sub(now.min_rtt.unwrap_or(now.srtt))),
    }
}

/// Folds per-connection deltas into one sample.
fn fold(deltas: impl IntoIterator<Item = Delta>) -> Sample {
    deltas.into_iter().fold(Sample::default(), |s, d| Sample {
        acked_bytes: s.acked_bytes + d.acked,
        retransmits: s.retransmits + d.retrans,
        queue_delay: match (s.queue_delay, d.queue) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    })
}

fn collect(socks: &HashMap<u64, std::os::fd::RawFd>, prev: &mut HashMap<u64, Prev>) -> Sample {
    let mut deltas = Vec::with_capacity(socks.len());
    let mut next = HashMap::with_capacity(socks.len());
    for (&id, &fd) in socks {
        let Ok(info) = tcpinfo::read(fd) else {
            continue;
        };
        deltas.push(delta(&info, prev.get(&id).copied()));
        next.insert(
            id,
            Prev {
                bytes_acked: info.bytes_acked,
                total_retrans: info.total_retrans,
            },
        );
    }
    *prev = next;
    fold(deltas)
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
    fn deltas_use_each_connections_own_base_rtt() {
        let p = Prev {
            bytes_acked: 1000,
            total_retrans: 2,
        };
        // A far peer (base 40 ms, now 42 ms) and a near one (base 1, now 9).
        let far = delta(&info(5000, 2, 42, 40), Some(p));
        let near = delta(&info(3000, 5, 9, 1), Some(p));
        let idle = delta(&info(1000, 2, 300, 1), Some(p));
        let new = delta(&info(9999, 9, 300, 1), None);
        let s = fold([far, near, idle, new]);
        assert_eq!(s.acked_bytes, 4000 + 2000);
        assert_eq!(s.retransmits, 3);
        assert_eq!(
            s.queue_delay,
            Some(Duration::from_millis(8)),
            "largest queue among connections that sent; idle and new ones ignored"
        );
        assert_eq!(fold([idle]).queue_delay, None);
    }
}
