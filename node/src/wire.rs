//! The chunk-exchange protocol `/syncnode/chunks/1` (spec: `docs/protocol.md`).
//!
//! One request and one response per libp2p stream (request-response). Every
//! message is one CRC32C frame (`merkle::frame`): `len u32 LE | crc32c u32 LE |
//! payload`, whose payload starts with a one-byte message tag. Frames over the
//! size limit, a bad CRC, an unknown tag or a body that does not decode end the
//! stream with `InvalidData`; nothing from such a stream is used.

use std::io;

use futures::prelude::*;
use libp2p::StreamProtocol;
use merkle::{Hash, SignedRoot};
use serde::{Deserialize, Serialize};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/syncnode/chunks/1");
/// Largest request frame.
pub const MAX_REQUEST: u32 = 64 * 1024;
/// Largest response frame (a manifest of about a million chunks).
pub const MAX_RESPONSE: u32 = 64 * 1024 * 1024;
/// Largest `Chunk` response frame: the tag and the largest chunk any valid
/// manifest can hold (`merkle::chunker::MAX_CHUNK_SIZE_LIMIT`).
pub const MAX_CHUNK_FRAME: u32 = 1 + merkle::chunker::MAX_CHUNK_SIZE_LIMIT;
/// Largest `Hello` reply frame.
pub const MAX_HELLO_REPLY: u32 = 1024 * 1024;
/// Largest frame of any other response (`NotFound`, `Error`, `Ack`, `Busy`).
pub const MAX_SMALL_RESPONSE: u32 = 64 * 1024;
/// Most peer records in a `Hello` reply.
pub const MAX_PEER_RECORDS: usize = 64;
/// Most addresses in a `Hello`, a `Hello` reply or one peer record.
pub const MAX_ADDRS: usize = 32;
/// Most labels in a `Hello`.
pub const MAX_LABELS: usize = 32;
/// Most signed roots in a `Hello` reply.
pub const MAX_ROOTS: usize = 1024;
/// Most complete-version roots in a `Hello` reply.
pub const MAX_COMPLETE: usize = 4096;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Introduce ourselves; the reply carries peers and known roots.
    Hello(Hello),
    /// Ask for the encoded manifest of a version root.
    GetManifest {
        /// The version root.
        root: Hash,
    },
    /// Ask for one chunk by hash.
    GetChunk {
        /// The chunk's BLAKE3 hash.
        hash: Hash,
    },
    /// Availability: the sender holds these chunks of a version (indices into
    /// the manifest's `unique_chunks()`), or all of them.
    Have(Have),
    /// Not a wire message: an inbound request that broke the protocol
    /// (oversized, truncated, corrupt, unknown tag, undecodable body), with
    /// the reason. The codec hands it to the daemon instead of failing the
    /// stream, because libp2p reports a failed request read to nobody; the
    /// daemon logs it with the peer id and answers `Error`. It is never sent
    /// (it encodes to an empty payload, which every receiver refuses).
    Malformed(String),
}

/// Body of [`Request::Have`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The version root.
    pub root: Hash,
    /// The sender holds every chunk of the version.
    pub all: bool,
    /// Chunk indices newly held (at most [`MAX_HAVE_INDICES`] per message).
    pub chunks: Vec<u32>,
}

/// Most chunk indices in one `Have` message (keeps it well under [`MAX_REQUEST`]).
pub const MAX_HAVE_INDICES: usize = 8192;

/// What a node says about itself in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hello {
    /// Our listen addresses (multiaddr bytes).
    pub listen_addrs: Vec<Vec<u8>>,
    /// Our topology labels (region, zone, rack, host), sorted by key.
    pub labels: Vec<(String, String)>,
    /// We are a publisher (`syncnode seed`): the origin of our versions.
    pub seeding: bool,
}

/// A peer known to the replier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// libp2p peer id bytes.
    pub id: Vec<u8>,
    /// Its listen addresses (multiaddr bytes).
    pub addrs: Vec<Vec<u8>>,
}

