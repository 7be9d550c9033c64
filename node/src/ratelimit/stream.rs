//! The rate-limited byte stream: an `AsyncRead`/`AsyncWrite` adapter that
//! takes tokens from the daemon's shared buckets for every byte it moves.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use swarm::rate::{Rate, Reservation, TokenBucket};

use super::{Dir, Limiter};

/// Largest grant per read or write: one Noise frame (65,535 bytes) fits.
/// Small enough that connections queued behind each other take turns often.
pub const QUANTUM: u64 = 64 * 1024;

/// Longest single sleep: a rate raised at run time reaches waiting streams
/// within this long (they re-check their reservation when they wake).
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// The clock: tokio's (the real clock at run time, virtual time in tests).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One direction's waiting state.
#[derive(Default)]
struct Waiter {
    /// Our place in the bucket's queue, while we wait for it to be covered.
    held: Option<Reservation>,
    /// The timer we sleep on until then.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A stream whose reads and writes are paced by the [`Limiter`]'s buckets.
///
/// Before each read or write it is granted up to [`QUANTUM`] bytes, at most
/// the caller's buffer: at once if the bucket holds that many (and nobody is
/// queued), else by a reservation in the bucket's FIFO queue, covered after a
/// tokio timer sleep. Whatever the inner I/O did not use is refunded. Wire
/// bytes are counted in the metrics. Unlimited directions pass straight through.
pub struct Limited<S> {
    inner: S,
    limiter: Arc<Limiter>,
    id: u64,
    read: Waiter,
    write: Waiter,
}

impl<S> Limited<S> {
    /// Wraps `inner`; `fd` (the TCP socket) is registered for `TCP_INFO` sampling.
    pub fn new(inner: S, limiter: Arc<Limiter>, fd: Option<RawFd>) -> Limited<S> {
        let id = limiter.register(fd);
        Limited {
            inner,
            limiter,
            id,
            read: Waiter::default(),
            write: Waiter::default(),
        }
    }
}

impl<S> Drop for Limited<S> {
    fn drop(&mut self) {
        // Unregister before `inner` (and its fd) is dropped, so the sampler
        // never reads a closed or reused descriptor.
        self.limiter.unregister(self.id);
        let now = now();
        for (dir, w) in [(Dir::Down, &mut self.read), (Dir::Up, &mut self.write)] {
            if let Some(r) = w.held.take() {
                self.limiter.with_bucket(dir, |b| b.refund(now, r.bytes()));
            }
        }
    }
}

/// A grant: `None` means unlimited (use the whole buffer, count only).
type Grant = Option<u64>;

/// Gets a grant of up to `want` bytes, or arranges a wake-up and returns Pending.
fn acquire(
    limiter: &Limiter,
    dir: Dir,
    w: &mut Waiter,
    cx: &mut Context<'_>,
    want: u64,
) -> Poll<Grant> {
    loop {
        let now = now();
        let step = limiter.with_bucket(dir, |b| step(b, now, &mut w.held, want));
        match step {
            Step::Unlimited => return Poll::Ready(None),
            Step::Granted(n) => {
                w.sleep = None;
                return Poll::Ready(Some(n));
            }
            Step::Wait(d) => {
                let deadline = tokio::time::Instant::from_std(now + d.min(MAX_SLEEP));
                match w.sleep.as_mut() {
                    Some(s) => s.as_mut().reset(deadline),
                    None => w.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                let s = w.sleep.as_mut().expect("just set");
                ready!(s.as_mut().poll(cx));
                // The timer fired: the reservation should be covered now (or
                // the rate changed); loop to check.
            }
        }
    }
}

enum Step {
    Unlimited,
    Granted(u64),
    Wait(Duration),
}

/// One decision under the bucket's lock.
fn step(b: &mut TokenBucket, now: Instant, held: &mut Option<Reservation>, want: u64) -> Step {
    if b.rate() == Rate::Unlimited {
        if let Some(r) = held.take() {
            b.refund(now, r.bytes());
        }
        return Step::Unlimited;
    }
    let r = match held.take() {
        Some(r) => r,
        None if b.available(now) >= want => return Step::Granted(b.take(now, want)),
        None => b.reserve(now, want),
    };
    match b.wait(now, &r) {
        None => Step::Granted(r.bytes()),
        Some(d) => {
            *held = Some(r);
            Step::Wait(d)
        }
    }
}

use std::future::Future as _;

impl<S: Unpin> Limited<S> {
    /// Runs `io` with a grant, refunds what it did not use, counts what it did.
    fn paced(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
        len: usize,
        io: impl FnOnce(&mut S, &mut Context<'_>, usize) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return io(&mut self.inner, cx, 0);
        }
        let w = match dir {
            Dir::Down => &mut self.read,
            Dir::Up => &mut self.write,
        };
        let want = (len as u64).min(QUANTUM);
        let grant = ready!(acquire(&self.limiter, dir, w, cx, want));
        let allowed = grant.map_or(len, |g| g as usize);
        let res = io(&mut self.inner, cx, allowed);
        let used = match &res {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        if let Some(g) = grant
            && (used as u64) < g
        {
            let now = now();
            self.limiter
                .with_bucket(dir, |b| b.refund(now, g - used as u64));
        }
        self.limiter.count(dir, used);
        if dir == Dir::Up && used > 0 {
            self.limiter.wrote(self.id, used);
        }
        res
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = buf.len();
        this.paced(Dir::Down, cx, len, |s, cx, n| {
            Pin::new(s).poll_read(cx, &mut buf[..n])
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.paced(Dir::Up, cx, buf.len(), |s, cx, n| {
            Pin::new(s).poll_write(cx, &buf[..n])
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::ratelimit::{Limits, Mode};
    use futures::{AsyncReadExt, AsyncWriteExt};

    fn limiter(up_bps: u64, down_bps: u64) -> Arc<Limiter> {
        let limits = Limits {
            upload: Rate::from_bytes_per_sec(up_bps),
            download: Rate::from_bytes_per_sec(down_bps),
        };
        Limiter::new(limits, Mode::Fixed, Arc::new(Metrics::default()))
    }

    /// A sink that accepts everything.
    struct Sink(u64);
    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0 += b.len() as u64;
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_are_paced_to_the_rate_without_spinning() {
        // 1 MB/s, 128 KiB burst: 1 MiB + 1 burst takes about 1 s of (virtual) time.
        let l = limiter(1_000_000, 0);
        let mut s = Limited::new(Sink(0), l.clone(), None);
        let start = tokio::time::Instant::now();
        let data = vec![0u8; 1 << 20];
        s.write_all(&data).await.unwrap();
        s.write_all(&data[..128 * 1024]).await.unwrap();
        let took = start.elapsed().as_secs_f64();
        assert!(
            (1.0..1.2).contains(&took),
            "1.125 MiB at 1 MB/s took {took} s"
        );
        assert_eq!(s.inner.0, (1 << 20) + 128 * 1024);
        assert_eq!(l.status().wire_bytes_sent, (1 << 20) + 128 * 1024);
    }

    /// A waker that counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_sleeps_on_a_timer_instead_of_spinning() {
        let l = limiter(1000, 0);
        let mut s = Limited::new(Sink(0), l, None);
        let big = vec![0u8; 1 << 20];
        let counter = Arc::new(Counter(Default::default()));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let wakes = || counter.0.load(std::sync::atomic::Ordering::SeqCst);
        // The first write takes the 128 KiB burst's first quantum; keep
        // writing until the bucket is empty and the writer must wait.
        let mut pending = false;
        for _ in 0..4 {
            if Pin::new(&mut s).poll_write(&mut cx, &big).is_pending() {
                pending = true;
                break;
            }
        }
        assert!(pending, "an empty bucket must make the writer wait");
        assert_eq!(wakes(), 0, "no self-wake: that would be a busy poll");
        // 64 KiB at 1000 B/s is 65 s away, but sleeps are capped at 100 ms
        // (so rate changes apply fast): one wake after 100 ms, none before.
        tokio::time::advance(Duration::from_millis(90)).await;
        assert_eq!(wakes(), 0);
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(wakes(), 1);
        assert!(Pin::new(&mut s).poll_write(&mut cx, &big).is_pending());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(wakes(), 1, "re-armed for another 100 ms, not woken at once");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_paced_and_unlimited_passes_through() {
        let l = limiter(0, 500_000);
        let data = vec![7u8; 1 << 20];
        let mut r = Limited::new(futures::io::Cursor::new(data.clone()), l.clone(), None);
        let start = tokio::time::Instant::now();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        let took = start.elapsed().as_secs_f64();
        assert_eq!(got, data);
        // (1 MiB − 128 KiB burst) / 500 kB/s ≈ 1.83 s.
        assert!((1.7..2.1).contains(&took), "took {took} s");
        let mut w = Limited::new(Sink(0), l, None);
        let start = tokio::time::Instant::now();
        w.write_all(&data).await.unwrap();
        assert!(
            start.elapsed().as_millis() < 5,
            "unlimited upload must not wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connections_sharing_the_bucket_take_turns() {
        let l = limiter(1_000_000, 0);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = Limited::new(Sink(0), l, None);
                let chunk = vec![0u8; 16 * 1024];
                let start = tokio::time::Instant::now();
                while start.elapsed() < Duration::from_secs(2) {
                    s.write_all(&chunk).await.unwrap();
                }
                s.inner.0
            }));
        }
        let mut sent = Vec::new();
        for t in tasks {
            sent.push(t.await.unwrap());
        }
        let total: u64 = sent.iter().sum();
        // 2 s at 1 MB/s plus one burst, plus one write per connection at the end.
        assert!(total <= 2_000_000 + 128 * 1024 + 4 * 16 * 1024, "{sent:?}");
        assert!(total >= 1_900_000, "{sent:?}");
        let (min, max) = (sent.iter().min().unwrap(), sent.iter().max().unwrap());
        assert!(*min * 2 >= *max, "unfair shares: {sent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_takes_effect_for_waiting_streams() {
        let l = limiter(100_000, 0);
        let mut s = Limited::new(Sink(0), l.clone(), None);
        let data = vec![0u8; 1 << 20];
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            s.write_all(&data).await.unwrap();
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        l.set(Some(Limits::UNLIMITED), None);
        let done = writer.await.unwrap();
        // At 100 kB/s it would take ~9 s; unlimited after 0.5 s ends within
        // one capped sleep (100 ms) of the change.
        let took = done - start;
        assert!(took.as_millis() <= 650, "{took:?}");
    }
}
