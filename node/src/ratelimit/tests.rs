use super::*;

fn limiter(limits: Limits, mode: Mode) -> Arc<Limiter> {
    Limiter::new(limits, mode, Arc::new(Metrics::default()))
}

fn mbit(m: f64) -> Rate {
    rate_from_mbps(m).unwrap()
}

#[test]
fn limits_are_checked_and_zero_is_unlimited() {
    assert_eq!(rate_from_mbps(0.0), Ok(Rate::Unlimited));
    assert_eq!(mbit(100.0), Rate::from_bytes_per_sec(12_500_000));
    for bad in [-1.0, f64::NAN, f64::INFINITY, 0.001, 2e6] {
        let e = rate_from_mbps(bad).unwrap_err().to_string();
        assert!(e.contains("0 for unlimited"), "{bad}: {e}");
    }
}

#[test]
fn runtime_changes_are_reported_and_published_as_gauges() {
    let m = Arc::new(Metrics::default());
    let l = Limiter::new(
        Limits {
            upload: mbit(10.0),
            download: Rate::Unlimited,
        },
        Mode::Fixed,
        m.clone(),
    );
    let st = l.status();
    assert_eq!(st.mode, "fixed");
    assert_eq!(st.upload_limit_mbps, Some(10.0));
    assert_eq!(st.download_limit_mbps, None);
    assert_eq!(m.upload_limit.load(Relaxed), 1_250_000);
    let st = l.set(
        Some(Limits {
            upload: Rate::Unlimited,
            download: mbit(50.0),
        }),
        None,
    );
    assert_eq!(st.upload_limit_mbps, None);
    assert_eq!(st.download_rate_mbps, Some(50.0));
    assert_eq!(m.upload_limit.load(Relaxed), 0);
    assert_eq!(m.download_limit.load(Relaxed), 6_250_000);
    assert!(
        m.render()
            .contains("syncnode_download_limit_bytes_per_second 6250000")
    );
}

#[test]
fn adaptive_mode_runs_upload_at_the_controller_rate_under_the_limit() {
    let l = limiter(
        Limits {
            upload: mbit(40.0),
            download: mbit(8.0),
        },
        Mode::Adaptive,
    );
    // Starts at the controller's initial rate (80 Mbit/s) clamped to the 40 limit.
    assert_eq!(l.status().upload_rate_mbps, Some(40.0));
    let now = stream::now();
    let congested = Sample {
        acked_bytes: 250_000, // 20 Mbit/s over 100 ms
        queue_delay: Some(std::time::Duration::from_millis(50)),
        retransmits: 0,
    };
    let r = l.on_sample(now + std::time::Duration::from_millis(100), &congested);
    assert_eq!(
        r,
        Rate::from_bytes_per_sec(2_500_000),
        "50 % of the rate at most"
    );
    assert_eq!(
        l.status().download_rate_mbps,
        Some(8.0),
        "download stays fixed"
    );
    // Back to fixed: the configured limit again.
    let st = l.set(None, Some(Mode::Fixed));
    assert_eq!(st.upload_rate_mbps, Some(40.0));
    assert_eq!(
        l.on_sample(now, &congested),
        mbit(40.0),
        "fixed mode ignores samples"
    );
}