/// The reply to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HelloReply {
    /// The replier's listen addresses.
    pub listen_addrs: Vec<Vec<u8>>,
    /// Other peers the replier is connected to (peer exchange), at most 64.
    pub peers: Vec<PeerRecord>,
    /// The latest trusted signed root per channel the replier knows.
    pub roots: Vec<SignedRoot>,
    /// Roots the replier holds completely.
    pub complete: Vec<Hash>,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Reply to `Hello`.
    Hello(HelloReply),
    /// The encoded manifest (`merkle::Manifest::encode`).
    Manifest(Vec<u8>),
    /// The chunk's bytes.
    Chunk(Vec<u8>),
    /// The replier does not hold what was asked for (yet).
    NotFound,
    /// The replier failed; the text says why.
    Error(String),
    /// Acknowledges a `Have`.
    Ack,
    /// The replier holds the chunk but is serving its maximum number of
    /// uploads; ask another holder (or again later).
    Busy,
}

impl Response {
    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello(_) => "hello",
            Response::Manifest(_) => "manifest",
            Response::Chunk(_) => "chunk",
            Response::NotFound => "not-found",
            Response::Error(_) => "error",
            Response::Ack => "ack",
            Response::Busy => "busy",
        }
    }
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const GET_MANIFEST: u8 = 2;
    pub const GET_CHUNK: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const ACK: u8 = 6;
    pub const BUSY: u8 = 7;
    pub const MANIFEST: u8 = 2;
    pub const CHUNK: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const ERROR: u8 = 5;
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn at_most(what: &str, n: usize, max: usize) -> io::Result<()> {
    if n > max {
        return Err(invalid(format!(
            "{what} lists {n} entries, more than {max}"
        )));
    }
    Ok(())
}

impl HelloReply {
    /// Checks the count limits of `docs/protocol.md` ([`MAX_PEER_RECORDS`],
    /// [`MAX_ADDRS`], [`MAX_ROOTS`], [`MAX_COMPLETE`]).
    fn check_limits(&self) -> io::Result<()> {
        at_most(
            "hello reply listen_addrs",
            self.listen_addrs.len(),
            MAX_ADDRS,
        )?;
        at_most("hello reply peers", self.peers.len(), MAX_PEER_RECORDS)?;
        for p in &self.peers {
            at_most("hello reply peer addrs", p.addrs.len(), MAX_ADDRS)?;
        }
        at_most("hello reply roots", self.roots.len(), MAX_ROOTS)?;
        at_most("hello reply complete", self.complete.len(), MAX_COMPLETE)
    }
}

/// The largest request frame for a message tag; `None` for an unknown tag.
pub fn request_limit(tag: u8) -> Option<u32> {
    matches!(
        tag,
        tag::HELLO | tag::GET_MANIFEST | tag::GET_CHUNK | tag::HAVE
    )
    .then_some(MAX_REQUEST)
}

/// The largest response frame for a message tag; `None` for an unknown tag.
pub fn response_limit(tag: u8) -> Option<u32> {
    match tag {
        tag::HELLO => Some(MAX_HELLO_REPLY),
        tag::MANIFEST => Some(MAX_RESPONSE),
        tag::CHUNK => Some(MAX_CHUNK_FRAME),
        tag::NOT_FOUND | tag::ERROR | tag::ACK | tag::BUSY => Some(MAX_SMALL_RESPONSE),
        _ => None,
    }
}

fn hash_at(body: &[u8]) -> io::Result<Hash> {
    let arr: [u8; 32] = body
        .try_into()
        .map_err(|_| invalid(format!("expected a 32-byte hash, got {} bytes", body.len())))?;
    Ok(Hash(arr))
}

impl Request {
    /// Encodes the payload (tag and body) of the request frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Hello(h) => {
                let mut v = vec![tag::HELLO];
                v.extend(postcard::to_stdvec(h).expect("postcard encodes to a Vec"));
                v
            }
            Request::GetManifest { root } => [&[tag::GET_MANIFEST][..], &root.0].concat(),
            Request::GetChunk { hash } => [&[tag::GET_CHUNK][..], &hash.0].concat(),
            Request::Have(h) => {
                let mut v = vec![tag::HAVE];
                v.extend(postcard::to_stdvec(h).expect("postcard encodes to a Vec"));
                v
            }
            Request::Malformed(_) => Vec::new(),
        }
    }

    /// Decodes a request payload.
    pub fn decode(payload: &[u8]) -> io::Result<Request> {
        let (&t, body) = payload
            .split_first()
            .ok_or_else(|| invalid("empty request"))?;
        match t {
            tag::HELLO => {
                let h: Hello =
                    postcard::from_bytes(body).map_err(|e| invalid(format!("bad hello: {e}")))?;
                at_most("hello listen_addrs", h.listen_addrs.len(), MAX_ADDRS)?;
                at_most("hello labels", h.labels.len(), MAX_LABELS)?;
                Ok(Request::Hello(h))
            }
            tag::GET_MANIFEST => Ok(Request::GetManifest {
                root: hash_at(body)?,
            }),
            tag::GET_CHUNK => Ok(Request::GetChunk {
                hash: hash_at(body)?,
            }),
            tag::HAVE => {
                let h: Have =
                    postcard::from_bytes(body).map_err(|e| invalid(format!("bad have: {e}")))?;
                if h.chunks.len() > MAX_HAVE_INDICES {
                    return Err(invalid(format!(
                        "have lists {} chunks, more than {MAX_HAVE_INDICES}",
                        h.chunks.len()
                    )));
                }
                Ok(Request::Have(h))
            }
            t => Err(invalid(format!("unknown request tag {t}"))),
        }
    }
}

