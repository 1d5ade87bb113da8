//! The Merkle tree of RFC 9162 (Certificate Transparency v2), pure: hashing,
//! appending, roots, and inclusion and consistency proofs with their checks.
//!
//! A leaf hashes as `SHA-256(0x00 ‖ leaf)`, a node as `SHA-256(0x01 ‖ left ‖
//! right)`, and the tree of `n` leaves splits at the largest power of two below
//! `n` (RFC 9162 §2.1.1). Proofs are computed in two steps so storage can fetch
//! what they need at once: [`inclusion_spans`] and [`consistency_spans`] name
//! the leaf ranges whose hashes a proof lists, [`decompose`] names the complete
//! subtrees ([`Node`]s) each range is made of, and [`range_hash`] folds them.
//!
//! Only complete subtrees are ever stored (`audit::tiles`): the tree's right
//! edge is recomputed from them, so nothing stored changes as the tree grows.
//! The checks ([`verify_inclusion`], [`verify_consistency`]) follow RFC 9162
//! §2.1.3.2 and §2.1.4.2 step by step and share nothing with the builders.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf's bytes.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A complete subtree: the `2^level` leaves from `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    pub level: u8,
    pub index: u64,
}

impl Node {
    pub fn start(self) -> u64 {
        self.index << self.level
    }

    pub fn end(self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees that make up the leaves `[start, end)`, left to right,
/// for a range as RFC 9162's recursion forms it (`start` is a multiple of the
/// largest power of two not above `end - start`, so every piece is aligned).
pub fn decompose(start: u64, end: u64) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut at = start;
    while at < end {
        let len = end - at;
        // The largest aligned power of two that fits from `at`.
        let mut level = 63 - len.leading_zeros();
        if at != 0 {
            level = level.min(at.trailing_zeros());
        }
        nodes.push(Node {
            level: level as u8,
            index: at >> level,
        });
        at += 1 << level;
    }
    nodes
}

/// The hash of the leaves `[start, end)` (RFC 9162's `MTH(D[start:end])`) from
/// the hashes of its complete subtrees, as [`decompose`] lists them.
pub fn range_hash(start: u64, end: u64, mut node: impl FnMut(Node) -> Hash) -> Hash {
    if start == end {
        return empty_root();
    }
    let nodes = decompose(start, end);
    let mut iter = nodes.iter().rev();
    let mut acc = node(*iter.next().expect("a non-empty range has a node"));
    for n in iter {
        acc = node_hash(&node(*n), &acc);
    }
    acc
}

/// The leaf ranges whose hashes make up the inclusion proof of leaf `index` in
/// the tree of `size` leaves, in proof order (nearest the leaf first).
pub fn inclusion_spans(index: u64, size: u64) -> Vec<(u64, u64)> {
    assert!(index < size, "leaf {index} is not in a tree of {size}");
    let mut spans = Vec::new();
    path(index, 0, size, &mut spans);
    spans
}

/// RFC 9162 §2.1.3.1 `PATH(m, D[start:end])`, `m` relative to `start`.
fn path(m: u64, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, start + k, out);
        out.push((start + k, end));
    } else {
        path(m - k, start + k, end, out);
        out.push((start, start + k));
    }
}

/// The leaf ranges whose hashes make up the consistency proof from the tree of
/// `old` leaves to the tree of `new` (RFC 9162 §2.1.4.1), in proof order.
pub fn consistency_spans(old: u64, new: u64) -> Vec<(u64, u64)> {
    assert!(old <= new, "a tree of {new} cannot extend one of {old}");
    let mut spans = Vec::new();
    if old > 0 && old < new {
        subproof(old, 0, new, true, &mut spans);
    }
    spans
}

/// RFC 9162 §2.1.4.1 `SUBPROOF(m, D[start:end], b)`.
fn subproof(m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push((start, end));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, whole, out);
        out.push((start + k, end));
    } else {
        subproof(m - k, start + k, end, false, out);
        out.push((start, start + k));
    }
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("the tree of {new} cannot extend the tree of {old}: it is smaller")]
    Shrunk { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes")]
    Length,
    #[error("the proof does not lead to the root")]
    Mismatch,
}

