-- Partitioning by time (the next migration, which runs online) means a unique key
-- must include the partition column. An event that carries its own time keeps its
-- time on every redelivery and every byte-identical repeat, so (id, source,
-- timestamp) is its identity. An event whose time is a fallback (the AMQP timestamp
-- property, else the receive time) can come back with another time, possibly in
-- another partition: its (id, source) is claimed here first, in the writer's
-- transaction, and only the claimant inserts the row. docs/identity.md.
CREATE TABLE event_keys (
    id          text COLLATE "C" NOT NULL,
    source      text COLLATE "C" NOT NULL,
    -- the time the event was stored under: retention drops keys with their partition
    "timestamp" timestamptz NOT NULL,
    PRIMARY KEY (id, source)
);
CREATE INDEX event_keys_timestamp_idx ON event_keys ("timestamp");

-- Every dead letter's time is its receive time, so every dead letter claims its
-- fingerprint here.
CREATE TABLE dead_letter_keys (
    fingerprint bytea PRIMARY KEY,
    received_at timestamptz NOT NULL
);
CREATE INDEX dead_letter_keys_received_idx ON dead_letter_keys (received_at);

-- Events stored before this migration whose time was a fallback. Which source a
-- time came from is not stored, but a receive-time fallback equals received_at to the
-- microsecond, and an AMQP-timestamp fallback equals the `timestamp` property. The
-- rule also takes in a few events whose own time happens to equal one of those:
-- harmless, their key names the time they are stored under.
INSERT INTO event_keys (id, source, "timestamp")
SELECT id, source, "timestamp" FROM events
WHERE "timestamp" = received_at
   OR ((properties->>'timestamp') ~ '^[0-9]{1,15}$'
       AND "timestamp" IN (to_timestamp((properties->>'timestamp')::float8),
                           to_timestamp((properties->>'timestamp')::float8 / 1000)))
ON CONFLICT DO NOTHING;
INSERT INTO dead_letter_keys (fingerprint, received_at)
SELECT fingerprint, received_at FROM dead_letter
ON CONFLICT DO NOTHING;

-- lz4 compresses and decompresses TOASTed values (payloads, envelopes and bodies over
-- about 2 kB) several times faster than the default pglz, at a similar ratio. It needs
-- a server built with lz4 (PostgreSQL 14 or later, --with-lz4, as Debian's and the
-- official images are). Elsewhere the columns keep pglz and the migration says so.
-- Only values written from now on are compressed with it; stored ones stay as they are.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE events ALTER COLUMN payload SET COMPRESSION lz4,
                           ALTER COLUMN envelope SET COMPRESSION lz4,
                           ALTER COLUMN properties SET COMPRESSION lz4,
                           ALTER COLUMN original_body SET COMPRESSION lz4;
        ALTER TABLE dead_letter ALTER COLUMN body SET COMPRESSION lz4,
                                ALTER COLUMN properties SET COMPRESSION lz4;
    ELSE
        RAISE WARNING 'this PostgreSQL server was built without lz4: payloads stay compressed with pglz';
    END IF;
END
$$;
