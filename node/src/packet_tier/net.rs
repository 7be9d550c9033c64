//! libp2p over turmoil's simulated TCP.
//!
//! [`TurmoilTcp`] is a libp2p [`Transport`] whose listeners and dials are
//! `turmoil::net` sockets; [`transport`] stacks on it what the daemon's TCP
//! transport stacks on real sockets: the bandwidth [`Limited`] wrapper (here
//! the host's NIC: its upload and download limits are the scenario's link
//! rate), Noise and yamux. yamux's receive-window auto-tuning, which times
//! window updates on the real clock, is switched off (see [`yamux_config`]),
//! so a run does not depend on how fast the machine running it is.
//!
//! Every write is recorded in [`Traffic`]: bytes per (source, destination)
//! host pair, for origin egress and bytes per link class, and a hash of
//! (simulated time, source, destination, ports, length) of every write, the
//! run's trace.

use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures::future::{BoxFuture, Ready};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Transport, identity, noise, yamux};
use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};
use tokio::sync::mpsc;

use crate::ratelimit::{Limited, Limiter};

/// What crossed the simulated network, shared by every host of a run.
#[derive(Default)]
pub struct Traffic {
    inner: Mutex<TrafficInner>,
}

#[derive(Default)]
struct TrafficInner {
    bytes: BTreeMap<(IpAddr, IpAddr), u64>,
    trace: u64,
    writes: u64,
}

impl Traffic {
    fn record(&self, from: SocketAddr, to: SocketAddr, len: usize) {
        let mut t = self.inner.lock().expect("traffic lock");
        *t.bytes.entry((from.ip(), to.ip())).or_default() += len as u64;
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(now.as_nanos(), from, to, len), &mut h);
        // A sum: the multiset of writes, whatever their order within a
        // step. gossipsub sends one message to its recipients in the order
        // of a randomly seeded `HashSet`, which would otherwise change the
        // hash while changing nothing else.
        t.trace = t.trace.wrapping_add(h.finish());
        t.writes += 1;
    }

    /// Bytes written from `from` to `to`.
    pub fn bytes(&self) -> BTreeMap<(IpAddr, IpAddr), u64> {
        self.inner.lock().expect("traffic lock").bytes.clone()
    }

    /// The trace hash of every write so far (an order-independent sum of
    /// per-write hashes), and how many there were.
    pub fn trace(&self) -> (u64, u64) {
        let t = self.inner.lock().expect("traffic lock");
        (t.trace, t.writes)
    }
}

/// A simulated TCP connection as a `futures` byte stream.
pub struct Io {
    inner: turmoil::net::TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    traffic: Arc<Traffic>,
}

impl Io {
    fn new(inner: turmoil::net::TcpStream, traffic: Arc<Traffic>) -> io::Result<Io> {
        Ok(Io {
            local: inner.local_addr()?,
            remote: inner.peer_addr()?,
            inner,
            traffic,
        })
    }
}

impl futures::AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }
}

impl futures::AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.traffic.record(self.local, self.remote, n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Event = TransportEvent<Ready<io::Result<Io>>, io::Error>;

/// The libp2p transport over `turmoil::net` TCP. Accepts `/ip4/A/tcp/P`
/// (optionally ending in `/p2p/…`); a listener runs as a task of the host
/// that called `listen_on`.
pub struct TurmoilTcp {
    traffic: Arc<Traffic>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    listeners: Vec<(ListenerId, tokio::task::JoinHandle<()>)>,
}

impl TurmoilTcp {
    /// A transport recording into `traffic`.
    pub fn new(traffic: Arc<Traffic>) -> TurmoilTcp {
        let (tx, rx) = mpsc::unbounded_channel();
        TurmoilTcp {
            traffic,
            tx,
            rx,
            listeners: Vec::new(),
        }
    }
}

fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut it = addr.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(a) => a.into(),
        Protocol::Ip6(a) => a.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = it.next()? else {
        return None;
    };
    match it.next() {
        None | Some(Protocol::P2p(_)) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

fn multiaddr(a: SocketAddr) -> Multiaddr {
    Multiaddr::from(a.ip()).with(Protocol::Tcp(a.port()))
}

impl Transport for TurmoilTcp {
    type Output = Io;
    type Error = io::Error;
    type ListenerUpgrade = Ready<io::Result<Io>>;
    type Dial = BoxFuture<'static, io::Result<Io>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let Some(sa) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let (tx, traffic) = (self.tx.clone(), self.traffic.clone());
        let task = tokio::spawn(async move {
            // turmoil binds only the unspecified address (or loopback);
            // the host's own address is what peers dial and are told.
            let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), sa.port());
            let listener = match turmoil::net::TcpListener::bind(any).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(TransportEvent::ListenerClosed {
                        listener_id: id,
                        reason: Err(e),
                    });
                    return;
                }
            };
            let _ = tx.send(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: addr.clone(),
            });
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let upgrade = futures::future::ready(Io::new(stream, traffic.clone()));
                        let _ = tx.send(TransportEvent::Incoming {
                            listener_id: id,
                            upgrade,
                            local_addr: addr.clone(),
                            send_back_addr: multiaddr(remote),
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(TransportEvent::ListenerError {
                            listener_id: id,
                            error: e,
                        });
                    }
                }
            }
        });
        self.listeners.push((id, task));
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match self.listeners.iter().position(|(l, _)| *l == id) {
            Some(i) => {
                self.listeners.swap_remove(i).1.abort();
                true
            }
            None => false,
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some(sa) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let traffic = self.traffic.clone();
        Ok(Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(sa).await?;
            Io::new(s, traffic)
        }))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => Poll::Ready(ev),
            // We hold a sender ourselves, so the channel never closes.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for TurmoilTcp {
    fn drop(&mut self) {
        for (_, t) in &self.listeners {
            t.abort();
        }
    }
}

/// yamux as the daemon configures it, with receive-window auto-tuning off:
/// a stream's window may grow only while the connection's budget
/// (`max_connection_receive_window`, 1 GiB by default) exceeds
/// `max_num_streams` × 256 KiB; at 4096 streams the two are equal, so every
/// window stays at yamux's 256 KiB and nothing depends on the real-time RTT
/// yamux measures.
pub fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(4096);
    c
}

/// turmoil TCP → [`Limited`] (the host NIC) → Noise → yamux.
pub fn transport(
    key: &identity::Keypair,
    limiter: Arc<Limiter>,
    traffic: Arc<Traffic>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    Ok(TurmoilTcp::new(traffic)
        .map(move |io, _| Limited::new(io, limiter.clone(), None))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux_config())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiaddrs_map_to_socket_addresses() {
        let a: Multiaddr = "/ip4/192.168.0.3/tcp/7411".parse().unwrap();
        assert_eq!(socket_addr(&a), Some("192.168.0.3:7411".parse().unwrap()));
        let id = PeerId::random();
        let b = a.clone().with(Protocol::P2p(id));
        assert_eq!(socket_addr(&b), socket_addr(&a));
        let dns: Multiaddr = "/dns4/example.com/tcp/1".parse().unwrap();
        assert_eq!(socket_addr(&dns), None);
        let udp: Multiaddr = "/ip4/1.2.3.4/udp/1".parse().unwrap();
        assert_eq!(socket_addr(&udp), None);
        assert_eq!(
            multiaddr("10.0.0.1:5".parse().unwrap()).to_string(),
            "/ip4/10.0.0.1/tcp/5"
        );
    }
}
