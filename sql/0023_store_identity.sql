-- The store's identity: each archive file names the store it was written from,
-- so a restore knows whether its rows come home (the tree holds their leaves at
-- their places) or join this store's trail as new writes, each with a new leaf
-- (storage/archive.rs). A copy of the database (a dump, a replica promoted)
-- keeps the identity with the leaves.
CREATE TABLE IF NOT EXISTS store_identity (
    one int  PRIMARY KEY DEFAULT 1 CHECK (one = 1),
    id  text NOT NULL
);
INSERT INTO store_identity (id) VALUES (gen_random_uuid()::text) ON CONFLICT DO NOTHING;
