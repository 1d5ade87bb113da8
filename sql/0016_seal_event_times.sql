-- Each seal keeps its event's time, and every partition retention drops is
-- recorded with its range, so `candystore verify` can tell a sealed event that
-- went with a dropped partition (its time lies in a dropped range) from one
-- deleted out of band, and can walk every checkpoint, including one that mixes a
-- late event of a dropped day with events still stored.
ALTER TABLE audit_seals ADD COLUMN "timestamp" timestamptz;

-- Every seal of the checkpoint has its time (all written after this migration).
ALTER TABLE audit_checkpoints ADD COLUMN timestamped boolean NOT NULL DEFAULT false;

-- Written in the transaction that drops the partition (storage/maintain.rs).
CREATE TABLE dropped_partitions (
    table_name text        NOT NULL,
    partition  text        NOT NULL,
    from_time  timestamptz NOT NULL,
    to_time    timestamptz NOT NULL,
    rows       bigint      NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now()
);
