//! Binary Merkle trees over BLAKE3 hashes, with domain separation, and
//! inclusion proofs.
//!
//! Construction (also in `docs/manifest.md`):
//! - level 0 is the list of leaves (for a file: its chunk hashes, in order);
//! - each next level pairs nodes left to right: `parent = BLAKE3(0x01 || left || right)`;
//!   an odd last node is promoted to the next level unchanged;
//! - the root is the single node of the last level; one leaf is its own root;
//! - zero leaves give [`empty_root`] `= BLAKE3(0x00)`.
//!
//! The tree shape is fixed by the leaf count, which a [`Proof`] carries.

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// Domain tag of the empty tree: `root = BLAKE3([EMPTY_TAG])`.
pub const EMPTY_TAG: u8 = 0x00;
/// Domain tag of an interior node: `BLAKE3(NODE_TAG || left || right)`.
pub const NODE_TAG: u8 = 0x01;
/// Domain tag of a per-file leaf of a version root (see [`crate::Manifest::root`]).
pub const FILE_LEAF_TAG: u8 = 0x02;
/// Domain tag of a version root, which binds the files' tree to the channel
/// and version names: `BLAKE3(VERSION_TAG || u32le(len) || channel || u32le(len) || version || files_root)`.
pub const VERSION_TAG: u8 = 0x03;

/// Root of a tree with no leaves: `BLAKE3(0x00)`.
pub fn empty_root() -> Hash {
    Hash::of(&[EMPTY_TAG])
}

/// `BLAKE3(0x01 || left || right)`.
pub fn parent(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_TAG]);
    h.update(&left.0);
    h.update(&right.0);
    h.finalize().into()
}

/// Merkle root of `leaves` (see the module docs).
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let mut level = next_level(leaves);
            while level.len() > 1 {
                level = next_level(&level);
            }
            level[0]
        }
    }
}

fn next_level(nodes: &[Hash]) -> Vec<Hash> {
    nodes
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => parent(l, r),
            [odd] => *odd,
            _ => unreachable!("chunks(2) yields one or two nodes"),
        })
        .collect()
}

/// An inclusion proof: the siblings on the path from leaf `index` to the root,
/// bottom up, skipping levels where the node is an odd last node (promoted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Position of the leaf.
    pub index: u64,
    /// Number of leaves of the tree (fixes its shape).
    pub leaf_count: u64,
    /// Sibling hashes, bottom up.
    pub siblings: Vec<Hash>,
}

/// Proof that `leaves[index]` is in `merkle_root(leaves)`; `None` when
/// `index` is out of range.
pub fn merkle_proof(leaves: &[Hash], index: usize) -> Option<Proof> {
    if index >= leaves.len() {
        return None;
    }
    let mut siblings = Vec::new();
    let mut i = index;
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        if let Some(s) = level.get(i ^ 1) {
            siblings.push(*s);
        }
        level = next_level(&level);
        i /= 2;
    }
    Some(Proof {
        index: index as u64,
        leaf_count: leaves.len() as u64,
        siblings,
    })
}

impl Proof {
    /// True when `leaf` at `self.index` of a `self.leaf_count`-leaf tree hashes
    /// up to `root` with exactly `self.siblings`. Rejects an index out of
    /// range, a zero leaf count and a wrong number of siblings; never panics.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> bool {
        if self.index >= self.leaf_count {
            return false;
        }
        let mut n = self.leaf_count;
        let mut i = self.index;
        let mut cur = *leaf;
        let mut siblings = self.siblings.iter();
        while n > 1 {
            if (i ^ 1) < n {
                let Some(s) = siblings.next() else {
                    return false;
                };
                cur = if i & 1 == 0 {
                    parent(&cur, s)
                } else {
                    parent(s, &cur)
                };
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        siblings.next().is_none() && cur == *root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| Hash::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn small_trees_by_hand() {
        let l = leaves(3);
        assert_eq!(merkle_root(&[]), Hash::of(&[0]));
        assert_eq!(merkle_root(&l[..1]), l[0]);
        assert_eq!(merkle_root(&l[..2]), parent(&l[0], &l[1]));
        assert_eq!(merkle_root(&l), parent(&parent(&l[0], &l[1]), &l[2]));
        let mut buf = vec![1u8];
        buf.extend_from_slice(&l[0].0);
        buf.extend_from_slice(&l[1].0);
        assert_eq!(parent(&l[0], &l[1]), Hash::of(&buf));
    }

    #[test]
    fn proofs_for_all_small_trees() {
        for n in 1..40 {
            let l = leaves(n);
            let root = merkle_root(&l);
            for i in 0..n {
                let p = merkle_proof(&l, i).unwrap();
                assert!(p.verify(&l[i], &root), "n={n} i={i}");
                for j in 0..n as u64 + 2 {
                    if j != i as u64 {
                        let q = Proof {
                            index: j,
                            ..p.clone()
                        };
                        assert!(!q.verify(&l[i], &root), "n={n} i={i} j={j}");
                    }
                }
            }
            assert!(merkle_proof(&l, n).is_none());
        }
    }

    #[test]
    fn hostile_proofs_do_not_panic() {
        let h = Hash::of(b"x");
        for (index, leaf_count) in [
            (0, 0),
            (u64::MAX, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (0, u64::MAX),
        ] {
            let p = Proof {
                index,
                leaf_count,
                siblings: vec![h; 3],
            };
            assert!(!p.verify(&h, &h));
        }
    }
}
