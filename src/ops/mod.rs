//! Operators' tools run from the command line: they read and change what was
//! stored, and publish it again. Each is a library function `main.rs` calls (and
//! tests call directly).

pub mod dead_letters;
pub mod replay;
pub mod store;
