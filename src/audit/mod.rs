//! The audit trail: what makes history that was rewritten, by anyone who can
//! write to the database, show as rewritten.
//!
//! - `attest`: the writers' keyed MACs (AUDIT_KEY), so a row or leaf written
//!   with SQL is told from a writer's.
//! - `tree`: the RFC 9162 Merkle tree, pure (hashing, appending, proofs, checks).
//! - `jsonb`: jsonb's canonical text, so a writer can commit to a payload as it
//!   will be stored.
//! - `leaf`: what enters the tree (events, redactions, dropped ranges, the
//!   anchor to the legacy chain) and the salted commitment to an event.
//! - `note`: signed checkpoints (C2SP signed-note) and the keys that sign them.
//!
//! Above storage:
//! - `store`: the tree's tables, and any of its hashes read back.
//! - `job`: the tree job (append, store subtrees, sign).
//! - `proof`: inclusion and consistency proofs, and the bundle a third party
//!   checks with the public key alone.
//! - `redact`: an event's content removed while the tree still verifies.
//! - `publish`: checkpoints to CHECKPOINT_DIR and to witnesses.
//! - `legacy`: the chain before the tree (sealed once more, then anchored).
//! - `verify`: every row and leaf judged, the tree recomputed against its
//!   signed checkpoints (`candystore verify`).
//! - `witness`: a C2SP tlog-witness (`candystore witness`), for the tests and
//!   for anyone who keeps one where the log's operators cannot write.
//! - `trail`: the trail's key and attestation, checked before an instance starts.

pub mod attest;
pub mod job;
pub mod jsonb;
pub mod leaf;
pub mod legacy;
pub mod note;
pub mod proof;
pub mod publish;
pub mod redact;
pub mod store;
pub mod trail;
pub mod tree;
pub mod verify;
pub mod witness;
