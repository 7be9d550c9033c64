//! libp2p over turmoil's simulated TCP.
//!
//! [`TurmoilTcp`] is a libp2p [`Transport`] whose listeners and dials are
//! `turmoil::net` sockets; [`transport`] stacks on it what the daemon's TCP
//! transport stacks on real sockets: the bandwidth [`Limited`] wrapper (here
//! the host's NIC: its upload and download limits are the scenario's link
//! rate), Noise and yamux. yamux's receive-window auto-tuning, which
//! follows round trips yamux measures itself, is switched off (see
//! [`yamux_config`]), so a stream's window is what the daemon's config says.
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
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Ready};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Transport, identity, noise, yamux};
use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};
use tokio::sync::mpsc;

/// `SYNCNODE_SIM_WRITES=1`: print every network write (simulated µs, from,
/// to, length) to stderr, to find where two runs of one seed part.
fn dump_writes() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SYNCNODE_SIM_WRITES").is_some_and(|v| v == "1"))
}

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
        if dump_writes() {
            eprintln!("write {:>10} {from} {to} {len}", now.as_micros());
        }
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

/// Bytes a connection may hold written but not yet sent (the socket's
/// send buffer): a writer beyond it waits.
const SEND_BUFFER: usize = 256 * 1024;

/// One connection's state, shared by its [`Io`] handle and the host's [`Nic`].
struct Conn {
    stream: turmoil::net::TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    /// Written by the application: (step it was written in, bytes).
    tx: std::collections::VecDeque<(u64, Vec<u8>)>,
    tx_len: usize,
    /// Received by the NIC, not yet read by the application.
    rx: std::collections::VecDeque<u8>,
    eof: bool,
    error: Option<io::ErrorKind>,
    /// The application closed or dropped its handle: shut down once sent.
    closing: bool,
    shut: bool,
    dropped: bool,
    reader: Option<std::task::Waker>,
    writer: Option<std::task::Waker>,
}

/// The simulated step (steps since the start of the simulation).
fn step_now() -> u64 {
    (turmoil::sim_elapsed().unwrap_or_default().as_micros() / u128::from(super::step_us())) as u64
}

/// A connection's (local, remote) addresses: the NIC's order of service.
type ConnKey = (SocketAddr, SocketAddr);

/// A host's NIC: every connection's bytes go out and come in through it,
/// at most `rate` bytes per second each way, shared max-min fairly among
/// the connections with something to move.
///
/// It works in 1 ms steps: a task moves, once per step, up to a step's
/// worth of bytes written in *earlier* steps from each connection's send
/// buffer into turmoil's socket, and up to a step's worth of arrived bytes
/// into each connection's receive buffer, taking connections in the order
/// of their addresses. The order in which the host's tasks wrote within a
/// step therefore never matters. That is what makes runs repeat:
/// gossipsub sends one message to its recipients in the iteration order of
/// a randomly seeded `HashSet`, and a first-come, first-served shaper (the
/// daemon's own limiter) would turn that order into different timings.
pub struct Nic {
    rate: f64,
    /// Told of every byte put on the wire (upload admission's backlog).
    limiter: Arc<crate::ratelimit::Limiter>,
    conns: Mutex<BTreeMap<ConnKey, Arc<Mutex<Conn>>>>,
    traffic: Arc<Traffic>,
    /// Read buffer of [`Conn::receive`], kept instead of allocated and
    /// zeroed per connection per step.
    scratch: Mutex<Vec<u8>>,
}

