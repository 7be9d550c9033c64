//! Erasure-coded versions (see `docs/erasure.md`): a version's pieces are its
//! unique chunks followed by its parity pieces, all fetched, verified, stored
//! and served alike. Once a node holds `k` verified pieces of a stripe (its
//! data chunk count), it rebuilds the stripe's missing data chunks and
//! computes its missing parity pieces on the blocking pool, stores them (the
//! store re-checks every hash) and marks them held, so the fetch stops
//! asking for them and peers can fetch them from this node.

use std::sync::Arc;

use merkle::erasure::{Erasure, encode_stripe, rebuild_stripe, stripe_of_piece};
use merkle::{ChunkRef, Hash, Manifest};

use swarm::{ChunkIdx, ChunkState, Input};

use super::{Daemon, now};
use crate::metrics::Metrics;
use crate::store::ChunkStore;

/// A finished stripe job: the piece indices it stored.
pub(super) struct Rebuilt {
    root: Hash,
    stripe: usize,
    result: Result<Rebuild, String>,
}

/// What a stripe job stored.
#[derive(Debug, Default)]
struct Rebuild {
    /// Pieces now held (rebuilt data chunks and computed parity pieces).
    pieces: Vec<u32>,
    /// How many of them were data chunks rebuilt from parity.
    data_rebuilt: u64,
}

/// One stripe of a manifest, as piece indices and refs.
struct StripePieces {
    data: Vec<(u32, ChunkRef)>,
    parity: Vec<(u32, ChunkRef)>,
}

/// Stripe `s` of a version whose pieces are `pieces` (unique chunks, then
/// parity): O(k + m), without walking the whole list.
fn stripe_pieces(pieces: &[ChunkRef], e: &Erasure, s: usize) -> StripePieces {
    let n = pieces.len().saturating_sub(e.parity.len());
    let (k, m) = (usize::from(e.config.data), usize::from(e.config.parity));
    let data = (s * k).min(n)..((s + 1) * k).min(n);
    let parity = (n + s * m).min(pieces.len())..(n + s * m + m).min(pieces.len());
    let refs = |r: std::ops::Range<usize>| r.map(|i| (i as u32, pieces[i])).collect();
    StripePieces {
        data: refs(data),
        parity: refs(parity),
    }
}

fn held(v: &[Option<Vec<u8>>]) -> Vec<Option<&[u8]>> {
    v.iter().map(|p| p.as_deref()).collect()
}

/// Reads the held pieces of a stripe, rebuilds and stores what is missing.
fn run_stripe(store: &ChunkStore, sp: &StripePieces) -> Result<Rebuild, String> {
    let get = |c: &ChunkRef| store.get(&c.hash).map_err(|e| e.to_string());
    let data: Vec<Option<Vec<u8>>> = sp
        .data
        .iter()
        .map(|(_, c)| get(c))
        .collect::<Result<_, _>>()?;
    let parity: Vec<Option<Vec<u8>>> = sp
        .parity
        .iter()
        .map(|(_, c)| get(c))
        .collect::<Result<_, _>>()?;
    let drefs: Vec<ChunkRef> = sp.data.iter().map(|(_, c)| *c).collect();
    let prefs: Vec<ChunkRef> = sp.parity.iter().map(|(_, c)| *c).collect();
    let full =
        rebuild_stripe(&drefs, &prefs, &held(&data), &held(&parity)).map_err(|e| e.to_string())?;
    let mut out = Rebuild::default();
    for ((idx, c), (old, new)) in sp.data.iter().zip(data.iter().zip(&full)) {
        if old.is_none() {
            store.put(&c.hash, new).map_err(|e| e.to_string())?;
            out.pieces.push(*idx);
            out.data_rebuilt += 1;
        }
    }
    if parity.iter().any(Option::is_none) {
        let refs: Vec<&[u8]> = full.iter().map(Vec::as_slice).collect();
        let m = u16::try_from(prefs.len()).map_err(|e| e.to_string())?;
        let pieces = encode_stripe(m, &refs).map_err(|e| e.to_string())?;
        for ((idx, c), (old, new)) in sp.parity.iter().zip(parity.iter().zip(&pieces)) {
            if old.is_none() {
                store.put(&c.hash, new).map_err(|e| e.to_string())?;
                out.pieces.push(*idx);
            }
        }
    }
    Ok(out)
}

