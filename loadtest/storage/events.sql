-- :rows events shaped like the 33GOD mix, all on one day (:day, UTC), into table
-- :target (same columns as events). Payloads are transcript-like text: 70% about
-- 500 characters, 25% about 4,000, 5% about 20,000 (the large ones are TOASTed, where
-- the compression method matters); ids are random UUIDs; gen-3 envelopes and AMQP
-- properties as Bloodbank publishes them.
\set ON_ERROR_STOP on
CREATE TEMP TABLE corpus AS
SELECT string_agg(w, ' ') AS t FROM (
  SELECT (ARRAY['the','segment','transcript','agent','decision','recorded','meeting','candybar','session',
                'confidence','speaker','said','that','we','should','ship','release','after','review','pipeline',
                'event','store','queue','audit','trail','because','latency','budget','customer','deploy','rollback',
                'consensus','notes','action','item','owner','deadline','question','answer','follow','up','and',
                'then','with','from','into','about','which','while','their','there','would','could'])[1 + (random() * 53)::int] AS w
  FROM generate_series(1, 12000)) s;
INSERT INTO :target (seq, id, event_type, source, target, routing_key, exchange, "timestamp", received_at, stored_at,
                     payload, session_id, correlation_id, storage_latency_ms, generation, envelope, payload_member,
                     properties)
SELECT g, u::text, 'bloodbank.v1.' || (ARRAY['transcript.segment','repo.decision','agent.step','meeting.note'])[1 + g % 4],
       'hermes://agent/' || (g % 20), NULL, 'bloodbank.evt.v1.' || (g % 40), 'events',
       :'day'::timestamptz + g * (interval '86399 seconds' / :rows),
       now(), now(),
       jsonb_build_object('text', substr(c.t, 1 + ((g::bigint * 7919) % 40000)::int,
                                         CASE WHEN g % 20 = 0 THEN 20000 WHEN g % 20 <= 5 THEN 4000 ELSE 500 END),
                          'confidence', round((g % 1000) / 1000.0, 3), 'speaker', 'spk-' || (g % 7),
                          'segment', g, 'language', 'en', 'final', g % 3 = 0),
       'sess-' || (g % 1000), 'corr-' || (g / 10), 5.0, 3,
       json_build_object('specversion', '1.0', 'id', u::text, 'type', 'bloodbank.v1.event', 'source',
                         'hermes://agent/' || (g % 20), 'subject', 'bloodbank.evt.v1.' || (g % 40),
                         'time', :'day'::timestamptz, 'datacontenttype', 'application/json',
                         'producer', 'hermes-agent:33god-pm', 'service', '33god', 'correlationid', 'corr-' || (g / 10)),
       'data',
       json_build_object('content_type', 'application/json', 'delivery_mode', 2, 'message_id', u::text,
                         'timestamp', 1795000000 + g, 'app_id', 'bloodbank',
                         'headers', json_build_object('x-trace-id', md5(g::text), 'x-attempt', 1))
FROM generate_series(1, :rows) AS g, LATERAL (SELECT gen_random_uuid() AS u) r, corpus c;
