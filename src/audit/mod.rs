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

pub mod attest;
pub mod jsonb;
pub mod leaf;
pub mod note;
pub mod tree;