impl Daemon {
    /// Piece `idx` of `root` is now held: settle its stripe if it can be.
    pub(super) fn check_stripe_of(&mut self, root: Hash, idx: u32) {
        let Some((m, n)) = self.erasure_of(root) else {
            return;
        };
        let Some(e) = &m.erasure else { return };
        let s = stripe_of_piece(e.config, n, idx as usize);
        self.check_stripe(root, &m, s);
    }

    /// Checks every stripe of `root` (after a (re)start of its fetch).
    pub(super) fn check_all_stripes(&mut self, root: Hash) {
        let Some((m, n)) = self.erasure_of(root) else {
            return;
        };
        let Some(e) = &m.erasure else { return };
        for s in 0..n.div_ceil(usize::from(e.config.data.max(1))) {
            self.check_stripe(root, &m, s);
        }
    }

    /// The erasure section of `root`'s manifest and its unique chunk count.
    fn erasure_of(&self, root: Hash) -> Option<(Arc<Manifest>, usize)> {
        let v = self.versions.get(&root)?;
        let m = v.manifest.clone()?;
        let parity = m.erasure.as_ref()?.parity.len();
        Some((m, v.chunks.len().saturating_sub(parity)))
    }

    /// Starts a stripe job if stripe `s` has at least as many held pieces as
    /// data chunks and misses some piece.
    fn check_stripe(&mut self, root: Hash, m: &Manifest, s: usize) {
        let Some(e) = &m.erasure else { return };
        if self.rebuilding.contains(&(root, s)) {
            return;
        }
        let Some(v) = self.versions.get(&root) else {
            return;
        };
        let sp = stripe_pieces(&v.chunks, e, s);
        let all = sp.data.iter().chain(&sp.parity);
        let held: Vec<u32> = all
            .filter(|(_, c)| self.store.contains(&c.hash))
            .map(|(i, _)| *i)
            .collect();
        if held.len() == sp.data.len() + sp.parity.len() {
            // Everything is stored, perhaps under another index with the
            // same hash (a parity piece equal to a data chunk): mark it all.
            self.mark_held(root, held);
            return;
        }
        if held.len() < sp.data.len() {
            return;
        }
        self.rebuilding.insert((root, s));
        let store = self.store.clone();
        let tx = self.rebuilt_tx.clone();
        super::env::offload(self.inline, tx, move || Rebuilt {
            root,
            stripe: s,
            result: run_stripe(&store, &sp),
        });
    }

    /// Marks stored pieces held (announced, and done for the fetch) unless
    /// the fetch already has them.
    fn mark_held(&mut self, root: Hash, pieces: Vec<u32>) {
        let Some(v) = self.versions.get_mut(&root) else {
            return;
        };
        let Some(f) = v.fetch.as_mut() else { return };
        let new: Vec<u32> = pieces
            .into_iter()
            .filter(|i| !matches!(f.chunk_state(ChunkIdx(*i)), Some(ChunkState::Done) | None))
            .collect();
        if new.is_empty() {
            return;
        }
        v.have.hold(new.iter().copied());
        let chunks = new.into_iter().map(ChunkIdx).collect();
        f.handle(now(), Input::AlreadyHave { chunks });
    }

    /// A stripe job finished: its pieces are held; the fetch stops asking.
    pub(super) fn on_rebuilt(&mut self, r: Rebuilt) {
        self.rebuilding.remove(&(r.root, r.stripe));
        let Some(v) = self.versions.get_mut(&r.root) else {
            return;
        };
        match r.result {
            Ok(done) => {
                Metrics::add(&self.metrics.chunks_rebuilt, done.data_rebuilt);
                tracing::debug!(version = %v.signed.version, stripe = r.stripe, pieces = done.pieces.len(), rebuilt = done.data_rebuilt, "stripe settled");
                self.mark_held(r.root, done.pieces);
            }
            Err(e) => {
                tracing::error!(version = %v.signed.version, stripe = r.stripe, error = %e, "cannot rebuild stripe; fetching its pieces instead");
            }
        }
    }
}
