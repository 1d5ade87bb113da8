-- `target` is a filter of GET /events like the others. Without an index of its own a
-- query walks the time index and filters, which is quick for a common target but,
-- for a rare or unknown one, reads the whole table (12 s at 10 million rows, past
-- the read pool's 5 s statement timeout). Partial: most events have no target.
CREATE INDEX events_target_idx ON events (target, "timestamp" DESC, seq DESC) WHERE target IS NOT NULL;
