//! The PostgreSQL store's write path: one connection per writer, each batch
//! COPied into a staging table and moved into the partitioned `events` in one
//! transaction (`write`), encoded by `copy`, with the partitions a batch needs
//! made before it is written (`partitions`). The rest of the PostgreSQL store
//! (partitions, maintenance, archive, the catalog) is `storage`; the API's
//! reads are `api::query`.

pub mod copy;
pub mod partitions;
pub mod write;
