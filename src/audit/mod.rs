//! The audit trail: what makes history that was rewritten, by anyone who can
//! write to the database, show as rewritten.
//!
//! - `tree`: the RFC 9162 Merkle tree, pure (hashing, appending, proofs, checks).
//! - `jsonb`: jsonb's canonical text, so a writer can commit to a payload as it
//!   will be stored.
//! - `note`: signed checkpoints (C2SP signed-note) and the keys that sign them.

pub mod jsonb;
pub mod note;
pub mod tree;
