-- Live-tail tickets are signed, not stored (api/tickets.rs): the API writes
-- nothing, so it can read from a replica or as a read-only role. The table of
-- ticket digests (0014) goes; tickets issued before the upgrade are refused (they
-- lived 60 s).
DROP TABLE IF EXISTS stream_tickets;
