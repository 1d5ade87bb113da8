-- The catalog counts at most 100 distinct top-level payload keys (with their
-- JSON types) per event type (storage/catalog.rs): the rest are counted in one
-- row of json_type 'other' (key ''), and the type is flagged here. Adding a
-- column with a constant default rewrites nothing.
ALTER TABLE catalog_event_types ADD COLUMN payload_keys_capped boolean NOT NULL DEFAULT false;
