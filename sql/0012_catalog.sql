-- The catalog of event types and sources (GET /event-types, GET /sources): every
-- value with its count and first and last event time, and per event type the
-- top-level payload keys with their JSON types. Kept by a background job that reads
-- each committed event once, below the live tail's horizon, and adds it here in
-- the same transaction that advances its position (storage/catalog.rs).
CREATE TABLE catalog_event_types (
    event_type text PRIMARY KEY,
    count      bigint NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);

CREATE TABLE catalog_sources (
    source     text PRIMARY KEY,
    count      bigint NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);

CREATE TABLE catalog_payload_keys (
    event_type text NOT NULL,
    key        text NOT NULL,
    json_type  text NOT NULL,
    count      bigint NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (event_type, key, json_type)
);

-- Where the job is: the last (txid, seq) counted. One row.
CREATE TABLE catalog_position (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    txid bigint NOT NULL,
    seq  bigint NOT NULL
);
INSERT INTO catalog_position (txid, seq) VALUES (0, 0);
