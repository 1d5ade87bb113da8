-- `events` only grows. By default autovacuum visits an insert-only table after it
-- grew by 20% (2 million rows at 10 million), so the newest pages, which the API
-- reads most, would long lack visibility-map bits (index-only scans fall back to
-- the heap) and the GIN pending list would keep growing for queries to scan.
-- Vacuum after every 100,000 inserts instead: about every 100 s at 1,000 events/s,
-- each pass touching only the pages added since the last.
ALTER TABLE events SET (
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000
);
