//! The audit chain that came before the tree (migrations 0013 to 0018): its
//! seal step and its walk. The tree's first leaf commits to its end; rows stored
//! before the tree are judged by it.

pub mod seal;
pub mod verify;
