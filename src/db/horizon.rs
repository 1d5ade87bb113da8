//! The live tail's horizon: the line below which rows are final. The tail, the
//! audit tree, the legacy seal and the catalog read `events` only below it.

/// The tail's horizon, as of the statement's snapshot: the oldest transaction
/// still running that may have written to this database (else the snapshot's
/// `xmax`). Rows of older transactions are final (see the module's docs).
///
/// A transaction of another database cannot write here, so it is left out: one
/// is left out when the backend holding its transaction-id lock (`pg_locks`) is
/// connected to another database (`pg_stat_activity.datid`; a backend is
/// connected to one database for life, and both columns are visible to any role).
/// Only the owner's own lock counts (`ExclusiveLock`): a backend that waited for
/// a transaction holds a `ShareLock` on its id for a moment after it ended
/// (`XactLockTableWait`), and were that waiter of another database, a
/// transaction of this one that committed after the snapshot would be left out.
/// That covers a backend holding no relation lock at all, such as CREATE or DROP
/// DATABASE of another database, which an earlier proof by relation locks
/// counted. The two views are read one after the other, after the snapshot; a
/// transaction left out wrongly would need its backend to exit and a backend of
/// another database to be given the same process id between the two readings.
/// Anything not so proven (a transaction that ended meanwhile, a process with no
/// database) counts. So a long write elsewhere on the server, or a database
/// being created or dropped, does not hold the tail back.
///
/// Counting a transaction that ended meanwhile makes the horizon dip, for one
/// statement, below one read before (a transaction of another database, left
/// out then, ending between this statement's snapshot and its look at
/// `pg_locks`). Rows below it are final all the same; read past a position,
/// never up to one (`api::tail::read_after` reads up to a known final
/// position without it).
pub const HORIZON: &str = "(WITH l AS MATERIALIZED (SELECT pid, transactionid FROM pg_locks \
                                  WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted), \
       a AS MATERIALIZED (SELECT pid, datid FROM pg_stat_activity), \
       s AS MATERIALIZED (SELECT pg_current_snapshot() AS snap) \
     SELECT least( \
       (SELECT pg_snapshot_xmax(snap)::text::bigint FROM s), \
       (SELECT min(x::text::bigint) FROM s, pg_snapshot_xip(s.snap) x \
         WHERE NOT EXISTS (SELECT 1 FROM l JOIN a ON a.pid = l.pid \
                           WHERE l.transactionid = xid(x) \
                             AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())))))";
