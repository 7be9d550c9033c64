//! A drop-in replacement for `futures-timer` 3.0: `Delay` on tokio's timer.
//!
//! libp2p (swarm, request-response, ping, gossipsub, yamux glue) arms its
//! timeouts with `futures_timer::Delay`. The crates.io crate keeps one global
//! timer thread on the wall clock, which has two costs for syncnode:
//!
//! * under turmoil (the simulator's packet tier) simulated time never reaches
//!   that thread, so a simulated 2 s timeout never fires;
//! * in the daemon, every timer wakes a second thread, and the cross-thread
//!   wake-ups were about 5 % of a node's CPU in the fan-out benchmark.
//!
//! This crate is wired in with `[patch.crates-io]` in the workspace manifest.
//! Inside a tokio runtime a `Delay` is a `tokio::time::Sleep`, so it follows
//! the runtime's clock (paused or simulated time included) and is driven by the
//! runtime's own timer wheel. Created outside any runtime, it falls back to a
//! sleeping helper thread on the wall clock, so it never panics.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A future that completes once its duration has elapsed.
pub struct Delay {
    inner: Inner,
}

enum Inner {
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Thread(Arc<Mutex<ThreadState>>),
}

struct ThreadState {
    deadline: Instant,
    done: bool,
    waker: Option<Waker>,
    /// Bumped on reset so a stale helper thread does not complete the delay.
    generation: u64,
}

impl Delay {
    /// A delay that fires `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let inner = if tokio::runtime::Handle::try_current().is_ok() {
            Inner::Tokio(Box::pin(tokio::time::sleep(dur)))
        } else {
            let state = Arc::new(Mutex::new(ThreadState {
                deadline: Instant::now() + dur,
                done: false,
                waker: None,
                generation: 0,
            }));
            spawn_sleeper(&state, 0);
            Inner::Thread(state)
        };
        Delay { inner }
    }

    /// Makes the delay fire `dur` from now, whether or not it fired already.
    pub fn reset(&mut self, dur: Duration) {
        match &mut self.inner {
            Inner::Tokio(sleep) => sleep.as_mut().reset(tokio::time::Instant::now() + dur),
            Inner::Thread(state) => {
                let generation = {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.deadline = Instant::now() + dur;
                    s.done = false;
                    s.generation += 1;
                    s.generation
                };
                spawn_sleeper(state, generation);
            }
        }
    }
}

fn spawn_sleeper(state: &Arc<Mutex<ThreadState>>, generation: u64) {
    let state = Arc::clone(state);
    std::thread::spawn(move || {
        loop {
            let deadline = {
                let s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.generation != generation {
                    return;
                }
                s.deadline
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(deadline - now);
        }
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation == generation {
            s.done = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    });
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.inner {
            Inner::Tokio(sleep) => sleep.as_mut().poll(cx),
            Inner::Thread(state) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.done {
                    Poll::Ready(())
                } else {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Tokio(_) => "tokio",
            Inner::Thread(_) => "thread",
        };
        f.debug_struct("Delay").field("clock", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_the_runtime_clock() {
        // With tokio's clock paused, an hour passes instantly: a wall-clock
        // timer would hang this test.
        let start = tokio::time::Instant::now();
        Delay::new(Duration::from_secs(3600)).await;
        assert!(start.elapsed() >= Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline() {
        let start = tokio::time::Instant::now();
        let mut d = Delay::new(Duration::from_secs(1));
        d.reset(Duration::from_secs(5));
        d.await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[test]
    fn works_outside_a_runtime() {
        let start = Instant::now();
        let mut d = Delay::new(Duration::from_millis(500));
        d.reset(Duration::from_millis(20));
        futures_lite_block_on(d);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(
            took < Duration::from_millis(450),
            "reset was ignored: {took:?}"
        );
    }

    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f)
    }
}
