-- Events: one row per distinct event. CloudEvents ids are unique only together
-- with their source, so (id, source) is the identity; `seq` numbers rows in
-- insertion order for stable tie-breaks and cursors.
CREATE TABLE events (
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    id                 text COLLATE "C" NOT NULL,
    event_type         text COLLATE "C" NOT NULL,
    source             text COLLATE "C" NOT NULL,
    target             text COLLATE "C",
    routing_key        text COLLATE "C" NOT NULL,
    exchange           text COLLATE "C" NOT NULL,
    "timestamp"        timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    stored_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload            jsonb NOT NULL,
    session_id         text COLLATE "C",
    correlation_id     text COLLATE "C",
    storage_latency_ms double precision,
    -- 1 original, 2 typed, 3 CloudEvents (shared/spec/envelopes.md)
    generation         smallint NOT NULL CHECK (generation BETWEEN 1 AND 3),
    -- the published envelope without its payload member; with payload and
    -- payload_member it rebuilds the original document
    envelope           json NOT NULL,
    payload_member     text,
    -- AMQP basic properties and headers. envelope and properties are json, not
    -- jsonb: kept verbatim for the raw view, never searched, and cheaper to ingest.
    properties         json NOT NULL,
    -- text PostgreSQL refuses was removed; original_body then holds the delivery
    sanitized          boolean NOT NULL DEFAULT false,
    original_body      bytea,
    CONSTRAINT events_pkey PRIMARY KEY (id, source)
);

-- The query API filters by one column and orders by time, newest first, with seq
-- as the tie-break.
CREATE INDEX events_timestamp_idx ON events ("timestamp" DESC, seq DESC);
CREATE INDEX events_session_idx ON events (session_id, "timestamp" DESC, seq DESC) WHERE session_id IS NOT NULL;
CREATE INDEX events_type_idx ON events (event_type, "timestamp" DESC, seq DESC);
CREATE INDEX events_source_idx ON events (source, "timestamp" DESC, seq DESC);
CREATE INDEX events_correlation_idx ON events (correlation_id, "timestamp" DESC, seq DESC) WHERE correlation_id IS NOT NULL;

-- seq grows with insertion, so a BRIN index finds recent rows at almost no
-- ingest cost.
CREATE INDEX events_seq_brin ON events USING brin (seq);
