-- The per-installation secret that authenticates `candystore replay`'s mark
-- (src/replay_mark.rs). Ingest drops a delivery as "already stored" only when its
-- x-candystore-replay header carries a MAC made with this secret over the
-- delivery's routing key and body; any other mark is stored like any event. One
-- row, 32 bytes from two random UUIDs (244 random bits: gen_random_uuid() uses
-- the server's strong random source).
CREATE TABLE replay_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret    bytea NOT NULL CHECK (octet_length(secret) = 32)
);
INSERT INTO replay_secret (secret)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
