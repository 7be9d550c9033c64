//! A token bucket with time passed in (no clock reads), exact integer
//! accounting and FIFO reservations.
//!
//! Tokens are bytes. The bucket earns `rate` bytes per second up to a balance
//! of `burst` bytes. A caller either [`take`](TokenBucket::take)s what is
//! available now, or, when nothing is, [`reserve`](TokenBucket::reserve)s a
//! quantum: the balance goes negative and the reservation is *covered* once
//! the bucket has earned back to it ([`wait`](TokenBucket::wait) says how
//! long that is at the current rate). Reservations are covered in the order
//! they were made, and nobody can `take` while one is outstanding, so a waiter
//! is never overtaken by later callers: that is the fairness guarantee.
//!
//! Accounting is in nano-bytes (`bytes × 10⁹`) in `u128`, so `rate × Δt` is
//! exact for any `Δt` in nanoseconds and no rounding error accumulates.
//! [`Rate::Unlimited`] grants everything at once; a rate of zero does not
//! exist (the configuration maps 0 to unlimited, like rsync's `--bwlimit=0`).
//!
//! Invariant (checked by the proptests): the bytes used (taken, plus
//! reservations once covered, minus refunds) never exceed
//! `burst + ∫ rate dt` since the bucket was created, across rate changes.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

const NANO: u128 = 1_000_000_000;

/// A bandwidth in bytes per second, or no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// No limit: every request is granted in full at once.
    Unlimited,
    /// At most this many bytes per second (long-run), plus the burst.
    BytesPerSec(NonZeroU64),
}

impl Rate {
    /// `Unlimited` for 0, else that many bytes per second.
    pub fn from_bytes_per_sec(bps: u64) -> Rate {
        NonZeroU64::new(bps).map_or(Rate::Unlimited, Rate::BytesPerSec)
    }

    /// Bytes per second, `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            Rate::Unlimited => None,
            Rate::BytesPerSec(r) => Some(r.get()),
        }
    }
}

/// The burst the node uses for a rate: 20 ms of rate, at least 128 KiB.
///
/// 20 ms is long enough that timer granularity (1 ms in tokio) and scheduling
/// jitter on a busy host do not waste tokens (a waiter that wakes late still
/// finds what accrued meanwhile, up to 20 ms of it), and short enough that an
/// idle link released at once sends at most 20 ms of rate above the limit.
/// 128 KiB is two of the largest writes the stream sees (a Noise frame is at
/// most 65,535 bytes), so a full frame can always be granted in one piece even
/// at low rates.
pub fn default_burst(rate: Rate) -> u64 {
    const MIN: u64 = 128 * 1024;
    match rate {
        Rate::Unlimited => MIN,
        Rate::BytesPerSec(r) => (r.get() / 50).max(MIN),
    }
}

/// A place in the bucket's queue: covered once the bucket has earned up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a reservation holds tokens until it is used or refunded"]
pub struct Reservation {
    /// `debited` (nano-bytes) right after this reservation was made.
    until: u128,
    /// Bytes reserved.
    bytes: u64,
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The token bucket. See the module docs.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    burst: u64,
    /// Tokens ever earned (nano-bytes), refunds included, capped at `debited + burst`.
    credited: u128,
    /// Tokens ever handed out, taken or reserved (nano-bytes).
    debited: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (one burst available) at `now`.
    pub fn new(rate: Rate, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            credited: u128::from(burst) * NANO,
            debited: 0,
            last: now,
        }
    }

    /// A bucket with [`default_burst`].
    pub fn with_default_burst(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket::new(rate, default_burst(rate), now)
    }

    /// The current rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The current burst in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn cap(&self) -> u128 {
        self.debited + u128::from(self.burst) * NANO
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        let earned = match self.rate {
            Rate::Unlimited => self.cap(),
            Rate::BytesPerSec(r) => self.credited + u128::from(r.get()) * dt,
        };
        self.credited = earned.min(self.cap());
    }

    /// Changes the rate (and burst) at `now`: what accrued until `now` is
    /// earned at the old rate, later time at the new one. Outstanding
    /// reservations keep their place; their wait is recomputed at the new rate.
    pub fn set_rate(&mut self, now: Instant, rate: Rate, burst: u64) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst;
        self.credited = self.credited.min(self.cap());
    }

    /// Whole bytes available now (0 while reservations are outstanding).
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.rate == Rate::Unlimited {
            return u64::MAX;
        }
        self.refill(now);
        let bal = self.credited.saturating_sub(self.debited) / NANO;
        u64::try_from(bal).unwrap_or(u64::MAX)
    }

    /// Takes up to `max` bytes available now; returns how many were granted
    /// (possibly 0). Unlimited grants `max`.
    pub fn take(&mut self, now: Instant, max: u64) -> u64 {
        if self.rate == Rate::Unlimited {
            return max;
        }
        let grant = self.available(now).min(max);
        self.debited += u128::from(grant) * NANO;
        grant
    }

    /// Reserves `bytes` behind every earlier reservation. Use [`wait`](Self::wait)
    /// to learn when it is covered; [`refund`](Self::refund) what is not used.
    pub fn reserve(&mut self, now: Instant, bytes: u64) -> Reservation {
        self.refill(now);
        self.debited += u128::from(bytes) * NANO;
        Reservation {
            until: self.debited,
            bytes,
        }
    }

    /// `None` once `r` is covered, else how long until it is at the current rate.
    pub fn wait(&mut self, now: Instant, r: &Reservation) -> Option<Duration> {
        self.refill(now);
        if self.credited >= r.until {
            return None;
        }
        match self.rate {
            Rate::Unlimited => None,
            Rate::BytesPerSec(rate) => {
                let missing = r.until - self.credited;
                let ns = missing.div_ceil(u128::from(rate.get()));
                Some(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
            }
        }
    }

    /// Gives back `bytes` that were taken or reserved but not used.
    pub fn refund(&mut self, now: Instant, bytes: u64) {
        self.refill(now);
        self.credited = (self.credited + u128::from(bytes) * NANO).min(self.cap());
    }
}

#[cfg(test)]
mod tests;
