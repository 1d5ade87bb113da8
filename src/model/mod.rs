//! The data every layer speaks, with no I/O in it: the stored event and dead
//! letter ([`envelope`]), the filters of `GET /events` and the SQL they become
//! ([`query`], no HTTP), the replay mark a delivery may carry ([`replay_mark`]),
//! and lower-case hex ([`hex`]). Each imports only its neighbours here.

pub mod envelope;
pub mod hex;
pub mod query;
pub(crate) mod replay_mark;
