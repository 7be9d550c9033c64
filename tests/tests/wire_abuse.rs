//! A hostile peer on `/syncnode/chunks/1`: a hand-made libp2p client sends
//! frames that are oversized, truncated, corrupt, of unknown type, or
//! over a count limit. The publisher logs each one naming the peer, keeps
//! running, and still serves a regular node the whole version.

mod common;

use std::time::Duration;

use common::{CONVERGE, current_link, log_tail};
use futures::prelude::*;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};
use syncnode_tests::{checkpoint, cluster, wait_complete};

const CH: &str = "ckpt";
const PROTOCOL: StreamProtocol = StreamProtocol::new("/syncnode/chunks/1");

/// Writes requests as raw bytes (no framing) and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_request(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    merkle::encode_frame(payload)
}

/// The hostile requests, each with what it breaks.
fn hostile_requests() -> Vec<(&'static str, Vec<u8>)> {
    let mut oversized = u32::MAX.to_le_bytes().to_vec();
    oversized.extend([0u8; 4]);
    let mut truncated = frame(&[3u8; 33]);
    truncated.truncate(20);
    let mut bad_crc = frame(&[3u8; 33]);
    bad_crc[10] ^= 0xff;
    // Hello with 40 listen addresses (limit 32): postcard by hand.
    let mut hello = vec![1u8, 40];
    for _ in 0..40 {
        hello.extend([5, 4, 127, 0, 0, 1]);
    }
    hello.extend([0, 0]);
    vec![
        ("oversized length", oversized),
        ("truncated frame", truncated),
        ("bad CRC", bad_crc),
        ("unknown tag", frame(&[99, 1, 2, 3])),
        ("short hash", frame(&[3, 1, 2, 3])),
        ("too many addresses", frame(&hello)),
        ("header only", vec![1, 2]),
    ]
}

/// Connects to `addr`, sends every hostile request and checks that each is
/// answered with an `Error` reply; returns the attacker's peer id.
async fn attack(addr: Multiaddr) -> String {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .unwrap()
        .build();
    let me = swarm.local_peer_id().to_string();
    swarm.dial(addr).unwrap();
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            break peer_id;
        }
    };
    let requests = hostile_requests();
    for (_, bytes) in &requests {
        swarm.behaviour_mut().send_request(&peer, bytes.clone());
    }
    let mut outcomes = 0usize;
    while outcomes < requests.len() {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => {
                // The reply is one frame: an `Error` (tag 5) naming the problem.
                let reply = merkle::decode_frame(&response, 1 << 20)
                    .ok()
                    .flatten()
                    .map(|(p, _)| p.to_vec())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(reply.get(1..).unwrap_or_default());
                println!("attacker got a reply: {text}");
                assert_eq!(reply.first(), Some(&5), "an Error reply: {response:?}");
                assert!(text.starts_with("malformed request: "), "{text}");
                outcomes += 1
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                panic!("a hostile request got no reply: {error}");
            }
            other => println!("attacker: {other:?}"),
        }
    }
    me
}

#[test]
fn malformed_frames_are_logged_and_the_publisher_keeps_serving() {
    let (c, _tmp) = cluster();
    let src = c.root.join("src");
    checkpoint::write_v1(&src, 2 << 20, 8).unwrap();
    let mut seed = c.seed("seed", &src, CH, "v1", &[], &[]).unwrap();
    seed.wait_ready(Duration::from_secs(30)).unwrap();
    let addr: Multiaddr = seed.addr().unwrap().parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let attacker = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), attack(addr)).await })
        .expect("every hostile request gets a reply");
    drop(rt);

    let expected = hostile_requests().len();
    let logged = || {
        seed.log_text()
            .lines()
            .filter(|l| {
                l.contains("dropped a malformed request from peer") && l.contains(&attacker)
            })
            .count()
    };
    let start = std::time::Instant::now();
    while logged() < expected {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the seed logged {} of {expected} malformed requests:\n{}",
            logged(),
            log_tail(&seed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let count = logged();
    println!("{count} malformed requests logged");
    let log = seed.log_text();
    for want in [
        "exceeds the limit",
        "truncated",
        "CRC32C",
        "unknown message tag",
        "32-byte hash",
        "more than 32",
    ] {
        assert!(
            log.contains(want),
            "the log must say `{want}`:\n{}",
            log_tail(&seed)
        );
    }
    assert!(!log.contains("panicked"), "{}", log_tail(&seed));
    assert!(seed.is_running(), "{}", log_tail(&seed));

    // A regular node still gets the whole version from the same publisher.
    let mut n = c
        .node("n1", CH, &[seed.addr().unwrap()], &[&c.publisher], &[])
        .unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    wait_complete(&[&n], CH, "v1", CONVERGE).unwrap();
    assert_eq!(checkpoint::diff_trees(&src, &current_link(&n, CH)), None);
    n.kill();
    seed.kill();
}
