//! The serving side: which chunk requests an uploader takes on.
//!
//! [`UploadGate`] answers each incoming request with [`Admission::Serve`]
//! or [`Admission::Busy`]: at most `max_uploads` uploads run at once (more
//! are refused at once, so the requester turns to another holder instead of
//! queueing behind a full link), and an origin can *spread first*: while some
//! chunk of the version has never left it, it refuses to send a second copy
//! of a chunk it started sending less than `resend_after` ago. That copy is
//! already on its way into the swarm and will be announced within about one
//! chunk-time; the origin's upload is worth more injecting a chunk nobody has
//! (BitTorrent calls the extreme form of this super-seeding). Once every chunk
//! has left the origin once, or `resend_after` has passed (the first receiver
//! may have died), it serves copies again.
//!
//! An uploader can also bound its *backlog*: bytes it handed to its
//! connections that the receivers have not yet acknowledged. A slot frees
//! when its response is written into the connection, which with a large
//! stream window is at once, long before the bytes leave the host; without
//! a backlog bound an uploader then runs as many transfers as requests reach
//! it, each slower, and an origin spreads its first copies thin. With it,
//! requests are refused while more than `limit` bytes wait on the uplink, so
//! every transfer it takes on finishes within about `limit / rate`. The
//! caller reports bytes as it hands responses over ([`UploadGate::queued`])
//! and the running total of bytes its transport saw acknowledged (or lost
//! with a closed connection) ([`UploadGate::settled`]); a backlog that makes
//! no progress for [`BACKLOG_STALL`] is forgotten, so a lost count cannot
//! shut the uploader for good.
//!
//! The bound must also cover the path: to keep the uplink busy across a
//! request's round trip, an uploader needs about rate x RTT waiting, and a
//! fixed byte bound would cap one far from its receivers (512 KiB over a
//! 50 ms round trip: 10 MB/s at most in flight). So the bound is never
//! below two bandwidth-delay products ([`UploadGate::backlog_limit`]): the
//! rate at which bytes settle, measured while a backlog waits, times the
//! round trip the caller reports ([`UploadGate::path_rtt`]; the daemon
//! passes the largest smoothed RTT among its connections with bytes in
//! flight, which includes the queues of the path but not the backlog
//! itself, still in the sender's socket buffers). Since a doubled floor
//! lets the rate double, it reaches the link rate in a few round trips, as
//! TCP's slow start does.
//!
//! Like the rest of the crate it is sans-IO: time comes in as arguments.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A good `resend_after` for an origin: a few chunk-times at data-centre
/// rates plus announcement delays, short enough that a lost first copy
/// costs little.
pub const DEFAULT_RESEND_AFTER: Duration = Duration::from_millis(500);

/// A backlog that has not shrunk for this long is taken as lost and forgotten.
pub const BACKLOG_STALL: Duration = Duration::from_secs(2);

/// The shortest span over which the settle rate is sampled.
const RATE_SPAN: Duration = Duration::from_millis(100);

/// What to answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Start the upload; call [`UploadGate::finished`] when it ends, however it ends.
    Serve,
    /// Answer `Busy`: the requester tries elsewhere.
    Busy,
}

#[derive(Debug)]
struct Spread<K> {
    first_sent: HashMap<K, Instant>,
    total: usize,
    resend_after: Duration,
}

#[derive(Debug)]
struct Backlog {
    limit: u64,
    /// Bytes queued and not yet settled.
    bytes: u64,
    /// The transport's settled total when last reported.
    settled: u64,
    /// When the backlog last shrank (or started from empty).
    moved: Instant,
    /// Settle rate, bytes/s (a moving average of samples taken while a
    /// backlog waited), 0 until measured.
    rate: f64,
    /// The current rate sample: since when, and bytes settled in it.
    span_start: Instant,
    span_bytes: u64,
    /// Round trip of the connections with bytes in flight.
    rtt: Duration,
}

impl Backlog {
    fn limit(&self) -> u64 {
        let bdp = self.rate * self.rtt.as_secs_f64();
        self.limit.max((2.0 * bdp) as u64)
    }
}

/// Admission control for uploads.
#[derive(Debug)]
pub struct UploadGate<K> {
    max_uploads: usize,
    active: usize,
    spread: Option<Spread<K>>,
    backlog: Option<Backlog>,
}

impl<K: Hash + Eq + Clone> UploadGate<K> {
    /// At most `max_uploads` (at least 1) uploads at once.
    pub fn new(max_uploads: usize) -> Self {
        Self {
            max_uploads: max_uploads.max(1),
            active: 0,
            spread: None,
            backlog: None,
        }
    }

    /// Refuses requests while more than `limit` bytes (at least 1) are queued
    /// on the uplink and not yet acknowledged; `settled` is the transport's
    /// running total now (see the module docs).
    pub fn with_backlog_limit(mut self, limit: u64, now: Instant, settled: u64) -> Self {
        self.backlog = Some(Backlog {
            limit: limit.max(1),
            bytes: 0,
            settled,
            moved: now,
            rate: 0.0,
            span_start: now,
            span_bytes: 0,
            rtt: Duration::ZERO,
        });
        self
    }

