-- Fills `events` with :rows synthetic events shaped like a real event log rather than
-- like loadtest/fill.sql's even spread (issue 20's data):
--
-- - ids: 32 random hex digits;
-- - 60 event types `evt.<k>.done` with a cubic skew (evt.0 ~25%, evt.59 ~0.6%);
-- - 12 sources `svc-<k>`: nine in ten events come from their type's home source
--   (`svc-<k mod 12>`), the rest from a quadratically skewed one, so a rare type and a
--   source that is not its home rarely co-occur (evt.59 with svc-5: ~350 events in 10M,
--   where independence would predict thousands);
-- - sessions `md5('session-<k>')` for k in 0..200,000 with a power-law skew: session 0
--   holds ~6.6% of all events (~660,000 of 10M), the smallest a few;
-- - correlation ids: a random 32-hex id per ~5 events;
-- - targets: 10% `candybar`, 5% `hermes`, the rest none;
-- - timestamps rise with insertion order over the :days days before now, and ~0.3% of
--   events arrive late, dated up to an hour before their neighbours;
-- - ~700-byte nested payloads: agent {name, model}, repo {name} of 5,000 names with a
--   quadratic skew (repo-0 ~1.4%, repo-4990 ~0.01%: ~1,000 events), status `error` in
--   2% (else `ok`), a message text and a counter.
--
-- Usage: psql -v rows=10000000 [-v days=90] [-v interval=week] -f loadtest/fill-skewed.sql "$DATABASE_URL"
-- (loadtest/query/run.sh with FILL=skewed).
\set ON_ERROR_STOP on
\if :{?days}
\else
\set days 30
\endif
SELECT set_config('fill.days', :'days', false) \gset
-- A partition per :interval (day, week or month; day by default) first, what the
-- maintenance job would have made as the days went by, so no row lands in the default
-- partition. Cut as PARTITION_INTERVAL cuts them (weeks from Monday, months from the
-- 1st, UTC) and named by their first day.
\if :{?interval}
\else
\set interval day
\endif
SELECT set_config('fill.interval', :'interval', false) \gset
DO $parts$
DECLARE
  d date;
  step interval := ('1 ' || current_setting('fill.interval'))::interval;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = 'events'::regclass) <> 'p' THEN
    RETURN;
  END IF;
  FOR d IN SELECT generate_series(date_trunc(current_setting('fill.interval'),
                                             (now() AT TIME ZONE 'UTC')::date - current_setting('fill.days')::int - 1),
                                  (now() AT TIME ZONE 'UTC')::date, step)::date LOOP
    IF to_regclass('events_p' || to_char(d, 'YYYYMMDD')) IS NULL THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L) '
                     'WITH (autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 100000)',
                     'events_p' || to_char(d, 'YYYYMMDD'), d::text || ' 00:00:00+00', (d + step)::date::text || ' 00:00:00+00');
      EXECUTE format('ALTER TABLE %I ALTER COLUMN payload SET STATISTICS 1000', 'events_p' || to_char(d, 'YYYYMMDD'));
    END IF;
  END LOOP;
END
$parts$;
SELECT set_config('fill.rows', :'rows', false), set_config('fill.start', (SELECT count(*) FROM events)::text, false) \gset
DO $fill$
DECLARE
  total bigint := current_setting('fill.rows')::bigint;
  base bigint := current_setting('fill.start')::bigint;
  done bigint := 0;
  n bigint;
  span interval := make_interval(days => current_setting('fill.days')::int);
BEGIN
  PERFORM setseed(0.20);
  WHILE done < total LOOP
    n := least(1000000, total - done);
    INSERT INTO events (id, event_type, source, target, routing_key, exchange, "timestamp", received_at,
                        stored_at, payload, session_id, correlation_id, storage_latency_ms, generation,
                        envelope, payload_member, properties)
    SELECT md5(random()::text || g),
           'evt.' || r.t || '.done',
           'svc-' || CASE WHEN random() < 0.9 THEN r.t % 12 ELSE floor(12 * random() ^ 2)::int END,
           CASE WHEN r.u < 0.10 THEN 'candybar' WHEN r.u < 0.15 THEN 'hermes' END,
           'evt.' || r.t || '.done',
           'bloodbank',
           now() - span + (base + done + g) * (span / (base + total))
             - CASE WHEN random() < 0.003 THEN random() * interval '1 hour' ELSE interval '0' END,
           now(), now(),
           jsonb_build_object(
             'agent', jsonb_build_object('name', 'agent-' || floor(40 * random() ^ 2)::int,
                                         'model', (ARRAY['opus', 'sonnet', 'haiku', 'gpt'])[1 + floor(4 * random() ^ 2)::int]),
             'repo', jsonb_build_object('name', 'repo-' || floor(5000 * random() ^ 2)::int),
             'status', CASE WHEN random() < 0.02 THEN 'error' ELSE 'ok' END,
             'message', 'step ' || g || ' of task ' || md5(g::text) || ': ' ||
                        substr(repeat('the agent read the diff, ran the tests and wrote a summary; ', 10),
                               1 + (g % 40)::int, 480),
             'counter', g),
           md5('session-' || floor(200000 * random() ^ 4.5)::int),
           md5('corr-' || ((base + done + g) / 5)),
           5.0, 1, '{"event_type":"load"}'::json, 'data', '{}'::json
    FROM generate_series(1, n) AS g,
         LATERAL (SELECT floor(60 * random() ^ 3)::int + 0 * g AS t, random() + 0 * g AS u) r;
    done := done + n;
    RAISE NOTICE '% rows at %', done, clock_timestamp();
    COMMIT;
  END LOOP;
END
$fill$;
-- VACUUM sets the visibility map (index-only scans) and hint bits, as autovacuum
-- would on a live table; ANALYZE gives the planner what a live table would have.
VACUUM (ANALYZE) events;
