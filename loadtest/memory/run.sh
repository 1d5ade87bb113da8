#!/usr/bin/env bash
# Peak RSS of `candystore serve` (VmHWM) in two runs the hardening issue asks for:
#   1. ingesting COUNT bodies of SIZE bytes, each one array of integers (the worst
#      case for a JSON parser), with the default settings;
#   2. CLIENTS clients fetching /events/{id}/raw of the largest event at once.
# Writes reports/memory.md. Defaults: COUNT=1000 SIZE=20000000 CLIENTS=100.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-1000} SIZE=${SIZE:-20000000} CLIENTS=${CLIENTS:-100}
. scripts/serve-throwaway.sh
serve_throwaway candystore_memory 18684 19091
hwm() { awk '/VmHWM/ {print $2}' /proc/$pid/status; }   # kB
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
idle=$(rss)

started=$(date +%s)
$BIN publish --count "$COUNT" --size "$SIZE" --shape int-array --generation 1 >/dev/null &
pub=$!
while :; do
  n=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT count(*) FROM events")
  [ "$n" -ge "$COUNT" ] && break
  kill -0 $pid || { echo "candystore died" >&2; exit 1; }
  sleep 1
done
wait $pub
ingest_s=$(( $(date +%s) - started ))
ingest_hwm=$(hwm)
dead=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT count(*) FROM dead_letter")

# Reset the high-water mark, then many clients read the largest event at once.
echo 5 > /proc/$pid/clear_refs
id=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT id FROM events ORDER BY pg_column_size(payload) DESC LIMIT 1")
started=$(date +%s.%N)
codes=$(seq 1 "$CLIENTS" | xargs -P "$CLIENTS" -I{} curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$API_PORT/events/$id/raw" | sort | uniq -c | tr -s ' ' | paste -sd, -)
raw_s=$(echo "$(date +%s.%N) - $started" | bc)
raw_hwm=$(hwm)
health=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$API_PORT/health")

mb() { echo "scale=0; $1 / 1024" | bc; }
cat > reports/memory.md <<REPORT
# Memory under large bodies

\`COUNT=$COUNT SIZE=$SIZE CLIENTS=$CLIENTS bash loadtest/memory/run.sh\` on this machine
($(nproc) cores), default settings (PREFETCH_COUNT=100, MAX_INFLIGHT_BYTES=256 MiB,
MAX_BATCH_BYTES=16 MiB). Peak RSS is the kernel's VmHWM of the serve process.

| run | result | peak RSS |
|---|---|---|
| idle after start | | $(mb "$idle") MB |
| ingest $COUNT bodies of $SIZE bytes (one array of integers each) | $COUNT stored, $dead dead letters, ${ingest_s}s | $(mb "$ingest_hwm") MB |
| $CLIENTS clients fetch /events/{id}/raw of the largest event at once | status counts: $codes; ${raw_s}s; /health after: $health | $(mb "$raw_hwm") MB |
REPORT
cat reports/memory.md
