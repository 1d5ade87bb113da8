-- Fills `events` with :rows synthetic events, server-side, in one statement per
-- million rows: 1,000 sessions, 40 event types, 20 sources, a quarter with a target,
-- a correlation id per 10 events, ~400-byte payloads. As in a live event log,
-- timestamps rise with insertion order (spread over the :days days before now, 30 by default, with
-- up to a second of jitter so neighbours arrive slightly out of order), so heap
-- order follows time order while sessions, types and sources interleave.
-- Usage: psql -v rows=1000000 [-v days=90] [-v into_default=1] -f loadtest/fill.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?days}
\else
\set days 30
\endif
-- A partitioned table gets a partition per day first (what the maintenance job
-- would have made as the days went by), so no row lands in the default partition;
-- with -v into_default=1 it does not (a database from before writers made
-- partitions: the rows land in the default partition).
\if :{?into_default}
SELECT set_config('fill.skip_partitions', 'on', false) \gset
\else
SELECT set_config('fill.skip_partitions', 'off', false) \gset
\endif
SELECT set_config('fill.days', :'days', false) \gset
DO $parts$
DECLARE
  d date;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'events'::regclass) <> 'p'
     OR current_setting('fill.skip_partitions')::bool THEN
    RETURN;
  END IF;
  FOR d IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - current_setting('fill.days')::int - 1,
                                  (now() AT TIME ZONE 'UTC')::date, interval '1 day')::date LOOP
    IF to_regclass('events_p' || to_char(d, 'YYYYMMDD')) IS NULL THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L) '
                     'WITH (autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 100000)',
                     'events_p' || to_char(d, 'YYYYMMDD'), d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00');
    END IF;
  END LOOP;
END
$parts$;
-- psql does not substitute variables inside the DO body: pass them as settings.
SELECT set_config('fill.rows', :'rows', false), set_config('fill.start', (SELECT count(*) FROM events)::text, false) \gset
DO $fill$
DECLARE
  total bigint := current_setting('fill.rows')::bigint;
  base bigint := current_setting('fill.start')::bigint;
  done bigint := 0;
  n bigint;
  span interval := make_interval(days => current_setting('fill.days')::int);
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
           now() - span + (base + done + g) * (span / (base + total))
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
