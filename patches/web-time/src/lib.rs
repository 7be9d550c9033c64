//! A drop-in replacement for the `web-time` crate (native targets only),
//! wired in with `[patch.crates-io]` in the workspace's `Cargo.toml`.
//!
//! On native targets `web-time` re-exports `std::time`. libp2p (gossipsub's
//! backoffs and caches, ping, the swarm) and yamux (its 10 s keep-alive
//! pings and RTT estimate) read `web_time::Instant::now()`, so under the
//! simulator's packet tier they would run on the real clock while
//! everything else runs on simulated time: a yamux ping fires after ten
//! real seconds, at a different simulated instant in every run.
//!
//! Here [`Instant`] is `std::time::Instant` read through tokio's clock
//! (`tokio::time::Instant::now()`): the real monotonic clock in production
//! and outside any runtime, the paused or simulated clock inside a tokio
//! runtime that has one (turmoil hosts, `#[tokio::test(start_paused =
//! true)]`). Everything else is `std::time`.

pub use std::time::{Duration, SystemTime, SystemTimeError, TryFromFloatSecsError, UNIX_EPOCH};

use std::ops::{Add, AddAssign, Sub, SubAssign};

/// A monotonic instant from tokio's clock; the API of `std::time::Instant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(std::time::Instant);

impl Instant {
    /// The current instant on tokio's clock.
    pub fn now() -> Instant {
        Instant(tokio::time::Instant::now().into_std())
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    /// Time from `earlier` to `self`, or `None` if `earlier` is later.
    pub fn checked_duration_since(&self, earlier: Instant) -> Option<Duration> {
        self.0.checked_duration_since(earlier.0)
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(&self, earlier: Instant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    /// Time since `self`, on tokio's clock.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }

    /// `self + d`, if representable.
    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        self.0.checked_add(d).map(Instant)
    }

    /// `self - d`, if representable.
    pub fn checked_sub(&self, d: Duration) -> Option<Instant> {
        self.0.checked_sub(d).map(Instant)
    }
}

impl From<std::time::Instant> for Instant {
    fn from(i: std::time::Instant) -> Instant {
        Instant(i)
    }
}

impl From<Instant> for std::time::Instant {
    fn from(i: Instant) -> std::time::Instant {
        i.0
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0 + d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0 - d)
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, other: Instant) -> Duration {
        self.duration_since(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_a_paused_tokio_clock() {
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        // An hour passed on the paused clock in no real time.
        assert_eq!(t0.elapsed(), Duration::from_secs(3600));
        assert_eq!(Instant::now() - t0, Duration::from_secs(3600));
    }

    #[test]
    fn outside_a_runtime_it_is_the_real_clock() {
        let t0 = Instant::now();
        let s0 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let (a, b) = (t0.elapsed(), s0.elapsed());
        assert!(a >= Duration::from_millis(20), "{a:?}");
        assert!(a <= b + Duration::from_millis(5), "{a:?} vs {b:?}");
    }

    #[test]
    fn arithmetic_matches_std() {
        let t = Instant::now();
        let d = Duration::from_millis(1500);
        assert_eq!((t + d) - t, d);
        assert_eq!((t + d).checked_duration_since(t), Some(d));
        assert_eq!(t.checked_duration_since(t + d), None);
        assert_eq!(t.saturating_duration_since(t + d), Duration::ZERO);
        let mut u = t;
        u += d;
        u -= d;
        assert_eq!(u, t);
        assert_eq!(t.checked_add(d).map(|x| x - d), Some(t));
        assert!(t + d > t);
    }
}
