-- The tamper-evident chain (storage/seal.rs). Every committed event, in the live
-- tail's order (txid, seq), gets a digest of its stored content; digests are
-- chained with SHA-256 and a checkpoint records each sealed range's count and
-- chain hash. `candystore verify` recomputes both.
CREATE TABLE audit_seals (
    txid   bigint NOT NULL,
    seq    bigint NOT NULL,
    -- SHA-256 of the event's stored content (storage/seal.rs, `digest`)
    digest bytea  NOT NULL,
    PRIMARY KEY (txid, seq)
);

CREATE TABLE audit_checkpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the range sealed: after (from_txid, from_seq), up to and with (to_txid, to_seq)
    from_txid   bigint NOT NULL,
    from_seq    bigint NOT NULL,
    to_txid     bigint NOT NULL,
    to_seq      bigint NOT NULL,
    count       bigint NOT NULL,
    -- the chain hash before this range (the previous checkpoint's, or 32 zero bytes)
    prev_hash   bytea  NOT NULL,
    chain_hash  bytea  NOT NULL,
    -- the range's event times, for verifying after retention dropped older partitions
    min_timestamp timestamptz NOT NULL,
    max_timestamp timestamptz NOT NULL,
    sealed_at   timestamptz NOT NULL DEFAULT now()
);