impl Response {
    /// Encodes the payload (tag and body) of the response frame.
    pub fn encode(&self) -> Vec<u8> {
        let (t, body): (u8, &[u8]) = match self {
            Response::Hello(h) => {
                let mut v = vec![tag::HELLO];
                v.extend(postcard::to_stdvec(h).expect("postcard encodes to a Vec"));
                return v;
            }
            Response::Manifest(b) => (tag::MANIFEST, b),
            Response::Chunk(b) => (tag::CHUNK, b),
            Response::NotFound => (tag::NOT_FOUND, &[]),
            Response::Error(s) => (tag::ERROR, s.as_bytes()),
            Response::Ack => (tag::ACK, &[]),
            Response::Busy => (tag::BUSY, &[]),
        };
        let mut v = Vec::with_capacity(1 + body.len());
        v.push(t);
        v.extend_from_slice(body);
        v
    }

    /// Decodes a response payload.
    pub fn decode(mut payload: Vec<u8>) -> io::Result<Response> {
        let Some(&t) = payload.first() else {
            return Err(invalid("empty response"));
        };
        match t {
            tag::HELLO => {
                let h: HelloReply = postcard::from_bytes(&payload[1..])
                    .map_err(|e| invalid(format!("bad hello reply: {e}")))?;
                h.check_limits()?;
                Ok(Response::Hello(h))
            }
            tag::MANIFEST | tag::CHUNK => {
                payload.remove(0);
                Ok(if t == tag::MANIFEST {
                    Response::Manifest(payload)
                } else {
                    Response::Chunk(payload)
                })
            }
            tag::NOT_FOUND => Ok(Response::NotFound),
            tag::ERROR => Ok(Response::Error(
                String::from_utf8_lossy(&payload[1..]).into_owned(),
            )),
            tag::ACK => Ok(Response::Ack),
            tag::BUSY => Ok(Response::Busy),
            t => Err(invalid(format!("unknown response tag {t}"))),
        }
    }
}

/// Reads one frame: the 8-byte header, whose length must be at most `max`,
/// then the tag byte, whose own limit (`limit(tag)`, `None` for an unknown
/// tag) the length must also respect, then the rest of the payload, and
/// checks the CRC. Memory grows with the bytes actually received (at most
/// twice them, plus 64 KiB), never with the length a peer claims, so a
/// truncated or lying frame costs what it sent.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: u32,
    limit: fn(u8) -> Option<u32>,
) -> io::Result<Vec<u8>> {
    Ok(match read_frame_parts(io, max, limit).await? {
        None => Vec::new(),
        Some((tag, body)) => {
            let mut v = Vec::with_capacity(1 + body.len());
            v.push(tag);
            v.extend_from_slice(&body);
            v
        }
    })
}

