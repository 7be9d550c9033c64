use super::*;
use proptest::prelude::*;

fn bps(r: u64) -> Rate {
    Rate::from_bytes_per_sec(r)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn starts_full_and_refills_at_rate_up_to_burst() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(bps(1000), 500, t0);
    assert_eq!(b.take(t0, 10_000), 500, "a new bucket holds one burst");
    assert_eq!(b.take(t0, 10_000), 0);
    assert_eq!(b.available(t0 + ms(100)), 100, "1000 B/s for 100 ms");
    assert_eq!(b.take(t0 + ms(250), 10_000), 250);
    assert_eq!(
        b.available(t0 + Duration::from_secs(60)),
        500,
        "idle time refills only up to the burst"
    );
}

#[test]
fn reservations_are_covered_in_order_and_block_takers() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(bps(1000), 100, t0);
    assert_eq!(b.take(t0, 100), 100);
    let first = b.reserve(t0, 200);
    let second = b.reserve(t0, 300);
    assert_eq!(b.wait(t0, &first), Some(ms(200)));
    assert_eq!(b.wait(t0, &second), Some(ms(500)));
    assert_eq!(
        b.take(t0 + ms(300), 50),
        0,
        "a newcomer may not overtake the queued second reservation"
    );
    assert_eq!(b.wait(t0 + ms(300), &first), None);
    assert_eq!(b.wait(t0 + ms(300), &second), Some(ms(200)));
    assert_eq!(b.wait(t0 + ms(500), &second), None);
    assert_eq!(b.take(t0 + ms(600), 1000), 100);
}

#[test]
fn rate_change_applies_from_the_moment_of_change() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(bps(1000), 100, t0);
    assert_eq!(b.take(t0, 100), 100);
    let r = b.reserve(t0, 1000);
    assert_eq!(b.wait(t0, &r), Some(ms(1000)));
    // After 500 ms at 1000 B/s (500 earned), halve the rate: 500 missing at 500 B/s.
    b.set_rate(t0 + ms(500), bps(500), 100);
    assert_eq!(b.wait(t0 + ms(500), &r), Some(ms(1000)));
    // Raise it to 5000 B/s at 1 s: 250 missing at 5000 B/s = 50 ms.
    b.set_rate(t0 + ms(1000), bps(5000), 100);
    assert_eq!(b.wait(t0 + ms(1000), &r), Some(ms(50)));
    assert_eq!(b.wait(t0 + ms(1050), &r), None);
}

#[test]
fn lowering_the_burst_drops_saved_tokens() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(bps(1000), 1000, t0);
    b.set_rate(t0, bps(1000), 10);
    assert_eq!(b.take(t0, 10_000), 10);
}

#[test]
fn refunds_return_tokens_and_cover_waiters_earlier() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(bps(1000), 100, t0);
    let got = b.take(t0, 100);
    let r = b.reserve(t0, 100);
    assert_eq!(b.wait(t0, &r), Some(ms(100)));
    b.refund(t0, got);
    assert_eq!(b.wait(t0, &r), None, "the refunded 100 bytes cover it");
}

#[test]
fn unlimited_grants_everything_and_never_waits() {
    let t0 = Instant::now();
    let mut b = TokenBucket::with_default_burst(Rate::Unlimited, t0);
    assert_eq!(b.take(t0, u64::MAX / 2), u64::MAX / 2);
    let r = b.reserve(t0, 1 << 40);
    assert_eq!(b.wait(t0, &r), None);
    // Switching to a limit starts from one burst, not from a debt.
    b.set_rate(t0, bps(1000), 100);
    assert!(b.take(t0, 10_000) <= 100);
}

#[test]
fn zero_means_unlimited_and_burst_is_twenty_ms_at_least_128k() {
    assert_eq!(Rate::from_bytes_per_sec(0), Rate::Unlimited);
    assert_eq!(default_burst(bps(12_500_000)), 250_000);
    assert_eq!(default_burst(bps(1000)), 128 * 1024);
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Take(u64),
    Reserve(u64),
    UseCovered,
    RefundLast(u64),
    SetRate(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..50_000_000).prop_map(Op::Advance),
        (0u64..200_000).prop_map(Op::Take),
        (1u64..200_000).prop_map(Op::Reserve),
        Just(Op::UseCovered),
        (0u64..100_000).prop_map(Op::RefundLast),
        (1u64..50_000_000, 1u64..500_000).prop_map(|(r, b)| Op::SetRate(r, b)),
    ]
}

