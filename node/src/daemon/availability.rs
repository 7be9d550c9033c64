//! Availability and topology: which chunks each peer holds, and how near it is.
//!
//! Every node keeps, per version, an append-only log of the chunk indices it
//! holds (indices into the manifest's `unique_chunks()`, the same on every
//! node). Every `have_interval_ms` (default 100 ms) it pushes to each
//! connected peer the part of the log that peer has not seen yet (`Have`;
//! nothing when nothing is new), or `Have { all: true }` once the version is
//! complete, so a verified chunk becomes fetchable from it within one
//! interval plus a round trip: data flows through the swarm in a pipeline.
//! A peer that does not know the version yet answers `NotFound`; it is sent
//! the whole log again 500 ms later. `Have`s for a version whose manifest is
//! not here yet are buffered (bounded) and applied when the fetch starts.
//!
//! Topology: peers exchange labels (region, zone, rack, host) in `Hello`;
//! [`distance`] maps them to 0 (same host) … 4 (elsewhere or unknown), fed to
//! the fetch as `PeerTopology`; the members of our rack (distance ≤ 1) decide
//! our `LocalGroup` rank, which splits the job of bringing chunks into the
//! rack so that cross-rack traffic stays near one copy per rack.

use std::collections::BTreeMap;

use super::*;
use crate::wire::{Have, MAX_HAVE_INDICES};

/// Most buffered `Have` indices per version before its manifest arrives.
const MAX_EARLY: usize = 1 << 20;

/// What we sent one peer about one version.
#[derive(Debug, Default)]
struct Sent {
    cursor: usize,
    all: bool,
    retry_at: Option<Instant>,
    /// A first `Have` went out (possibly empty): the peer knows we announce.
    opened: bool,
}

/// Per-version availability state.
#[derive(Debug, Default)]
pub(super) struct VersionHave {
    /// Chunk indices we hold, in the order we got them.
    held: Vec<u32>,
    sent: Map<PeerId, Sent>,
    /// Haves received before the fetch started: peer → (all, indices).
    early: Map<PeerId, (bool, Vec<u32>)>,
    early_len: usize,
}

impl VersionHave {
    /// Records chunks we now hold.
    pub(super) fn hold(&mut self, chunks: impl IntoIterator<Item = u32>) {
        self.held.extend(chunks);
    }

    /// Forgets what was sent to a peer (it reconnects with a clean slate).
    pub(super) fn forget_peer(&mut self, peer: &PeerId) {
        self.sent.remove(peer);
    }

    fn buffer(&mut self, peer: PeerId, h: Have) -> bool {
        if self.early_len + h.chunks.len() > MAX_EARLY {
            return false;
        }
        self.early_len += h.chunks.len();
        let e = self.early.entry(peer).or_default();
        e.0 |= h.all;
        e.1.extend(h.chunks);
        true
    }
}

