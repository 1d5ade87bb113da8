-- Session summaries (GET /sessions/{id}: counts by event type and source) from
-- counts kept beside the catalog, rather than grouping every event of the session
-- on each request: the largest session of a real log holds ~600,000 events (2.2 s
-- to group over 90 partitions). The catalog job adds each event it counts
-- (storage/catalog.rs), in the step that moves its position, so every event below
-- the position is counted exactly once; a summary adds the few events past it.
-- Retention subtracts what it drops, restore adds what it brings back, both under
-- the catalog's lock.
CREATE TABLE session_counts (
    session_id text NOT NULL,
    event_type text NOT NULL,
    source     text NOT NULL,
    events     bigint NOT NULL,
    PRIMARY KEY (session_id, event_type, source)
);

-- What the catalog has counted so far, counted here too: under its lock (so no step
-- moves the position meanwhile), every event at or below its position. Writers go
-- on; the catalog job waits for this transaction.
SELECT pg_advisory_xact_lock(7236828094530679668);
INSERT INTO session_counts (session_id, event_type, source, events)
SELECT e.session_id, e.event_type, e.source, count(*)
FROM events e, catalog_position p
WHERE e.session_id IS NOT NULL AND (e.txid, e.seq) <= (p.txid, p.seq)
GROUP BY 1, 2, 3;