/// [`read_frame`], returning the payload as its tag and the rest (`None`
/// for an empty payload): a chunk's bytes arrive in their own buffer, which
/// is read into with few copies (each byte zeroed once, buffers grown by
/// doubling from 64 KiB) and never shifted to drop the tag.
pub async fn read_frame_parts<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: u32,
    limit: fn(u8) -> Option<u32>,
) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; merkle::FRAME_HEADER_LEN];
    io.read_exact(&mut header)
        .await
        .map_err(|e| truncated(e, "frame header", 0))?;
    let (len, crc) =
        merkle::parse_frame_header(&header, max).map_err(|e| invalid(e.to_string()))?;
    if len == 0 {
        merkle::check_frame_crc(crc, &[]).map_err(|e| invalid(e.to_string()))?;
        return Ok(None);
    }
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag)
        .await
        .map_err(|e| truncated(e, "frame payload", len))?;
    let Some(tag_max) = limit(tag[0]) else {
        return Err(invalid(format!("unknown message tag {}", tag[0])));
    };
    if len > tag_max {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {tag_max} bytes for message tag {}",
            tag[0]
        )));
    }
    let want = len as usize - 1;
    let mut body = Vec::new();
    let mut filled = 0;
    while filled < want {
        if filled == body.len() {
            let step = (want - filled).min(filled.max(64 * 1024));
            body.reserve_exact(step);
            body.resize(filled + step, 0);
        }
        let n = match io.read(&mut body[filled..]).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "truncated frame: the header announced {len} bytes, the stream ended after {}",
                    1 + filled
                ),
            ));
        }
        filled += n;
    }
    merkle::check_frame_crc_parts(crc, tag[0], &body).map_err(|e| invalid(e.to_string()))?;
    Ok(Some((tag[0], body)))
}

/// Whether a codec error means the peer broke the protocol (rather than the
/// connection failing): the kinds `read_frame` and the decoders return.
pub fn is_malformed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

fn truncated(e: io::Error, what: &str, len: u32) -> io::Error {
    if e.kind() != io::ErrorKind::UnexpectedEof {
        return e;
    }
    let msg = if len == 0 {
        format!("truncated {what}: the stream ended before 8 header bytes")
    } else {
        format!("truncated {what}: the header announced {len} bytes, the stream ended first")
    };
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, payload: &[u8]) -> io::Result<()> {
    io.write_all(&merkle::frame_header(payload)).await?;
    io.write_all(payload).await?;
    io.flush().await
}

/// Writes a frame whose payload is `tag` then `body`, without joining them.
async fn write_frame_parts<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    tag: u8,
    body: &[u8],
) -> io::Result<()> {
    let mut h = [0u8; merkle::FRAME_HEADER_LEN + 1];
    h[..merkle::FRAME_HEADER_LEN].copy_from_slice(&merkle::frame_header_parts(tag, body));
    h[merkle::FRAME_HEADER_LEN] = tag;
    io.write_all(&h).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// The request-response codec.
#[derive(Debug, Clone, Default)]
pub struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let read = match read_frame(io, MAX_REQUEST, request_limit).await {
            Ok(payload) => Request::decode(&payload),
            Err(e) => Err(e),
        };
        match read {
            Ok(r) => Ok(r),
            // Protocol violations go to the daemon, which knows the peer.
            Err(e) if is_malformed(&e) => Ok(Request::Malformed(e.to_string())),
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame_parts(io, MAX_RESPONSE, response_limit).await? {
            Some((tag::CHUNK, body)) => Ok(Response::Chunk(body)),
            Some((tag::MANIFEST, body)) => Ok(Response::Manifest(body)),
            Some((t, body)) => {
                let mut payload = Vec::with_capacity(1 + body.len());
                payload.push(t);
                payload.extend_from_slice(&body);
                Response::decode(payload)
            }
            None => Response::decode(Vec::new()),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match &res {
            Response::Chunk(b) => write_frame_parts(io, tag::CHUNK, b).await,
            Response::Manifest(b) => write_frame_parts(io, tag::MANIFEST, b).await,
            _ => write_frame(io, &res.encode()).await,
        }
    }
}

/// Messages on a channel's gossipsub topic `syncnode/1/<channel>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    /// A publisher's signed root for a new version.
    Announce(SignedRoot),
    /// The sender (gossipsub's authenticated source) holds this root completely.
    Complete(Hash),
}

impl Gossip {
    /// postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encodes to a Vec")
    }
    /// Decodes; never panics.
    pub fn decode(b: &[u8]) -> Result<Gossip, postcard::Error> {
        postcard::from_bytes(b)
    }
}

/// The gossipsub topic of a channel.
pub fn topic(channel: &str) -> libp2p::gossipsub::IdentTopic {
    libp2p::gossipsub::IdentTopic::new(format!("syncnode/1/{channel}"))
}

