use super::*;

const MS: Duration = Duration::from_millis(100);

/// A 5 ms target (not the default) keeps the arithmetic below readable.
fn cfg(max_rate: u64) -> AdaptiveConfig {
    AdaptiveConfig {
        max_rate,
        initial_rate: 1_000_000,
        target_delay: Duration::from_millis(5),
        ..AdaptiveConfig::default()
    }
}

fn clean(acked: u64) -> Sample {
    Sample {
        acked_bytes: acked,
        queue_delay: Some(Duration::ZERO),
        retransmits: 0,
    }
}

#[test]
fn slow_start_doubles_while_clean_and_stops_at_the_ceiling() {
    let t0 = Instant::now();
    let mut a = Adaptive::new(cfg(5_000_000), t0);
    let mut now = t0;
    let mut rates = Vec::new();
    for _ in 0..5 {
        now += MS;
        let r = a.rate();
        rates.push(a.on_sample(now, &clean(r / 10)));
    }
    assert_eq!(
        rates,
        [2_000_000, 4_000_000, 5_000_000, 5_000_000, 5_000_000]
    );
    assert_eq!(a.phase(), Phase::SlowStart);
}

#[test]
fn application_limited_intervals_do_not_raise_the_rate() {
    let t0 = Instant::now();
    let mut a = Adaptive::new(cfg(u64::MAX), t0);
    // 10 KB per 100 ms = 100 KB/s, a tenth of the 1 MB/s rate.
    assert_eq!(a.on_sample(t0 + MS, &clean(10_000)), 1_000_000);
    assert_eq!(a.on_sample(t0 + 2 * MS, &clean(10_000)), 1_000_000);
}

#[test]
fn no_traffic_means_no_information_and_no_change() {
    let t0 = Instant::now();
    let mut a = Adaptive::new(cfg(u64::MAX), t0);
    assert_eq!(a.on_sample(t0 + MS, &Sample::default()), 1_000_000);
}

#[test]
fn a_retransmission_drains_to_below_the_delivered_rate_once() {
    let t0 = Instant::now();
    let mut a = Adaptive::new(
        AdaptiveConfig {
            initial_rate: 10_000_000,
            ..cfg(u64::MAX)
        },
        t0,
    );
    // Delivered 800 KB in 100 ms = 8 MB/s while the rate was 10 MB/s.
    let lossy = Sample {
        acked_bytes: 800_000,
        queue_delay: Some(Duration::from_millis(1)),
        retransmits: 3,
    };
    assert_eq!(a.on_sample(t0 + MS, &lossy), 7_200_000);
    assert_eq!(a.phase(), Phase::Steady);
    // A second loss right after: the first drain is still taking effect; hold.
    assert_eq!(a.on_sample(t0 + 2 * MS, &lossy), 7_200_000);
    // Three intervals later a loss drains again (7 MB/s delivered over 200 ms).
    let lossy2 = Sample {
        acked_bytes: 1_400_000,
        ..lossy
    };
    assert_eq!(a.on_sample(t0 + 4 * MS, &lossy2), 6_300_000);
}

#[test]
fn steady_state_holds_at_the_target_and_backs_off_above_it() {
    let t0 = Instant::now();
    let mut a = Adaptive::new(
        AdaptiveConfig {
            initial_rate: 10_000_000,
            ..cfg(u64::MAX)
        },
        t0,
    );
    let at = |d_ms: u64| Sample {
        acked_bytes: 1_000_000,
        queue_delay: Some(Duration::from_millis(d_ms)),
        retransmits: 0,
    };
    // 5 ms is the target: leaves slow start, holds.
    assert_eq!(a.on_sample(t0 + MS, &at(5)), 10_000_000);
    assert_eq!(a.phase(), Phase::Steady);
    // 10 ms: 1 + 0.1·(5−10)/5 = 0.9, but not below 95 % of the 10 MB/s delivered.
    assert_eq!(a.on_sample(t0 + 2 * MS, &at(10)), 9_500_000);
    // 20 ms with only 5 MB/s delivered: the full 0.7 → clamped 0.8 cut.
    let slow = Sample {
        acked_bytes: 500_000,
        ..at(20)
    };
    assert_eq!(a.on_sample(t0 + 3 * MS, &slow), 7_600_000);
    // Clean again: +10 %.
    assert_eq!(a.on_sample(t0 + 4 * MS, &at(0)), 8_360_000);
}

#[test]
fn lowering_the_ceiling_clamps_the_rate() {
    let t0 = Instant::now();
    let mut a = Adaptive::new(
        AdaptiveConfig {
            initial_rate: 10_000_000,
            ..cfg(u64::MAX)
        },
        t0,
    );
    a.set_max_rate(2_000_000);
    assert_eq!(a.rate(), 2_000_000);
    assert_eq!(a.on_sample(t0 + MS, &clean(200_000)), 2_000_000);
}

/// A bottleneck of `link` bytes/s with a FIFO of `limit` bytes in front of
/// it (a deep TBF), fed at the controller's rate by a sender that always has
/// data: returns (mean delivered rate, mean queueing delay) over the last
/// half of `secs` seconds.
fn simulate(link: f64, limit: f64, secs: u32) -> (f64, f64) {
    let t0 = Instant::now();
    let mut a = Adaptive::new(AdaptiveConfig::default(), t0);
    let dt = MS.as_secs_f64();
    let (mut queue, mut now) = (0.0f64, t0);
    let steps = secs * 10;
    let (mut delivered_sum, mut delay_sum) = (0.0, 0.0);
    for i in 0..steps {
        let sent = a.rate() as f64 * dt;
        let delivered = (queue + sent).min(link * dt);
        queue += sent - delivered;
        let dropped = (queue - limit).max(0.0);
        queue -= dropped;
        let delay = queue / link;
        if i >= steps / 2 {
            delivered_sum += delivered;
            delay_sum += delay;
        }
        now += MS;
        a.on_sample(
            now,
            &Sample {
                acked_bytes: delivered as u64,
                queue_delay: Some(Duration::from_secs_f64(delay)),
                retransmits: u64::from(dropped > 0.0),
            },
        );
        assert!(a.rate() <= a.config().max_rate);
    }
    let n = f64::from(steps - steps / 2);
    (delivered_sum / n / dt, delay_sum / n)
}

#[test]
fn on_a_bloated_bottleneck_it_uses_the_link_with_a_short_queue() {
    // 200 Mbit/s with a 200 ms queue (5 MB), like the benchmark's TBF.
    let link = 25_000_000.0;
    let (rate, delay) = simulate(link, 0.2 * link, 30);
    assert!(
        rate >= 0.9 * link,
        "used {:.1} % of the link",
        rate / link * 100.0
    );
    assert!(delay <= 0.015, "mean queueing delay {:.1} ms", delay * 1e3);
}

#[test]
fn on_a_fast_lan_it_finds_the_rate_and_keeps_the_queue_short() {
    // 10 Gbit/s with a 1 MB buffer (0.8 ms): losses rather than delay.
    let link = 1_250_000_000.0;
    let (rate, delay) = simulate(link, 1_000_000.0, 30);
    assert!(
        rate >= 0.8 * link,
        "used {:.1} % of the link",
        rate / link * 100.0
    );
    assert!(delay <= 0.001, "mean queueing delay {:.2} ms", delay * 1e3);
}
