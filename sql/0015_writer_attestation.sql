-- Writer attestations (src/attest.rs). With AUDIT_KEY set, the batch writer stores
-- a keyed MAC of each row's columns; the seal job checks it, so a row inserted
-- with SQL (no key, no valid MAC) is marked unattested and `candystore verify`
-- names it. Adding a nullable column without a default rewrites nothing.
ALTER TABLE events ADD COLUMN attestation bytea;

-- What the seal job found: true, the row's MAC held; false, it was missing or
-- wrong (the row is unattested, and its chain step says so); NULL, not checked
-- (no AUDIT_KEY, or before the first attested row).
ALTER TABLE audit_seals ADD COLUMN attested boolean;

-- The checkpoint's rows were checked against AUDIT_KEY (from the first attested
-- row on, every later row must carry a valid MAC), and how many were unattested.
ALTER TABLE audit_checkpoints
    ADD COLUMN attested boolean NOT NULL DEFAULT false,
    ADD COLUMN unattested bigint NOT NULL DEFAULT 0;
