#!/usr/bin/env bash
# Fills a database of its own with ROWS events over DAYS days (once), serves it, and
# runs the query k6 script against it. ROWS=1000000 by default; 10000000 for the
# issue's target (with DAYS=90: 90 daily partitions).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-1000000}
# DAYS: the history the rows are spread over, one partition per day (30 by default;
# the storage issue's figures use 90).
DAYS=${DAYS:-30}
# FILL=skewed: loadtest/fill-skewed.sql's real-shaped data (skewed types, sources,
# sessions and payload values) and loadtest/query/skewed.js's shapes, in a database of
# its own; FILL=even (the default): loadtest/fill.sql and loadtest/query/query.js.
FILL=${FILL:-even}
# INTERVAL=week|month (FILL=skewed only): partitions of a week or a month rather than a
# day, in a database of their own, served with the same PARTITION_INTERVAL.
INTERVAL=${INTERVAL:-day}
case "$INTERVAL" in
  day) SUFFIX= ;;
  week|month) SUFFIX=_$INTERVAL ;;
  *) echo "INTERVAL must be day, week or month, not $INTERVAL" >&2; exit 2 ;;
esac
case "$FILL" in
  even) DB=cs_loadtest_${ROWS}_${DAYS}d SQL=loadtest/fill.sql SCRIPT=loadtest/query/query.js
        [ "$INTERVAL" = day ] || { echo "INTERVAL is for FILL=skewed" >&2; exit 2; } ;;
  skewed) DB=cs_loadtest_skewed_${ROWS}_${DAYS}d$SUFFIX SQL=loadtest/fill-skewed.sql SCRIPT=loadtest/query/skewed.js ;;
  *) echo "FILL must be even or skewed, not $FILL" >&2; exit 2 ;;
esac
export PARTITION_INTERVAL="1 $INTERVAL"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
# This database's own checkpoint signing key (the working directory's is `make run`'s).
mkdir -p target/throwaway-keys
export SIGNING_KEY_FILE=target/throwaway-keys/$DB.key
export RABBIT_EXCHANGE=cs_loadtest RABBIT_QUEUE=cs_loadtest
export API_HOST=127.0.0.1 API_PORT=18684 METRICS_PORT=19092 LOG_LEVEL=warn DATABASE_READ_POOL_SIZE=16
# BIN=: another build of the service (an A/B of two builds on one database).
BIN=${BIN:-target/release/candystore}
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 || createdb -h 127.0.0.1 -U postgres "$DB"
$BIN migrate >/dev/null
have=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT count(*) FROM events")
if [ "$have" -lt "$ROWS" ]; then
  echo "filling $DB with $((ROWS - have)) rows"
  time psql -q -h 127.0.0.1 -U postgres -d "$DB" -v rows=$((ROWS - have)) -v days="$DAYS" -v interval="$INTERVAL" -f "$SQL"
fi
# STORE=sqlite: the same rows in an embedded store of their own, moved there the way a
# laptop's store moves to production, reversed: `archive` from the filled database, then
# `restore` into the file (once; each row a new write of the file, with its own leaf).
STORE=${STORE:-postgres}
if [ "$STORE" = sqlite ]; then
  mkdir -p target/loadtest
  FILE=target/loadtest/$DB.db
  if [ ! -f "$FILE" ]; then
    dir=target/loadtest/$DB-archive
    rm -rf "$dir"
    echo "moving $DB into $FILE"
    time $BIN archive --before "$(date -u -d tomorrow +%F)" --to "$dir" >/dev/null
    time DATABASE_URL="sqlite:$FILE" $BIN restore "$dir" >/dev/null
    rm -rf "$dir"
  fi
  export DATABASE_URL="sqlite:$FILE"
fi
# PREWARM=1 reads the tables into the OS cache first (pg_prewarm), so the figures are those
# of a server whose memory holds its working set rather than of first reads from disk.
if [ "${PREWARM:-0}" = 1 ] && [ "$STORE" = postgres ]; then
  psql -q -h 127.0.0.1 -U postgres -d "$DB" -tAc "CREATE EXTENSION IF NOT EXISTS pg_prewarm; \
    SELECT sum(pg_prewarm(c.oid, 'read')) FROM pg_class c WHERE c.relkind IN ('r', 'i') \
    AND c.relnamespace = 'public'::regnamespace AND (c.relname LIKE 'events%' OR c.relname LIKE 'session_counts%')" >/dev/null
fi
# PARTITIONS=1 counts the partitions each shape plans and touches (partitions.py) rather
# than time the shapes: the read pool's sessions load auto_explain, which logs every
# plan with the rows its nodes produced (slower; not for timing).
if [ "${PARTITIONS:-0}" = 1 ]; then
  explain="-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0 -c auto_explain.log_analyze=on -c auto_explain.log_timing=off -c auto_explain.log_format=json"
  export READ_DATABASE_URL="$DATABASE_URL?options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$explain")"
fi
$BIN serve & pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$API_PORT/ready" >/dev/null && break; sleep 0.2; done
# Session summaries read the catalog job's counts: after a fill, wait until the job
# has counted it (10M events: ~5 min), or the session shapes measure the fallback.
for _ in $(seq 1 600); do
  [ "$STORE" = sqlite ] && break  # the embedded store counts a session's rows as it reads
  behind=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT coalesce((SELECT max(seq) FROM events), 0) - coalesce((SELECT seq FROM catalog_position), 0)")
  [ "$behind" -le 0 ] && break
  sleep 1
done
# A 10 s pass first, so the figures are those of a server that has been serving, not
# of the first reads after the fill.
k6 run --quiet -e BASE_URL="http://127.0.0.1:$API_PORT" -e ROWS="$ROWS" -e DURATION=10s "$SCRIPT" >/dev/null 2>&1 || true
if [ "${PARTITIONS:-0}" = 1 ]; then
  python3 loadtest/query/partitions.py "http://127.0.0.1:$API_PORT" "${PG_LOG:-/var/log/postgresql/postgresql-15-main.log}" "${ITERATIONS:-3}"
  exit 0
fi
# INGEST_RATE=1000 measures while events are being stored at that rate, as in production.
# INGEST_SHAPE: what those events look like; `skewed` (the default on FILL=skewed) draws
# them as the fill drew its rows, so they join its sessions and hold its documents, as live
# traffic would; `text` (the default on FILL=even) publishes `candystore publish`'s sample
# events, which hold none of the skewed fill's documents (a document common yesterday and
# absent from today's newest rows, the hard case).
INGEST_SHAPE=${INGEST_SHAPE:-$([ "$FILL" = skewed ] && echo skewed || echo text)}
if [ "${INGEST_RATE:-0}" -gt 0 ]; then
  $BIN publish --count 1000000000 --rate "$INGEST_RATE" --shape "$INGEST_SHAPE" >/dev/null & pub=$!
  trap 'kill $pub 2>/dev/null; kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
  sleep 2
fi
status=0
k6 run -e BASE_URL="http://127.0.0.1:$API_PORT" -e ROWS="$ROWS" "$SCRIPT" "$@" || status=$?
if [ "${INGEST_RATE:-0}" -gt 0 ]; then
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^candystore_(storage_latency_seconds_(count|sum)|events_stored_total|queue_depth)' || true
fi
exit $status
