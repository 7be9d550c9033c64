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
        }
    }

    /// Decodes a request payload.
    pub fn decode(payload: &[u8]) -> io::Result<Request> {
        let (&t, body) = payload
            .split_first()
            .ok_or_else(|| invalid("empty request"))?;
        match t {
            tag::HELLO => postcard::from_bytes(body)
                .map(Request::Hello)
                .map_err(|e| invalid(format!("bad hello: {e}"))),
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
            tag::HELLO => postcard::from_bytes(&payload[1..])
                .map(Response::Hello)
                .map_err(|e| invalid(format!("bad hello reply: {e}"))),
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

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: u32) -> io::Result<Vec<u8>> {
    let mut header = [0u8; merkle::FRAME_HEADER_LEN];
    io.read_exact(&mut header).await?;
    let (len, crc) =
        merkle::parse_frame_header(&header, max).map_err(|e| invalid(e.to_string()))?;
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await?;
    merkle::check_frame_crc(crc, &payload).map_err(|e| invalid(e.to_string()))?;
    Ok(payload)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, payload: &[u8]) -> io::Result<()> {
    io.write_all(&merkle::frame_header(payload)).await?;
    io.write_all(payload).await?;
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
        Request::decode(&read_frame(io, MAX_REQUEST).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        Response::decode(read_frame(io, MAX_RESPONSE).await?)
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
        write_frame(io, &res.encode()).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn codec_rejects_corrupt_frames() {
        let mut framed = merkle::encode_frame(&Response::Chunk(vec![5; 64]).encode());
        let last = framed.len() - 1;
        framed[last] ^= 1;
        let r = futures::executor::block_on(read_frame(&mut &framed[..], MAX_RESPONSE));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let big = merkle::frame_header(&vec![0u8; MAX_REQUEST as usize + 1]);
        let r = futures::executor::block_on(read_frame(&mut &big[..], MAX_REQUEST));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
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