/// Checks that `leaf` (its hash) is leaf `index` of the tree of `size` leaves
/// whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if &r != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Checks that the tree of `new` leaves (root `new_root`) extends the tree of
/// `old` leaves (root `old_root`) (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Shrunk { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Length);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the roots of its complete subtrees, largest
/// first (one for each bit set in its size). Enough to append and to compute
/// the root; everything left of the edge is fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves from the hashes of its edge's
    /// complete subtrees, largest first ([`Frontier::edge`] names them).
    pub fn from_edge(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Frontier { size, nodes })
    }

    /// The complete subtrees on the right edge of a tree of `size` leaves.
    pub fn edge(size: u64) -> Vec<Node> {
        decompose(0, size)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (its hash), telling `completed` of every subtree the leaf
    /// completes, the leaf itself first.
    pub fn append(&mut self, leaf: Hash, mut completed: impl FnMut(Node, &Hash)) {
        let mut node = Node {
            level: 0,
            index: self.size,
        };
        let mut hash = leaf;
        completed(node, &hash);
        while node.index & 1 == 1 {
            let left = self.nodes.pop().expect("an odd index has a left sibling");
            hash = node_hash(&left, &hash);
            node = Node {
                level: node.level + 1,
                index: node.index >> 1,
            };
            completed(node, &hash);
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The tree's root.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, n| node_hash(n, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9162's MTH, straight from its definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn node_of(leaves: &[Hash]) -> impl FnMut(Node) -> Hash + '_ {
        move |n: Node| mth(&leaves[n.start() as usize..n.end() as usize])
    }

    fn proof(spans: &[(u64, u64)], leaves: &[Hash]) -> Vec<Hash> {
        spans
            .iter()
            .map(|&(a, b)| range_hash(a, b, node_of(leaves)))
            .collect()
    }

    #[test]
    fn hashes_follow_rfc_9162_test_vectors() {
        // The empty tree and the one-leaf tree of the empty leaf (RFC 6962's
        // reference vectors, kept by RFC 9162 implementations).
        assert_eq!(
            crate::model::hex::encode(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            crate::model::hex::encode(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        // The eight leaves of Certificate Transparency's reference tests.
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let mut f = Frontier::default();
        for d in data {
            f.append(leaf_hash(d), |_, _| {});
        }
        assert_eq!(
            crate::model::hex::encode(&f.root()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }

    #[test]
    fn the_frontier_root_is_the_tree_root_and_reports_every_completed_subtree() {
        let all = leaves(77);
        let mut f = Frontier::default();
        let mut completed = Vec::new();
        for (i, l) in all.iter().enumerate() {
            f.append(*l, |n, h| completed.push((n, *h)));
            assert_eq!(f.root(), mth(&all[..=i]), "size {}", i + 1);
        }
        for (n, h) in &completed {
            assert_eq!(*h, mth(&all[n.start() as usize..n.end() as usize]));
        }
        // 77 leaves complete 77 + 38 + 19 + 9 + 4 + 2 + 1 subtrees.
        assert_eq!(completed.len(), 77 + 38 + 19 + 9 + 4 + 2 + 1);
        let edge: Vec<Hash> = Frontier::edge(77)
            .iter()
            .map(|n| mth(&all[n.start() as usize..n.end() as usize]))
            .collect();
        assert_eq!(Frontier::from_edge(77, edge), Some(f));
    }

    #[test]
    fn a_leaf_outside_the_tree_or_a_shrunk_tree_is_refused() {
        let h = leaf_hash(b"x");
        assert_eq!(
            verify_inclusion(&h, 3, 3, &[], &h),
            Err(ProofError::OutOfRange { index: 3, size: 3 })
        );
        assert_eq!(
            verify_consistency(5, 4, &h, &h, &[]),
            Err(ProofError::Shrunk { old: 5, new: 4 })
        );
    }

    proptest! {
        #[test]
        fn every_inclusion_proof_checks_and_no_other_leaf_or_index_does(
            size in 1u64..300, pick in any::<u64>(),
        ) {
            let all = leaves(size);
            let index = pick % size;
            let root = mth(&all);
            let path = proof(&inclusion_spans(index, size), &all);
            prop_assert_eq!(verify_inclusion(&all[index as usize], index, size, &path, &root), Ok(()));
            let other = leaf_hash(b"not a leaf");
            prop_assert!(verify_inclusion(&other, index, size, &path, &root).is_err());
            if size > 1 {
                let wrong = (index + 1) % size;
                prop_assert!(verify_inclusion(&all[index as usize], wrong, size, &path, &root).is_err());
            }
            if let Some(first) = path.first() {
                let mut bad = path.clone();
                bad[0][0] ^= 1;
                prop_assert!(verify_inclusion(&all[index as usize], index, size, &bad, &root).is_err());
                prop_assert!(verify_inclusion(&all[index as usize], index, size, &path[1..], &root).is_err());
                let mut longer = path.clone();
                longer.push(*first);
                prop_assert!(verify_inclusion(&all[index as usize], index, size, &longer, &root).is_err());
            }
        }

        #[test]
        fn every_consistency_proof_checks_and_a_fork_does_not(
            new in 1u64..300, pick in any::<u64>(),
        ) {
            let all = leaves(new);
            let old = pick % (new + 1);
            let (old_root, new_root) = (mth(&all[..old as usize]), mth(&all));
            let p = proof(&consistency_spans(old, new), &all);
            prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &p), Ok(()));
            if old > 0 {
                // A tree of the same old size with one leaf changed: a fork.
                let mut forked = all.clone();
                forked[(pick % old) as usize] = leaf_hash(b"forged");
                let forked_root = mth(&forked[..old as usize]);
                prop_assert!(verify_consistency(old, new, &forked_root, &new_root, &p).is_err());
                prop_assert!(verify_consistency(old, new, &old_root, &mth(&forked), &p).is_err());
            }
            if old > 0 && old < new {
                let mut bad = p.clone();
                bad[0][0] ^= 1;
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            }
        }

        #[test]
        fn a_range_is_the_aligned_subtrees_it_spans(size in 1u64..5000) {
            let nodes = decompose(0, size);
            prop_assert_eq!(nodes.len() as u32, size.count_ones());
            let mut at = 0;
            for n in nodes {
                prop_assert_eq!(n.start(), at);
                at = n.end();
            }
            prop_assert_eq!(at, size);
        }
    }
}
