#!/usr/bin/env bash
# What PostgreSQL spends per event on the write path (reports/write-cost.md): ROWS
# events (100,000 by default) are stored by a real `candystore serve` from
# `candystore publish` bodies (~1 KB, the three envelope generations, as `make
# bench` drains), copied to `src`, and then inserted again, server-side, into an
# unpartitioned copy of an events partition:
#   - the heap alone, then with each of the partition's indexes alone, then all;
#   - with payload/envelope/properties as jsonb/json (what is stored) and as text
#     (no parsing or validation), from the same text;
#   - the binary COPY into the writer's staging table, and the move from there
#     into the partitioned `events` with ON CONFLICT, as the writer does.
# Best of REPS (3) runs, in microseconds of PostgreSQL time per event, one
# transaction per run (the commit's fsync is per batch, not per event: the
# bench's "commit" step). Uses a database of its own, dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-100000} REPS=${REPS:-3}
. scripts/serve-throwaway.sh
serve_throwaway cs_write_cost 18696 19096
PSQL=(psql -X -q -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1)
$BIN publish --count "$ROWS" >/dev/null
until [ "$("${PSQL[@]}" -tAc "SELECT count(*) FROM events")" -ge "$ROWS" ]; do sleep 0.5; done
kill -TERM "$pid"; wait "$pid" || true
PART=$("${PSQL[@]}" -tAc "SELECT tableoid::regclass FROM events GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
FILE=$(mktemp -u /tmp/cs_write_cost.XXXXXX.bin)
trap 'rm -f "$FILE"' RETURN

"${PSQL[@]}" <<SQL
CREATE TABLE src AS SELECT * FROM events;
CREATE TABLE src_text AS
  SELECT seq, id, event_type, source, target, routing_key, exchange, "timestamp", received_at, stored_at,
         payload::text AS payload, session_id, correlation_id, storage_latency_ms, generation,
         envelope::text AS envelope, payload_member, properties::text AS properties, sanitized,
         original_body, txid
  FROM events;
CREATE TABLE m (LIKE $PART INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION);
CREATE TABLE m_text (LIKE src_text);
-- µs of PostgreSQL time per row for \`stmt\`, best of \`reps\`, \`target\` emptied first.
CREATE FUNCTION cost(stmt text, target text DEFAULT 'm', reps int DEFAULT $REPS) RETURNS numeric
LANGUAGE plpgsql AS \$\$
DECLARE
  best float8 := 'Infinity';
  t timestamptz;
  took float8;
  n bigint := (SELECT count(*) FROM src);
BEGIN
  FOR i IN 1..reps LOOP
    EXECUTE format('TRUNCATE %s', target);
    t := clock_timestamp();
    EXECUTE stmt;
    took := extract(epoch FROM clock_timestamp() - t);
    best := least(best, took);
  END LOOP;
  RETURN round((1e6 * best / n)::numeric, 1);
END
\$\$;
VACUUM ANALYZE src, src_text;
SQL

INS="INSERT INTO m SELECT * FROM src"
heap=$("${PSQL[@]}" -tAc "SELECT cost('$INS')")
echo "| what | µs per event | bytes per event |"
echo "|---|---|---|"
echo "| heap alone (the row, TOAST, WAL) | $heap | $("${PSQL[@]}" -tAc "SELECT round(pg_table_size('m')::numeric / $ROWS)") |"
"${PSQL[@]}" -tA -F '|' -c "SELECT indexname, regexp_replace(indexdef, ' ON (public\.)?$PART ', ' ON m ') FROM pg_indexes WHERE schemaname = 'public' AND tablename = '$PART' ORDER BY indexname" |
while IFS='|' read -r name def; do
  short=${name#"${PART}_"}
  "${PSQL[@]}" -c "${def/INDEX * ON/INDEX cost_idx ON}"
  with=$("${PSQL[@]}" -tAc "SELECT cost('$INS')")
  size=$("${PSQL[@]}" -tAc "SELECT round(pg_relation_size('cost_idx')::numeric / $ROWS)")
  "${PSQL[@]}" -c "DROP INDEX cost_idx"
  echo "| + $short alone | +$(echo "$with - $heap" | bc) | $size |"
  echo "$def" >> "$FILE.defs"
done
i=0; while read -r def; do i=$((i + 1)); "${PSQL[@]}" -c "${def/INDEX * ON/INDEX all_$i ON}"; done < "$FILE.defs"
all=$("${PSQL[@]}" -tAc "SELECT cost('$INS')")
echo "| heap + all $(wc -l < "$FILE.defs") indexes | $all | $("${PSQL[@]}" -tAc "SELECT round(pg_total_relation_size('m')::numeric / $ROWS)") |"
rm -f "$FILE.defs"
"${PSQL[@]}" -c "DROP TABLE m; CREATE TABLE m (LIKE $PART INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION)"
COLS='seq, id, event_type, source, target, routing_key, exchange, "timestamp", received_at, stored_at, payload, session_id, correlation_id, storage_latency_ms, generation, envelope, payload_member, properties, sanitized, original_body, txid'
CAST='seq, id, event_type, source, target, routing_key, exchange, "timestamp", received_at, stored_at, payload::jsonb, session_id, correlation_id, storage_latency_ms, generation, envelope::json, payload_member, properties::json, sanitized, original_body, txid'
json=$("${PSQL[@]}" -tAc "SELECT cost('INSERT INTO m ($COLS) SELECT $CAST FROM src_text')")
text=$("${PSQL[@]}" -tAc "SELECT cost('INSERT INTO m_text SELECT * FROM src_text', 'm_text')")
echo "| heap alone, from JSON text into jsonb/json columns (parse, validate) | $json | |"
echo "| heap alone, from JSON text into text columns | $text | |"

# The writer's path: binary COPY into the staging table, then the move.
"${PSQL[@]}" <<SQL
COPY (SELECT row_number() OVER ()::int4, id, event_type, source, target, routing_key, exchange, "timestamp",
             true, received_at, payload, session_id, correlation_id, generation, envelope, payload_member,
             properties, sanitized, original_body FROM src) TO '$FILE' (FORMAT binary);
-- Unlogged, like the writer's temporary table: no WAL.
CREATE UNLOGGED TABLE staging (
    ord int4 NOT NULL, id text NOT NULL, event_type text NOT NULL, source text NOT NULL, target text,
    routing_key text NOT NULL, exchange text NOT NULL, "timestamp" timestamptz NOT NULL, own_time bool NOT NULL,
    received_at timestamptz NOT NULL, payload jsonb NOT NULL, session_id text, correlation_id text,
    generation int2 NOT NULL, envelope json NOT NULL, payload_member text, properties json NOT NULL,
    sanitized bool NOT NULL, original_body bytea);
SQL
copy=$("${PSQL[@]}" -tAc "SELECT cost('COPY staging FROM ''$FILE'' (FORMAT binary)', 'staging')")  # leaves one copy of the rows in staging
MOVE='INSERT INTO events (id, event_type, source, target, routing_key, exchange, "timestamp", received_at, payload, session_id, correlation_id, generation, envelope, payload_member, properties, sanitized, original_body) SELECT id, event_type, source, target, routing_key, exchange, "timestamp", received_at, payload, session_id, correlation_id, generation, envelope, payload_member, properties, sanitized, original_body FROM staging'
# work_mem large enough that ORDER BY sorts in memory, as a writer's batch (50-500 rows) does.
move() { PGOPTIONS='-c work_mem=1GB' "${PSQL[@]}" -tAc "SELECT cost('${1//\'/\'\'}', 'events')"; }
echo "| binary COPY into the staging table (unlogged here; the writer's is temporary) | $copy | |"
echo "| move: staging → partitioned events, all indexes, ORDER BY ord, ON CONFLICT DO NOTHING (as the writer) | $(move "$MOVE ORDER BY ord ON CONFLICT DO NOTHING") | |"
echo "| move without ORDER BY | $(move "$MOVE ON CONFLICT DO NOTHING") | |"
echo "| move without ORDER BY and ON CONFLICT | $(move "$MOVE") | |"
SEQ=$("${PSQL[@]}" -tAc "SELECT pg_get_serial_sequence('events', 'seq')")
DIRECT=${MOVE/INTO events (/INTO $PART (seq, }
NEXT="SELECT nextval('$SEQ'), "
echo "| move without ORDER BY and ON CONFLICT, straight into the partition | $(move "${DIRECT/SELECT /$NEXT}") | |"
rm -f "$FILE"
