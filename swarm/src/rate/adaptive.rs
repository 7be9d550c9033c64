//! The adaptive upload rate controller: pure, samples and time in, a rate out.
//!
//! The driver samples `TCP_INFO` of every live connection every
//! [`AdaptiveConfig::interval`] and hands the controller one [`Sample`]: the
//! bytes the peers acknowledged since the last sample, the largest queueing
//! delay seen on a connection that sent data (smoothed RTT minus that
//! connection's minimum RTT, so a far peer with a high base RTT does not look
//! congested), and the segments retransmitted meanwhile. The controller
//! returns the rate the upload token bucket should run at.
//!
//! Algorithm (a delay-based controller in the spirit of LEDBAT, with a
//! delivery-rate drain like BBR's):
//!
//! - **Slow start**: while the queueing delay stays under half the target and
//!   nothing is retransmitted, the rate doubles every interval, so a clean
//!   path is found in a few hundred milliseconds.
//! - **Steady**: each interval the rate is multiplied by
//!   `1 + gain·(target − delay)/target`, clamped to `[0.8, 1.1]`: it grows by
//!   up to 10 % while the path is clean (only 2 % once it is within 2 % of
//!   the best rate delivered lately, a max that decays 1 % per interval, so
//!   probing above the bottleneck builds little queue), holds when the standing queue equals
//!   the target, and shrinks as the queue grows beyond it, but not below
//!   95 % of the rate delivered meanwhile (with a standing queue that is the
//!   bottleneck's rate, so the queue drains without idling the link). The fixed point is
//!   "rate = bottleneck, queue = target", which is full use of the link with
//!   an RTT of idle + target.
//! - **Drain**: a retransmission (a queue overflowed) or a delay above
//!   `4 × target` means the queue is far too long: the rate drops to 90 % of
//!   what was actually delivered in the last interval, which empties the
//!   queue at once (but never below half the rate, so one stray loss in a
//!   quiet interval does not collapse it). At most one drain per 3
//!   intervals, because RTT samples lag the queue.
//! - **Application-limited** intervals (less than half the rate was used)
//!   never raise the rate, so an idle node does not drift to the maximum and
//!   then flood the link when work arrives.
//!
//! The rate always stays within `[min_rate, max_rate]`; `max_rate` is the
//! configured limit (or a very high ceiling when unlimited).

use std::time::{Duration, Instant};

/// Controller parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// Lowest rate (bytes/s). Default 1 Mbit/s.
    pub min_rate: u64,
    /// Highest rate (bytes/s): the configured limit, or the ceiling when unlimited.
    pub max_rate: u64,
    /// Rate to start from (bytes/s), clamped to `[min_rate, max_rate]`. Default 80 Mbit/s.
    pub initial_rate: u64,
    /// Standing queueing delay aimed for. Default 2 ms (see `docs/performance.md`:
    /// 5 ms gave 94 % of a bloated 200 Mbit/s link at +3.6 ms RTT, 2 ms 92-94 % at idle RTT).
    pub target_delay: Duration,
    /// Sampling period the driver uses. Default 100 ms.
    pub interval: Duration,
    /// Steady-state gain (fraction of the rate per interval at zero delay). Default 0.1.
    pub gain: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            min_rate: 125_000,
            max_rate: 12_500_000_000,
            initial_rate: 10_000_000,
            target_delay: Duration::from_millis(2),
            interval: Duration::from_millis(100),
            gain: 0.1,
        }
    }
}

/// What the driver measured over one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Bytes acknowledged by peers since the previous sample, all connections.
    pub acked_bytes: u64,
    /// Largest `srtt − min_rtt` among connections that sent data; `None` if none did.
    pub queue_delay: Option<Duration>,
    /// Segments retransmitted since the previous sample, all connections.
    pub retransmits: u64,
}

/// The controller's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Doubling until the first sign of a queue.
    SlowStart,
    /// Proportional control around the target delay.
    Steady,
}

