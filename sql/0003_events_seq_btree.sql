-- The live tail reads "seq > last ORDER BY seq" and starts at max(seq): both need a
-- btree on seq (BRIN can neither order nor find the maximum without a scan).
-- Writers insert in commit order under an advisory lock, so seq order is commit order.
DROP INDEX IF EXISTS events_seq_brin;
CREATE UNIQUE INDEX events_seq_key ON events (seq);
