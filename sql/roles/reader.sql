-- The API's least-privilege role: what READ_DATABASE_URL needs, and nothing more.
-- Not a migration (build.rs embeds only sql/*.sql). Create the role once, then, in
-- the service's database:
--   psql -d candystore -f sql/roles/reader.sql
-- The API writes nothing (live-tail tickets are signed, not stored), so this role
-- (or a replica) serves every route. Partitions are read through `events`, never by
-- name, so the grant on `events` covers those made later. tests/it/tls.rs applies
-- this file to a role of its own and asks every read route under it.
GRANT USAGE ON SCHEMA public TO candystore_reader;
GRANT SELECT ON events, dead_letter,
                session_counts, catalog_position, catalog_event_types, catalog_sources,
                catalog_payload_keys,
                audit_checkpoints, audit_leaves, audit_tiles, audit_heads, audit_anchors,
                audit_redactions
             TO candystore_reader;
