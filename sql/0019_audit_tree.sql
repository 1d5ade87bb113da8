-- The Merkle tree (src/audit/). Writers fix each event's leaf in the
-- transaction that stores it; the tree job appends committed leaves in the tail's
-- order (txid, seq) and signs a checkpoint. The legacy chain (0013 to 0016) stops
-- growing: the tree's first leaf commits to its last checkpoint.

-- The random salt of the event's commitment (audit/leaf.rs), deleted with the
-- content by a redaction. NULL on rows stored before this migration. Adding a
-- nullable column without a default rewrites nothing.
ALTER TABLE events ADD COLUMN salt bytea;

-- Every leaf, at its place in the tail's order: an event's is its row's
-- (txid, seq); other leaves take a seq from the events' sequence. Kept when the
-- event's partition is dropped, so its proofs still work.
CREATE TABLE audit_leaves (
    txid bigint NOT NULL,
    seq  bigint NOT NULL,
    leaf bytea  NOT NULL,
    PRIMARY KEY (txid, seq)
);
ALTER TABLE audit_leaves ALTER COLUMN leaf SET STORAGE plain;

-- The place of every 256th leaf, so a leaf's index, or the leaves of a block of
-- 256, are found by reading at most 256 leaves.
CREATE TABLE audit_anchors (
    idx  bigint PRIMARY KEY,
    txid bigint NOT NULL,
    seq  bigint NOT NULL
);
CREATE UNIQUE INDEX audit_anchors_position_idx ON audit_anchors (txid, seq);

-- Interior nodes: tile (level, idx) holds the hashes, 32 bytes each, of up to
-- 256 complete subtrees of 256^level leaves, those from idx * 256 on. Only
-- complete subtrees are stored, so nothing stored changes as the tree grows.
CREATE TABLE audit_tiles (
    level  smallint NOT NULL CHECK (level >= 1),
    idx    bigint   NOT NULL,
    hashes bytea    NOT NULL,
    PRIMARY KEY (level, idx)
);
ALTER TABLE audit_tiles ALTER COLUMN hashes SET STORAGE external;

-- Every signed checkpoint: the tree's size, root, last leaf's place, and the
-- signed note (C2SP tlog-checkpoint). Kept outside the database too
-- (CHECKPOINT_DIR, witnesses): a copy here proves nothing by itself.
CREATE TABLE audit_heads (
    size      bigint      PRIMARY KEY,
    root      bytea       NOT NULL,
    last_txid bigint      NOT NULL,
    last_seq  bigint      NOT NULL,
    note      text        NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now()
);

-- The trail's identity, written by its first checkpoint: the origin and the
-- public key every checkpoint is signed with, and from which leaf on every leaf
-- must be attested (AUDIT_KEY; NULL: not yet). An instance that cannot keep to
-- it does not start. A copy here is a convenience: verify takes the public key
-- from outside (--public-key, a saved checkpoint), never from this row.
CREATE TABLE audit_trail (
    one           boolean     PRIMARY KEY DEFAULT true CHECK (one),
    origin        text        NOT NULL,
    public_key    text        NOT NULL,
    attested_from bigint,
    -- the AUDIT_KEY ids the trail has a key leaf for (hex; the leaves, signed
    -- with the checkpoint key, are what verify trusts)
    keys          text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Redactions (audit/redact.rs): the receipt of each, by the redacted event's
-- leaf; the receipt's SHA-256 is in the redaction's own leaf, so a receipt
-- written with SQL is told from one `candystore redact` made.
CREATE TABLE audit_redactions (
    leaf_index  bigint      PRIMARY KEY,
    txid        bigint      NOT NULL,
    seq         bigint      NOT NULL,
    receipt     text        NOT NULL,
    redacted_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX audit_redactions_position_idx ON audit_redactions (txid, seq);
