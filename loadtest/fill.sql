-- Fills `events` with :rows synthetic events, server-side, in one statement per
-- million rows: 1,000 sessions, 40 event types, 20 sources, a quarter with a target,
-- a correlation id per 10 events, ~400-byte payloads. As in a live event log,
-- timestamps rise with insertion order (spread over the 30 days before now, with
-- up to a second of jitter so neighbours arrive slightly out of order), so heap
-- order follows time order while sessions, types and sources interleave.
-- Usage: psql -v rows=1000000 -f loadtest/fill.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
-- psql does not substitute variables inside the DO body: pass them as settings.
SELECT set_config('fill.rows', :'rows', false), set_config('fill.start', (SELECT count(*) FROM events)::text, false) \gset
DO $fill$
DECLARE
  total bigint := current_setting('fill.rows')::bigint;
  base bigint := current_setting('fill.start')::bigint;
  done bigint := 0;
  n bigint;
BEGIN
  WHILE done < total LOOP
    n := least(1000000, total - done);
    INSERT INTO events (id, event_type, source, target, routing_key, exchange, "timestamp", received_at,
                        stored_at, payload, session_id, correlation_id, storage_latency_ms, generation,
                        envelope, payload_member, properties)
    SELECT 'load-' || (base + done + g),
           'load.type.' || (g % 40),
           'svc-' || (g % 20),
           CASE WHEN g % 4 = 0 THEN 'candybar' END,
           'load.type.' || (g % 40),
           'events',
           now() - interval '30 days' + (base + done + g) * (interval '30 days' / (base + total))
             + ((g * 7919) % 2000 - 1000) * interval '1 millisecond',
           now(), now(),
           jsonb_build_object('seq', g, 'text', repeat('lorem ipsum ', 30), 'n', g % 97, 'flag', g % 2 = 0,
                              'tags', jsonb_build_array('t' || (g % 7), 't' || (g % 11))),
           'sess-' || (g % 1000),
           'corr-' || (g / 10),
           5.0, 1, '{"event_type":"load"}'::json, 'data', '{}'::json
    FROM generate_series(1, n) AS g;
    done := done + n;
    RAISE NOTICE '% rows at %', done, clock_timestamp();
    COMMIT;
  END LOOP;
END
$fill$;
-- VACUUM sets the visibility map (index-only scans) and hint bits, as autovacuum
-- would on a live table; without it the first queries pay for both.
VACUUM (ANALYZE) events;