    /// The round trip to the receivers now (see the module docs);
    /// [`Duration::ZERO`] when unknown, which leaves the configured limit.
    pub fn path_rtt(&mut self, rtt: Duration) {
        if let Some(b) = &mut self.backlog {
            b.rtt = rtt;
        }
    }

    /// The bound admission applies now: the configured limit or two
    /// measured bandwidth-delay products, whichever is larger (`None`
    /// without a backlog limit).
    pub fn backlog_limit(&self) -> Option<u64> {
        self.backlog.as_ref().map(Backlog::limit)
    }

    /// The transport's running total of bytes acknowledged by receivers (or
    /// lost with their connection); it only grows.
    pub fn settled(&mut self, now: Instant, total: u64) {
        if let Some(b) = &mut self.backlog {
            let delta = total.saturating_sub(b.settled);
            b.settled = b.settled.max(total);
            let waited = b.bytes > 0;
            if delta > 0 && waited {
                b.bytes = b.bytes.saturating_sub(delta);
                b.moved = now;
            }
            // Sample the rate only over spans in which bytes waited: an idle
            // uplink says nothing about its capacity.
            if waited {
                b.span_bytes += delta;
                let span = now.saturating_duration_since(b.span_start);
                if span >= RATE_SPAN {
                    let sample = b.span_bytes as f64 / span.as_secs_f64();
                    b.rate = if b.rate == 0.0 {
                        sample
                    } else {
                        0.75 * b.rate + 0.25 * sample
                    };
                    b.span_start = now;
                    b.span_bytes = 0;
                }
            } else {
                b.span_start = now;
                b.span_bytes = 0;
            }
        }
    }

    /// `bytes` of a response were handed to the transport.
    pub fn queued(&mut self, now: Instant, bytes: u64) {
        if let Some(b) = &mut self.backlog {
            if b.bytes == 0 {
                b.moved = now;
            }
            b.bytes += bytes;
        }
    }

    /// Bytes queued and not yet acknowledged (0 without a backlog limit).
    pub fn backlog(&self) -> u64 {
        self.backlog.as_ref().map_or(0, |b| b.bytes)
    }

    /// Spread first (for the origin of a version of `total` distinct chunks).
    pub fn spreading_first(mut self, total: usize, resend_after: Duration) -> Self {
        self.spread_anew(total, resend_after);
        self
    }

    /// Starts spreading a new version of `total` new chunks (running uploads keep their slots).
    pub fn spread_anew(&mut self, total: usize, resend_after: Duration) {
        self.spread = Some(Spread {
            first_sent: HashMap::new(),
            total,
            resend_after,
        });
    }

    /// Decides on a request for `key` at `now`; `Serve` counts as an upload started.
    pub fn admit(&mut self, now: Instant, key: &K) -> Admission {
        if self.active >= self.max_uploads {
            return Admission::Busy;
        }
        if let Some(b) = &mut self.backlog {
            if b.bytes > 0 && now.saturating_duration_since(b.moved) >= BACKLOG_STALL {
                b.bytes = 0;
            }
            if b.bytes >= b.limit() {
                return Admission::Busy;
            }
        }
        if let Some(sp) = &mut self.spread {
            let spreading = sp.first_sent.len() < sp.total;
            match sp.first_sent.get(key) {
                Some(t0) if spreading && now.saturating_duration_since(*t0) < sp.resend_after => {
                    return Admission::Busy;
                }
                Some(_) => {}
                None => {
                    sp.first_sent.insert(key.clone(), now);
                }
            }
        }
        self.active += 1;
        Admission::Serve
    }

    /// An admitted upload ended (sent, failed or cancelled).
    pub fn finished(&mut self) {
        debug_assert!(self.active > 0, "finished without an admitted upload");
        self.active = self.active.saturating_sub(1);
    }

    /// Uploads running now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Distinct chunks the version being spread has (spread-first only).
    pub fn spread_total(&self) -> Option<usize> {
        self.spread.as_ref().map(|s| s.total)
    }