/// Topology distance between two label sets: 0 same host, 1 same rack,
/// 2 same zone, 3 same region, 4 elsewhere. A level missing on either side
/// counts as different, so nodes without labels are all "elsewhere".
pub fn distance(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> u8 {
    let same = |k: &str| matches!((a.get(k), b.get(k)), (Some(x), Some(y)) if x == y);
    if !same("region") {
        4
    } else if !same("zone") {
        3
    } else if !same("rack") {
        2
    } else if !same("host") {
        1
    } else {
        0
    }
}

impl Daemon {
    /// Pushes new availability to every connected peer.
    pub(super) fn flush_have(&mut self) {
        self.send_have(None, None);
    }

    /// Pushes new availability for `root` (all versions if `None`) to
    /// `peer` (every connected peer if `None`). Besides the `have_interval`
    /// tick, a version's first `Have` goes out at once: when its fetch
    /// starts, and to a peer whose own `Have` shows it now knows the
    /// version. Until a peer has it, we are a peer of unknown availability
    /// to it, which it may probe with requests we can only answer
    /// `NotFound` (30 nodes in the packet tier: most nodes' first chunk
    /// came 0.16-0.22 s in, after such probes).
    pub(super) fn send_have(&mut self, root: Option<Hash>, peer: Option<PeerId>) {
        if self.partial_origin() {
            return;
        }
        let now = now();
        let connected: Vec<PeerId> = match peer {
            Some(p) => self.live_peers().into_iter().filter(|c| *c == p).collect(),
            None => self.live_peers(),
        };
        let mut out = Vec::new();
        for (r, v) in self.versions.iter_mut() {
            if root.is_some_and(|want| want != *r) {
                continue;
            }
            let root = r;
            let all = matches!(v.state, VState::Complete | VState::Materializing);
            if !all && !matches!(v.state, VState::Fetching) {
                continue;
            }
            for p in &connected {
                let s = v.have.sent.entry(*p).or_default();
                if s.retry_at.is_some_and(|t| t > now) || s.all {
                    continue;
                }
                s.retry_at = None;
                if all {
                    s.all = true;
                    out.push((
                        *p,
                        Have {
                            root: *root,
                            all: true,
                            chunks: Vec::new(),
                        },
                    ));
                } else if s.cursor < v.have.held.len() || !s.opened {
                    // The first one goes out even empty: "I fetch this
                    // version and hold nothing yet", so the peer does not
                    // probe us with requests we can only answer `NotFound`
                    // (a peer that never announced may hold anything).
                    let end = (s.cursor + MAX_HAVE_INDICES).min(v.have.held.len());
                    let chunks = v.have.held[s.cursor..end].to_vec();
                    s.cursor = end;
                    s.opened = true;
                    out.push((
                        *p,
                        Have {
                            root: *root,
                            all: false,
                            chunks,
                        },
                    ));
                }
            }
        }
        for (peer, have) in out {
            let root = have.root;
            let id = self
                .swarm
                .behaviour_mut()
                .rr
                .send_request(&peer, Request::Have(have));
            self.pending.insert(id, Pending::Have { root });
        }
    }

    /// A `Have` was not taken (the peer does not know the version yet, or the
    /// request failed): send the whole log again a little later.
    pub(super) fn have_refused(&mut self, peer: PeerId, root: Hash) {
        if let Some(v) = self.versions.get_mut(&root) {
            v.have.sent.insert(
                peer,
                Sent {
                    cursor: 0,
                    all: false,
                    retry_at: Some(now() + Duration::from_millis(500)),
                    opened: false,
                },
            );
        }
    }

    /// Applies a peer's `Have`; returns the response. The peer evidently
    /// knows the version now: if our own first `Have` for it has not gone
    /// out (or was refused, the peer not knowing it then), it goes now.
    pub(super) fn on_have(&mut self, peer: PeerId, have: Have) -> Response {
        let root = have.root;
        let owe = self.versions.get_mut(&root).is_some_and(|v| {
            let s = v.have.sent.entry(peer).or_default();
            if s.opened || s.all {
                false
            } else {
                s.retry_at = None;
                true
            }
        });
        let resp = self.apply_have(peer, have);
        if owe {
            self.send_have(Some(root), Some(peer));
        }
        resp
    }

    fn apply_have(&mut self, peer: PeerId, have: Have) -> Response {
        let now = now();
        let Some(v) = self.versions.get_mut(&have.root) else {
            return Response::NotFound;
        };
        let Some(f) = v.fetch.as_mut() else {
            if matches!(v.state, VState::Manifest { .. }) {
                return if v.have.buffer(peer, have) {
                    Response::Ack
                } else {
                    Response::NotFound
                };
            }
            return Response::Ack; // complete or failed: nothing to learn
        };
        if have.all {
            f.handle(now, Input::PeerHasAll { peer });
        }
        if !have.all {
            // Empty too: it marks the peer as one that announces (known to
            // hold only what it said), not one of unknown availability.
            let n = v.chunks.len() as u32;
            let chunks = have
                .chunks
                .into_iter()
                .filter(|&c| c < n)
                .map(ChunkIdx)
                .collect();
            f.handle(now, Input::PeerHas { peer, chunks });
        }
        Response::Ack
    }

    /// Feeds buffered haves, topology and our rack group into a new fetch.
    pub(super) fn prime_fetch(&mut self, root: Hash) {
        let now = now();
        let group = self.local_group();
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        let Some(f) = v.fetch.as_mut() else { return };
        let n = v.chunks.len() as u32;
        for (peer, (all, chunks)) in std::mem::take(&mut v.have.early) {
            if all {
                f.handle(now, Input::PeerHasAll { peer });
            }
            let chunks = chunks
                .into_iter()
                .filter(|&c| c < n)
                .map(ChunkIdx)
                .collect();
            f.handle(now, Input::PeerHas { peer, chunks });
        }
        v.have.early_len = 0;
        for (peer, info) in &self.peers {
            if info.connections > 0
                && let Some(distance) = info.distance
            {
                f.handle(
                    now,
                    Input::PeerTopology {
                        peer: *peer,
                        distance,
                    },
                );
            }
        }
        f.handle(now, group);
    }

    /// Records a peer's labels and role from its `Hello`.
    pub(super) fn on_peer_hello(
        &mut self,
        peer: PeerId,
        labels: Vec<(String, String)>,
        seeding: bool,
    ) {
        let theirs: BTreeMap<String, String> = labels.into_iter().take(16).collect();
        let d = distance(&self.cfg.raw.labels, &theirs);
        self.peers.entry(peer).or_default().distance = Some(d);
        self.feed_all(Input::PeerTopology { peer, distance: d });
        if seeding && self.origins.insert(peer) {
            self.feed_all(Input::PeerConnected { peer, origin: true });
        }
        self.update_local_group();
    }

    fn local_group(&self) -> Input<PeerId> {
        let me = *self.swarm.local_peer_id();
        let mut group: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, i)| i.connections > 0 && i.distance.is_some_and(|d| d <= 1))
            .map(|(id, _)| *id)
            .filter(|id| !self.origins.contains(id))
            .collect();
        group.push(me);
        group.sort();
        let rank = group.iter().position(|p| *p == me).unwrap_or(0) as u32;
        Input::LocalGroup {
            rank,
            size: group.len() as u32,
        }
    }

    /// Re-derives our rank in the rack group and tells every fetch.
    pub(super) fn update_local_group(&mut self) {
        let g = self.local_group();
        self.feed_all(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &[(&str, &str)]) -> BTreeMap<String, String> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn distance_levels() {
        let a = labels(&[
            ("region", "eu"),
            ("zone", "a"),
            ("rack", "r1"),
            ("host", "h1"),
        ]);
        let mut b = a.clone();
        assert_eq!(distance(&a, &b), 0);
        b.insert("host".into(), "h2".into());
        assert_eq!(distance(&a, &b), 1);
        b.insert("rack".into(), "r2".into());
        assert_eq!(distance(&a, &b), 2);
        b.insert("zone".into(), "b".into());
        assert_eq!(distance(&a, &b), 3);
        b.insert("region".into(), "us".into());
        assert_eq!(distance(&a, &b), 4);
        assert_eq!(distance(&BTreeMap::new(), &BTreeMap::new()), 4);
    }

    #[test]
    fn early_haves_are_bounded() {
        let mut v = VersionHave::default();
        let peer = PeerId::random();
        let big = Have {
            root: Hash::of(b"r"),
            all: false,
            chunks: vec![1; MAX_EARLY],
        };
        assert!(v.buffer(peer, big.clone()));
        assert!(!v.buffer(
            peer,
            Have {
                chunks: vec![2],
                ..big
            }
        ));
        assert_eq!(v.early_len, MAX_EARLY);
    }
}
