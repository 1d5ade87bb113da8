-- `candystore dead-letters replay`: how often each dead letter was published again,
-- and when last. A constant default: no table rewrite, on any number of partitions.
ALTER TABLE dead_letter
    ADD COLUMN replay_count integer NOT NULL DEFAULT 0,
    ADD COLUMN replayed_at timestamptz;
