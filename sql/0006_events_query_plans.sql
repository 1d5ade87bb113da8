-- Plans for the query API at millions of rows.
--
-- payload_contains: the planner estimates jsonb containment from a sample of whole
-- payloads. With the default 100, a value in 1% of events is often missing from the
-- sample, gets estimated as rare, and the GIN bitmap + sort plan chosen for it reads
-- every match (0.8 s at 10M rows, against 4 ms walking the time index). A sample of
-- 1,000 estimates such values well; planning stays under a millisecond.
ALTER TABLE events ALTER COLUMN payload SET STATISTICS 1000;
ANALYZE events (payload);

-- A session's or correlation's summary (counts by event type and by source, first
-- and last time) reads every one of its events. With event_type and source in the
-- index it is an index-only scan instead of one heap page per event.
DROP INDEX events_session_idx;
CREATE INDEX events_session_idx ON events (session_id, "timestamp" DESC, seq DESC)
    INCLUDE (event_type, source) WHERE session_id IS NOT NULL;
DROP INDEX events_correlation_idx;
CREATE INDEX events_correlation_idx ON events (correlation_id, "timestamp" DESC, seq DESC)
    INCLUDE (event_type, source) WHERE correlation_id IS NOT NULL;