impl Nic {
    /// A NIC of `mbps` Mbit/s each way, and its task on the current runtime.
    pub fn start(
        mbps: f64,
        traffic: Arc<Traffic>,
        limiter: Arc<crate::ratelimit::Limiter>,
    ) -> Arc<Nic> {
        let nic = Arc::new(Nic {
            rate: mbps * 1e6 / 8.0,
            limiter,
            conns: Mutex::new(BTreeMap::new()),
            traffic,
            scratch: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&nic);
        tokio::spawn(async move {
            let step = std::time::Duration::from_micros(super::step_us());
            let mut tick = tokio::time::interval(step);
            let (mut carry_up, mut carry_down) = (0.0f64, 0.0f64);
            loop {
                tick.tick().await;
                let Some(nic) = weak.upgrade() else { return };
                let per_step = nic.rate * step.as_secs_f64();
                carry_up = nic.pump(true, per_step + carry_up).min(per_step);
                carry_down = nic.pump(false, per_step + carry_down).min(per_step);
            }
        });
        nic
    }

    fn attach(&self, stream: turmoil::net::TcpStream) -> io::Result<Io> {
        let (local, remote) = (stream.local_addr()?, stream.peer_addr()?);
        let conn = Arc::new(Mutex::new(Conn {
            stream,
            local,
            remote,
            tx: Default::default(),
            tx_len: 0,
            rx: Default::default(),
            eof: false,
            error: None,
            closing: false,
            shut: false,
            dropped: false,
            reader: None,
            writer: None,
        }));
        self.conns
            .lock()
            .expect("nic lock")
            .insert((local, remote), conn.clone());
        Ok(Io { conn })
    }

    /// Moves up to `budget` bytes one way (`up`: send buffers → sockets;
    /// else sockets → receive buffers), max-min fairly; returns what is left.
    fn pump(&self, up: bool, budget: f64) -> f64 {
        let step = step_now();
        let conns: Vec<Arc<Mutex<Conn>>> = {
            let mut map = self.conns.lock().expect("nic lock");
            // Forget connections that are finished both ways.
            map.retain(|_, c| {
                let c = c.lock().expect("conn lock");
                let done = c.dropped && (c.shut || c.error.is_some());
                if done {
                    // Bytes that will never go out no longer wait either.
                    self.limiter.delivered(c.tx_len as u64);
                }
                !done
            });
            map.values().cloned().collect()
        };
        let mut left = budget.floor() as usize;
        let mut scratch = self.scratch.lock().expect("nic scratch lock");
        let mut active: Vec<usize> = (0..conns.len()).collect();
        while left > 0 && !active.is_empty() {
            let share = (left / active.len()).max(1);
            let mut still = Vec::new();
            for &i in &active {
                if left == 0 {
                    break;
                }
                let quota = share.min(left);
                let moved = {
                    let mut c = conns[i].lock().expect("conn lock");
                    if up {
                        c.send(step, quota, &self.traffic)
                    } else {
                        c.receive(quota, &mut scratch)
                    }
                };
                left -= moved;
                if moved == quota {
                    still.push(i);
                }
            }
            active = still;
        }
        if up {
            for c in &conns {
                c.lock().expect("conn lock").maybe_shutdown();
            }
            self.limiter
                .delivered((budget.floor() as usize - left) as u64);
        }
        left as f64 + budget.fract()
    }
}

impl Conn {
    /// Sends up to `quota` bytes written before `step`; returns how many.
    fn send(&mut self, step: u64, quota: usize, traffic: &Traffic) -> usize {
        if self.error.is_some() {
            return 0;
        }
        let mut sent = 0;
        while sent < quota {
            let Some((stamp, front)) = self.tx.front_mut() else {
                break;
            };
            if *stamp >= step {
                break;
            }
            let n = front.len().min(quota - sent);
            match self.stream.try_write(&front[..n]) {
                Ok(k) => {
                    traffic.record(self.local, self.remote, k);
                    sent += k;
                    self.tx_len -= k;
                    if k == front.len() {
                        self.tx.pop_front();
                    } else {
                        front.drain(..k);
                    }
                    if k < n {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.fail(e.kind());
                    break;
                }
            }
        }
        if sent > 0
            && self.tx_len < SEND_BUFFER
            && let Some(w) = self.writer.take()
        {
            w.wake();
        }
        sent
    }

    /// Takes up to `quota` arrived bytes into the receive buffer.
    /// `buf` is the NIC's scratch space, reused across connections and steps.
    fn receive(&mut self, quota: usize, buf: &mut Vec<u8>) -> usize {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if buf.len() < quota {
            buf.resize(quota, 0);
        }
        let buf = &mut buf[..quota];
        let mut got = 0;
        // turmoil hands out one segment per read: read until the quota is
        // met or nothing more has arrived.
        while got < quota && !self.eof && self.error.is_none() {
            let mut rb = ReadBuf::new(&mut buf[got..]);
            match Pin::new(&mut self.stream).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                    }
                    got += n;
                }
                Poll::Ready(Err(e)) => self.fail(e.kind()),
                Poll::Pending => break,
            }
        }
        self.rx.extend(&buf[..got]);
        if (got > 0 || self.eof)
            && let Some(w) = self.reader.take()
        {
            w.wake();
        }
        got
    }

    fn maybe_shutdown(&mut self) {
        if self.closing && !self.shut && self.tx.is_empty() && self.error.is_none() {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = Pin::new(&mut self.stream).poll_shutdown(&mut cx);
            self.shut = true;
        }
    }

    fn fail(&mut self, kind: io::ErrorKind) {
        self.error = Some(kind);
        for w in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }
}