/// A test-only global allocator that records, per thread, the largest single
/// allocation, so tests can assert that a decoder never allocates what a peer
/// merely claims.
#[cfg(test)]
#[allow(unsafe_code)]
mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    struct Probe;

    // SAFETY: forwards to `System` unchanged; only records sizes.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    fn note(size: usize) {
        // `try_with`: the slot may already be gone while a thread exits.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Forgets earlier allocations of this thread.
    pub fn reset() {
        LARGEST.with(|l| l.set(0));
    }

    /// The largest allocation of this thread since [`reset`].
    pub fn largest() -> usize {
        LARGEST.with(|l| l.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The codec writes chunk and manifest responses as tag and body
    /// without joining them: the bytes on the wire are exactly those of
    /// the joined frame, they read back equal, and a flipped bit fails the CRC.
    #[test]
    fn split_frames_are_the_same_bytes_and_read_back() {
        use futures::io::Cursor;
        use libp2p::request_response::Codec as _;
        let p = PROTOCOL;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        for r in [
            Response::Chunk(big.clone()),
            Response::Chunk(Vec::new()),
            Response::Manifest(vec![1, 2, 3]),
            Response::Busy,
            Response::Hello(HelloReply::default()),
        ] {
            let mut out = Cursor::new(Vec::new());
            futures::executor::block_on(Codec.write_response(&p, &mut out, r.clone())).unwrap();
            let bytes = out.into_inner();
            assert_eq!(bytes, merkle::encode_frame(&r.encode()), "{r:?}");
            let back =
                futures::executor::block_on(Codec.read_response(&p, &mut &bytes[..])).unwrap();
            assert_eq!(back, r);
        }
        let mut bytes = merkle::encode_frame(&Response::Chunk(big).encode());
        bytes[100_000] ^= 1;
        let e = futures::executor::block_on(Codec.read_response(&p, &mut &bytes[..])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn roundtrips() {
        let h = Hash::of(b"x");
        for r in [
            Request::Hello(Hello {
                listen_addrs: vec![vec![1, 2]],
                labels: vec![("rack".into(), "r1".into())],
                seeding: true,
            }),
            Request::GetManifest { root: h },
            Request::GetChunk { hash: h },
            Request::Have(Have {
                root: h,
                all: false,
                chunks: vec![0, 7, 4096],
            }),
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Response::Hello(HelloReply::default()),
            Response::Manifest(vec![1, 2, 3]),
            Response::Chunk(vec![9; 100]),
            Response::NotFound,
            Response::Error("disk".into()),
            Response::Ack,
            Response::Busy,
        ] {
            assert_eq!(Response::decode(r.encode()).unwrap(), r);
        }
    }

    fn read_req(bytes: &[u8]) -> io::Result<Vec<u8>> {
        futures::executor::block_on(read_frame(&mut &bytes[..], MAX_REQUEST, request_limit))
    }

    fn read_resp(bytes: &[u8]) -> io::Result<Vec<u8>> {
        futures::executor::block_on(read_frame(&mut &bytes[..], MAX_RESPONSE, response_limit))
    }

    /// A frame header announcing `len` payload bytes (CRC of nothing).
    fn header(len: u32) -> Vec<u8> {
        let mut h = len.to_le_bytes().to_vec();
        h.extend(0u32.to_le_bytes());
        h
    }

    #[test]
    fn codec_rejects_corrupt_frames() {
        let mut framed = merkle::encode_frame(&Response::Chunk(vec![5; 64]).encode());
        let last = framed.len() - 1;
        framed[last] ^= 1;
        let e = read_resp(&framed).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("CRC32C"), "{e}");
        framed[last] ^= 1;
        assert_eq!(
            Response::decode(read_resp(&framed).unwrap()).unwrap(),
            Response::Chunk(vec![5; 64])
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        // Only the header arrives: the refusal cannot have waited for (or
        // allocated) the payload, or this would be UnexpectedEof.
        for (bytes, max) in [
            (header(MAX_REQUEST + 1), MAX_REQUEST),
            (header(u32::MAX), MAX_REQUEST),
        ] {
            let e = read_req(&bytes).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains(&format!("limit of {max}")), "{e}");
        }
        let e = read_resp(&header(MAX_RESPONSE + 1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // Under the frame limit but over the limit of its message type: refused
        // once the tag byte is in, before the body.
        for (t, len) in [
            (tag::CHUNK, MAX_CHUNK_FRAME + 1),
            (tag::HELLO, MAX_HELLO_REPLY + 1),
            (tag::NOT_FOUND, MAX_SMALL_RESPONSE + 1),
        ] {
            let mut bytes = header(len);
            bytes.push(t);
            let e = read_resp(&bytes).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "tag {t}: {e}");
            assert!(e.to_string().contains(&format!("message tag {t}")), "{e}");
        }
    }

    #[test]
    fn truncated_frames_say_so() {
        let framed = merkle::encode_frame(
            &Request::GetChunk {
                hash: Hash::of(b"x"),
            }
            .encode(),
        );
        for cut in [0, 3, 8, 9, framed.len() - 1] {
            let e = read_req(&framed[..cut]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {e}");
            assert!(e.to_string().contains("truncated"), "cut {cut}: {e}");
        }
        assert!(read_req(&framed).is_ok());
    }

    #[test]
    fn unknown_tags_are_refused_before_their_body() {
        for t in [0u8, 5, 8, 200, 255] {
            let mut bytes = header(100);
            bytes.push(t);
            let e = read_req(&bytes).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("unknown message tag"), "{e}");
        }
        for t in [0u8, 8, 255] {
            let mut bytes = header(100);
            bytes.push(t);
            assert!(read_resp(&bytes).is_err());
            assert!(Response::decode(vec![t]).is_err());
            assert!(Request::decode(&[t]).is_err());
        }
        assert!(
            Request::decode(&[tag::GET_CHUNK; 32]).is_err(),
            "31-byte hash"
        );
        assert!(Request::decode(&[]).is_err());
        assert!(Response::decode(vec![]).is_err());
    }

    #[test]
    fn a_lying_length_costs_only_what_was_sent() {
        // The header claims a 64 MiB manifest; 1000 bytes arrive, then EOF.
        let mut bytes = header(MAX_RESPONSE);
        bytes.push(tag::MANIFEST);
        bytes.extend(vec![7u8; 1000]);
        alloc_probe::reset();
        let e = read_resp(&bytes).unwrap_err();
        let largest = alloc_probe::largest();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(
            largest < 1 << 20,
            "allocated {largest} bytes for a frame that sent 1 KB"
        );
    }

    #[test]
    fn codec_hands_malformed_requests_to_the_daemon() {
        use libp2p::request_response::Codec as _;
        let read = |bytes: &[u8]| {
            futures::executor::block_on(Codec.read_request(&PROTOCOL, &mut &bytes[..]))
        };
        let good = merkle::encode_frame(
            &Request::GetChunk {
                hash: Hash::of(b"x"),
            }
            .encode(),
        );
        assert_eq!(
            read(&good).unwrap(),
            Request::GetChunk {
                hash: Hash::of(b"x")
            }
        );
        for (bytes, want) in [
            (header(u32::MAX), "exceeds the limit"),
            (good[..20].to_vec(), "truncated"),
            (merkle::encode_frame(&[99]), "unknown"),
            (merkle::encode_frame(&[tag::GET_CHUNK, 1]), "32-byte hash"),
        ] {
            match read(&bytes).unwrap() {
                Request::Malformed(why) => assert!(why.contains(want), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(Request::decode(&Request::Malformed("x".into()).encode()).is_err());
    }

    #[test]
    fn hello_counts_are_limited() {
        let addr = vec![4, 127, 0, 0, 1];
        let ok = HelloReply {
            peers: vec![
                PeerRecord {
                    id: vec![1],
                    addrs: vec![addr.clone(); MAX_ADDRS]
                };
                MAX_PEER_RECORDS
            ],
            ..Default::default()
        };
        assert!(Response::decode(Response::Hello(ok.clone()).encode()).is_ok());
        let mut too_many = ok.clone();
        too_many.peers.push(too_many.peers[0].clone());
        let mut long = ok.clone();
        long.peers[3].addrs.push(addr.clone());
        let mut roots = ok;
        roots.complete = vec![Hash::of(b"r"); MAX_COMPLETE + 1];
        for bad in [too_many, long, roots] {
            let e = Response::decode(Response::Hello(bad).encode()).unwrap_err();
            assert!(e.to_string().contains("more than"), "{e}");
        }
        let hello = Hello {
            listen_addrs: vec![addr; MAX_ADDRS + 1],
            ..Default::default()
        };
        let e = Request::decode(&Request::Hello(hello).encode()).unwrap_err();
        assert!(e.to_string().contains("listen_addrs"), "{e}");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(&b);
            let _ = Response::decode(b.clone());
            let _ = Gossip::decode(&b);
        }
    }
}