/// The adaptive controller. See the module docs.
#[derive(Clone, Debug)]
pub struct Adaptive {
    cfg: AdaptiveConfig,
    rate: u64,
    phase: Phase,
    last: Instant,
    last_drain: Option<Instant>,
    /// Highest delivered rate seen (bytes/s), decaying 1 % per sample.
    link_est: f64,
}

impl Adaptive {
    /// A controller starting at `cfg.initial_rate` (clamped) at `now`.
    pub fn new(cfg: AdaptiveConfig, now: Instant) -> Adaptive {
        let max = cfg.max_rate.max(cfg.min_rate);
        Adaptive {
            rate: cfg.initial_rate.clamp(cfg.min_rate, max),
            cfg: AdaptiveConfig {
                max_rate: max,
                ..cfg
            },
            phase: Phase::SlowStart,
            last: now,
            last_drain: None,
            link_est: 0.0,
        }
    }

    /// The rate now (bytes/s).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }

    /// Changes the ceiling (a new configured limit); the rate is clamped to it.
    pub fn set_max_rate(&mut self, max_rate: u64) {
        self.cfg.max_rate = max_rate.max(self.cfg.min_rate);
        self.rate = self.rate.min(self.cfg.max_rate);
    }

    /// Feeds one interval's measurements taken at `now`; returns the new rate.
    pub fn on_sample(&mut self, now: Instant, s: &Sample) -> u64 {
        let dt = now.saturating_duration_since(self.last);
        self.last = now;
        let Some(delay) = s.queue_delay else {
            return self.rate; // nothing was sent: no information
        };
        if dt.is_zero() {
            return self.rate;
        }
        let delivered = s.acked_bytes as f64 / dt.as_secs_f64();
        let app_limited = delivered < 0.5 * self.rate as f64;
        let target = self.cfg.target_delay.as_secs_f64().max(1e-6);
        let q = delay.as_secs_f64();
        self.link_est = (self.link_est * 0.99).max(delivered);
        let next = if s.retransmits > 0 || q > 4.0 * target {
            self.drain(now, delivered)
        } else if self.phase == Phase::SlowStart && q < target / 2.0 {
            if app_limited {
                self.rate as f64
            } else {
                2.0 * self.rate as f64
            }
        } else {
            self.phase = Phase::Steady;
            self.steady(q / target, delivered, app_limited)
        };
        self.rate = (next.round() as u64).clamp(self.cfg.min_rate, self.cfg.max_rate);
        self.rate
    }

    /// Proportional control; `load` is the queueing delay over the target.
    fn steady(&self, load: f64, delivered: f64, app_limited: bool) -> f64 {
        let rate = self.rate as f64;
        // Far below the best rate delivered lately: come back fast; near or
        // above it, probe gently so an overshoot builds little queue.
        let up = if rate < 0.98 * self.link_est {
            1.1
        } else {
            1.02
        };
        let factor = (1.0 + self.cfg.gain * (1.0 - load)).clamp(0.8, up);
        if factor < 1.0 {
            // A standing queue: the link is full and `delivered` is its
            // rate; shrink towards the target but stay near that rate so
            // the queue drains slowly instead of the link going idle.
            (rate * factor).max(0.95 * delivered.min(rate))
        } else if app_limited {
            rate
        } else {
            rate * factor
        }
    }

    /// A long queue or a loss: fall to 90 % of what was delivered, at most
    /// once per three intervals; in between, hold (RTT samples still show the
    /// queue the last drain is emptying).
    fn drain(&mut self, now: Instant, delivered: f64) -> f64 {
        self.phase = Phase::Steady;
        let recent = self
            .last_drain
            .is_some_and(|t| now.saturating_duration_since(t) < 3 * self.cfg.interval);
        if recent {
            return self.rate as f64;
        }
        self.last_drain = Some(now);
        let rate = self.rate as f64;
        (0.9 * delivered).clamp(0.5 * rate, 0.9 * rate)
    }
}

#[cfg(test)]
mod tests;
