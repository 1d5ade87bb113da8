#!/usr/bin/env bash
# Storage figures (reports/storage.md): bytes per event with pglz and with lz4 TOAST
# compression on the same ROWS-event set (33GOD-like mix, events.sql), and the rates
# of `candystore archive --drop` and `candystore restore` for one partition of ROWS
# events. Uses a database of its own, dropped at the end. ROWS=1000000 by default;
# METHODS=lz4 skips the pglz load.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-1000000}
DB=cs_storage_figures
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" LOG_LEVEL=warn
BIN=target/release/candystore
PSQL=(psql -X -q -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1)
DAY=$(date -u -d '3 days ago' +%Y-%m-%d)
NEXT=$(date -u -d '2 days ago' +%Y-%m-%d)
ARCHIVE=$(mktemp -d)
trap 'rm -rf "$ARCHIVE"' EXIT
dropdb -h 127.0.0.1 -U postgres --if-exists "$DB"
createdb -h 127.0.0.1 -U postgres "$DB"
$BIN migrate >/dev/null
P="events_p${DAY//-/}"
"${PSQL[@]}" -c "CREATE TABLE $P PARTITION OF events FOR VALUES FROM ('$DAY 00:00:00+00') TO ('$NEXT 00:00:00+00')"
# Out-of-line and uncompressed in src, so that each run below compresses the values
# itself (PostgreSQL copies an already-compressed value as it is).
"${PSQL[@]}" -c "CREATE TABLE src (LIKE events INCLUDING DEFAULTS); ALTER TABLE src ALTER COLUMN payload SET STORAGE EXTERNAL, ALTER COLUMN envelope SET STORAGE EXTERNAL, ALTER COLUMN properties SET STORAGE EXTERNAL"
echo "generating $ROWS events"
"${PSQL[@]}" -v rows="$ROWS" -v day="$DAY" -v target=src -f loadtest/storage/events.sql

measure() { # $1: label
  "${PSQL[@]}" -At -F ' | ' -c "
    SELECT '$1', count(*),
      round(avg(octet_length(payload::text) + octet_length(envelope::text) + octet_length(properties::text))),
      round(pg_relation_size('$P')::numeric / count(*)),
      round(coalesce(pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE oid = '$P'::regclass)), 0)::numeric / count(*)),
      round(pg_indexes_size('$P')::numeric / count(*)),
      round(pg_total_relation_size('$P')::numeric / count(*))
    FROM $P"
}
echo "| compression | events | JSON bytes/event | heap | TOAST | indexes | total bytes/event | insert time |"
echo "|---|---|---|---|---|---|---|---|"
# METHODS=lz4 loads once (for the archive figures alone).
for method in ${METHODS:-pglz lz4}; do
  # Set on the partition itself: ALTER on the partitioned table does not reach it.
  for t in events "$P"; do
    "${PSQL[@]}" -c "ALTER TABLE $t ALTER COLUMN payload SET COMPRESSION $method, ALTER COLUMN envelope SET COMPRESSION $method, ALTER COLUMN properties SET COMPRESSION $method, ALTER COLUMN original_body SET COMPRESSION $method" >/dev/null
  done
  "${PSQL[@]}" -c "TRUNCATE events" >/dev/null
  "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
  start=$(date +%s.%N)
  "${PSQL[@]}" -c "INSERT INTO events SELECT * FROM src" >/dev/null
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  "${PSQL[@]}" -c "VACUUM (ANALYZE) $P" >/dev/null
  echo "| $(measure "$method") | ${secs%???????}s |"
done
"${PSQL[@]}" -c "DROP TABLE src"

echo
echo "archive and restore of $P ($ROWS events, lz4):"
start=$(date +%s.%N)
$BIN archive --before "$NEXT" --to "$ARCHIVE" --drop | tail -1
a=$(echo "$(date +%s.%N) - $start" | bc)
ls -l "$ARCHIVE"
start=$(date +%s.%N)
$BIN restore "$ARCHIVE/$P.ndjson.zst" | tail -1
r=$(echo "$(date +%s.%N) - $start" | bc)
echo "archive (incl. read-back check and drop): ${a%???????}s, $(echo "$ROWS / $a" | bc) events/s"
echo "restore: ${r%???????}s, $(echo "$ROWS / $r" | bc) events/s"
"${PSQL[@]}" -At -c "SELECT 'rows after restore: ' || count(*) FROM events"
dropdb -h 127.0.0.1 -U postgres "$DB"