/// A client that uses what it takes and its reservations once covered.
struct Model {
    b: TokenBucket,
    now: Instant,
    /// ∫ rate dt in nano-bytes, plus the initial burst.
    allowance: u128,
    used: u128,
    pending: std::collections::VecDeque<Reservation>,
    last_grant: u64,
}

impl Model {
    fn step(&mut self, op: Op) {
        match op {
            Op::Advance(ns) => {
                let r = self.b.rate().bytes_per_sec().expect("limited in this test");
                self.allowance += u128::from(r) * u128::from(ns);
                self.now += Duration::from_nanos(ns);
            }
            Op::Take(n) => {
                let g = self.b.take(self.now, n);
                assert!(g <= n);
                self.used += u128::from(g) * NANO;
                self.last_grant = g;
            }
            Op::Reserve(n) => self.pending.push_back(self.b.reserve(self.now, n)),
            Op::UseCovered => {
                while let Some(r) = self.pending.front() {
                    if self.b.wait(self.now, r).is_some() {
                        break;
                    }
                    self.used += u128::from(r.bytes()) * NANO;
                    self.last_grant = r.bytes();
                    self.pending.pop_front();
                }
            }
            Op::RefundLast(n) => {
                let n = n.min(self.last_grant);
                self.last_grant -= n;
                self.b.refund(self.now, n);
                self.used -= u128::from(n) * NANO;
            }
            Op::SetRate(r, burst) => self.b.set_rate(self.now, bps(r), burst),
        }
    }
}

proptest! {
    #[test]
    fn never_exceeds_burst_plus_rate_times_time(
        rate in 1u64..50_000_000,
        burst in 1u64..500_000,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let now = Instant::now();
        let mut m = Model {
            b: TokenBucket::new(bps(rate), burst, now),
            now,
            allowance: u128::from(burst) * NANO,
            used: 0,
            pending: Default::default(),
            last_grant: 0,
        };
        for op in ops {
            m.step(op);
            prop_assert!(m.used <= m.allowance, "used {} > allowed {}", m.used, m.allowance);
        }
    }

    #[test]
    fn every_reservation_is_covered_after_its_wait(
        rate in 1u64..50_000_000,
        burst in 1u64..500_000,
        sizes in proptest::collection::vec(1u64..1_000_000, 1..20),
        new_rate in 1u64..50_000_000,
    ) {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bps(rate), burst, t0);
        let rs: Vec<_> = sizes.iter().map(|&n| b.reserve(t0, n)).collect();
        // Change the rate half-way through the queue: waits follow the new rate.
        let mid = t0 + b.wait(t0, &rs[rs.len() / 2]).unwrap_or_default() / 2;
        b.set_rate(mid, bps(new_rate), burst);
        let mut now = mid;
        let mut last = mid;
        for r in &rs {
            if let Some(d) = b.wait(now, r) {
                now += d;
            }
            prop_assert_eq!(b.wait(now, r), None);
            prop_assert!(now >= last, "covered out of order");
            last = now;
        }
    }

    #[test]
    fn takes_over_any_window_stay_within_burst_plus_rate(
        rate in 1u64..10_000_000,
        burst in 1u64..200_000,
        steps in proptest::collection::vec((0u64..20_000_000, 0u64..100_000), 1..300),
    ) {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bps(rate), burst, t0);
        let mut now = t0;
        let mut log: Vec<(Instant, u64)> = Vec::new();
        for (dt, n) in steps {
            now += Duration::from_nanos(dt);
            log.push((now, b.take(now, n)));
        }
        for i in 0..log.len() {
            let mut sum = 0u128;
            for &(t, g) in &log[i..] {
                sum += u128::from(g) * NANO;
                let span = (t - log[i].0).as_nanos();
                prop_assert!(sum <= u128::from(burst) * NANO + u128::from(rate) * span);
            }
        }
    }
}