    /// Distinct chunks that have left this uploader at least once (spread-first only).
    pub fn spread(&self) -> Option<usize> {
        self.spread.as_ref().map(|s| s.first_sent.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_uploads_run_at_once() {
        let now = Instant::now();
        let mut g = UploadGate::new(2);
        assert_eq!(g.admit(now, &1), Admission::Serve);
        assert_eq!(g.admit(now, &1), Admission::Serve);
        assert_eq!(g.admit(now, &2), Admission::Busy);
        g.finished();
        assert_eq!(g.admit(now, &2), Admission::Serve);
        assert_eq!(g.active(), 2);
    }

    #[test]
    fn a_backlog_limit_refuses_until_bytes_are_acknowledged() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut g = UploadGate::new(100).with_backlog_limit(1000, t, 5_000);
        // Written responses free their slots, but their bytes still wait.
        for _ in 0..2 {
            assert_eq!(g.admit(t, &1), Admission::Serve);
            g.queued(t, 600);
            g.finished();
        }
        assert_eq!(g.backlog(), 1200);
        assert_eq!(g.admit(t + ms(1), &1), Admission::Busy);
        // The transport's total counts from where it stood at the start.
        g.settled(t + ms(5), 5_100);
        assert_eq!(g.backlog(), 1100);
        assert_eq!(g.admit(t + ms(5), &1), Admission::Busy);
        g.settled(t + ms(9), 5_300);
        assert_eq!(g.backlog(), 900);
        assert_eq!(g.admit(t + ms(9), &1), Admission::Serve);
        g.finished();
        // More acknowledged than queued (framing, other messages): never below 0,
        // and a total that goes back (a reset counter) changes nothing.
        g.settled(t + ms(10), 9_000);
        assert_eq!(g.backlog(), 0);
        g.settled(t + ms(11), 100);
        g.queued(t + ms(11), 500);
        g.settled(t + ms(12), 9_200);
        assert_eq!(g.backlog(), 300);
    }

    #[test]
    fn the_backlog_bound_covers_two_bandwidth_delay_products() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut g = UploadGate::new(100).with_backlog_limit(1000, t, 0);
        // A far receiver: 50 ms base round trip. Nothing measured yet.
        g.path_rtt(ms(50));
        assert_eq!(g.backlog_limit(), Some(1000));
        g.queued(t, 1_000_000);
        // 100 KB settle every 10 ms while the backlog waits: 10 MB/s.
        for i in 1..=10 {
            g.settled(t + ms(10 * i), 100_000 * i);
        }
        // Two bandwidth-delay products: 2 x 10 MB/s x 50 ms.
        assert_eq!(g.backlog_limit(), Some(1_000_000));
        g.queued(t + ms(100), 500_000);
        assert_eq!(g.backlog(), 500_000);
        assert_eq!(g.admit(t + ms(100), &1), Admission::Serve);
        g.finished();
        // A near receiver: the configured limit applies again.
        g.path_rtt(ms(0));
        assert_eq!(g.backlog_limit(), Some(1000));
        assert_eq!(g.admit(t + ms(100), &1), Admission::Busy);
    }

    #[test]
    fn an_idle_uplink_does_not_lower_the_measured_rate() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut g: UploadGate<u32> = UploadGate::new(100).with_backlog_limit(1000, t, 0);
        g.path_rtt(ms(100));
        g.queued(t, 2_000_000);
        g.settled(t + ms(100), 2_000_000);
        let busy = g.backlog_limit().unwrap();
        assert_eq!(busy, 4_000_000);
        // Nothing waits for a second: nothing is sampled.
        g.settled(t + ms(1100), 2_000_100);
        assert_eq!(g.backlog_limit(), Some(busy));
    }

    #[test]
    fn a_backlog_that_never_drains_is_forgotten() {
        let t = Instant::now();
        let mut g = UploadGate::new(4).with_backlog_limit(1000, t, 0);
        assert_eq!(g.admit(t, &1), Admission::Serve);
        g.queued(t, 5000);
        g.finished();
        // Its connection died and nothing is acknowledged any more.
        assert_eq!(g.admit(t + BACKLOG_STALL / 2, &1), Admission::Busy);
        assert_eq!(g.admit(t + BACKLOG_STALL, &1), Admission::Serve);
        assert_eq!(g.backlog(), 0);
    }

    #[test]
    fn without_a_backlog_limit_bytes_are_not_counted() {
        let t = Instant::now();
        let mut g = UploadGate::new(1);
        assert_eq!(g.admit(t, &1), Admission::Serve);
        g.queued(t, 1 << 30);
        g.finished();
        assert_eq!(g.admit(t, &1), Admission::Serve);
        assert_eq!(g.backlog(), 0);
    }

    #[test]
    fn an_origin_spreads_distinct_chunks_first() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut g = UploadGate::new(1).spreading_first(3, ms(500));
        let serve = |g: &mut UploadGate<&str>, at, key| {
            let a = g.admit(at, &key);
            if a == Admission::Serve {
                g.finished();
            }
            a
        };
        assert_eq!(serve(&mut g, t, "a"), Admission::Serve);
        // A second copy of a while others never left: refused...
        assert_eq!(serve(&mut g, t + ms(10), "a"), Admission::Busy);
        assert_eq!(serve(&mut g, t + ms(10), "b"), Admission::Serve);
        // ...until resend_after has passed (its first receiver may be gone).
        assert_eq!(serve(&mut g, t + ms(500), "a"), Admission::Serve);
        assert_eq!(serve(&mut g, t + ms(501), "b"), Admission::Busy);
        // Once every chunk left once, copies are served at once.
        assert_eq!(serve(&mut g, t + ms(502), "c"), Admission::Serve);
        assert_eq!(serve(&mut g, t + ms(503), "b"), Admission::Serve);
        assert_eq!(g.spread(), Some(3));
        // The slot limit still applies while spreading.
        assert_eq!(g.admit(t + ms(504), &"a"), Admission::Serve);
        assert_eq!(g.admit(t + ms(504), &"b"), Admission::Busy);
    }
}