/// A simulated TCP connection as a `futures` byte stream, through the
/// host's [`Nic`].
pub struct Io {
    conn: Arc<Mutex<Conn>>,
}

impl futures::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut c = self.conn.lock().expect("conn lock");
        if !c.rx.is_empty() {
            let n = buf.len().min(c.rx.len());
            let (a, b) = c.rx.as_slices();
            let k = n.min(a.len());
            buf[..k].copy_from_slice(&a[..k]);
            buf[k..n].copy_from_slice(&b[..n - k]);
            c.rx.drain(..n);
            return Poll::Ready(Ok(n));
        }
        if let Some(k) = c.error {
            return Poll::Ready(Err(k.into()));
        }
        if c.eof {
            return Poll::Ready(Ok(0));
        }
        c.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl futures::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut c = self.conn.lock().expect("conn lock");
        if let Some(k) = c.error {
            return Poll::Ready(Err(k.into()));
        }
        if c.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if c.tx_len >= SEND_BUFFER {
            c.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(SEND_BUFFER - c.tx_len);
        c.tx.push_back((step_now(), buf[..n].to_vec()));
        c.tx_len += n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.lock().expect("conn lock").closing = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        let mut c = self.conn.lock().expect("conn lock");
        // As a kernel does: what was written is still sent, then FIN.
        c.closing = true;
        c.dropped = true;
    }
}

type Event = TransportEvent<Ready<io::Result<Io>>, io::Error>;

/// The libp2p transport over `turmoil::net` TCP. Accepts `/ip4/A/tcp/P`
/// (optionally ending in `/p2p/…`); a listener runs as a task of the host
/// that called `listen_on`.
pub struct TurmoilTcp {
    nic: Arc<Nic>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    listeners: Vec<(ListenerId, tokio::task::JoinHandle<()>)>,
}

impl TurmoilTcp {
    /// A transport whose connections go through `nic`.
    pub fn new(nic: Arc<Nic>) -> TurmoilTcp {
        let (tx, rx) = mpsc::unbounded_channel();
        TurmoilTcp {
            nic,
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
        let (tx, nic) = (self.tx.clone(), self.nic.clone());
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
                        let upgrade = futures::future::ready(nic.attach(stream));
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
        let nic = self.nic.clone();
        Ok(Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(sa).await?;
            nic.attach(s)
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

/// yamux as the daemon configures it (512 streams, so the connection's 1
/// GiB receive budget leaves room for the daemon's `stream_window_kib`
/// grant), with receive-window auto-tuning off: auto-tuning doubles a
/// stream's window when half of it was used within two measured round
/// trips, which makes the run depend on RTT samples the daemon never
/// controls. A request-response stream lives for one response, so in the
/// daemon it hardly ever triggers. The switch is process-wide (the patched
/// yamux's `set_default_receive_window_auto_tuning`): `syncnode sim` runs no
/// real daemon.
pub fn yamux_config() -> yamux::Config {
    ::yamux::set_default_receive_window_auto_tuning(false);
    yamux::Config::default()
}

/// turmoil TCP → the host's [`Nic`] → Noise → yamux. The daemon's own
/// bandwidth limiter is not in this stack (its rates are unlimited under
/// simulation): the NIC is the network's part, the limiter a node setting.
pub fn transport(
    key: &identity::Keypair,
    nic: Arc<Nic>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    // The daemon's negotiation, fixed to the AES-GCM variant rather than
    // chosen by this host's CPU (`security::noise_config`), so the bytes on
    // the simulated wire, and so the run, are the same on every machine.
    let noise = noise::Config::new(key)?.with_aes_gcm(true);
    Ok(TurmoilTcp::new(nic)
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
