#!/usr/bin/env bash
# Ingest latency while `serve` archives and drops a large partition (issue 21, item 5):
# the archive's compression, hashing and read-back run on blocking threads, so the
# runtime's two workers keep committing and acking live traffic.
#
# A partition of ROWS events (loadtest/storage/events.sql: ~3 KB each, TOASTed text)
# is loaded 100 days back. `serve` starts with ARCHIVE_DIR and a RETENTION that makes
# that partition due GRACE seconds later, MAINTENANCE_INTERVAL=10s, while RATE
# events/s are published for the whole run. /metrics is sampled every second; the
# storage-latency histogram (delivery → commit) gives p50/p99 for the seconds before
# the archive, while it runs (the first run that finds the partition due, to the drop),
# and after. Writes reports/archive-under-ingest.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-1000000} RATE=${RATE:-1000} GRACE=${GRACE:-60} AFTER=${AFTER:-30}
REPORT=${REPORT:-reports/archive-under-ingest.md}
BIN=target/release/candystore
DB=cs_archive_ingest
WORK=$(mktemp -d)
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
mkdir -p target/throwaway-keys
export SIGNING_KEY_FILE=target/throwaway-keys/$DB.key
export RABBIT_EXCHANGE=$DB RABBIT_QUEUE=$DB
export API_HOST=127.0.0.1 API_PORT=18697 METRICS_PORT=19097 LOG_LEVEL=info LOG_FORMAT=console
PSQL=(psql -X -q -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1)
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh
REMOVE_WORK=1
trap cleanup EXIT

[ -x "$BIN" ] || cargo build --release --locked
drop_database "$DB"
createdb -h 127.0.0.1 -U postgres "$DB"
$BIN migrate >/dev/null 2>&1
DAY=$(date -u -d '100 days ago' +%F)
NEXT=$(date -u -d '99 days ago' +%F)
P="events_p${DAY//-/}"
"${PSQL[@]}" -c "CREATE TABLE $P PARTITION OF events FOR VALUES FROM ('$DAY 00:00:00+00') TO ('$NEXT 00:00:00+00')"
echo "loading $ROWS events into $P"
"${PSQL[@]}" -v rows="$ROWS" -v day="$DAY" -v target=events -f loadtest/storage/events.sql
"${PSQL[@]}" -c "VACUUM (ANALYZE) $P"
# The load's dirty pages and WAL written out now, not during the measured minutes.
"${PSQL[@]}" -c "CHECKPOINT"
sleep 10
bytes=$("${PSQL[@]}" -At -c "SELECT pg_size_pretty(pg_total_relation_size('$P'))")

# The partition ends at $NEXT 00:00 UTC: due once older than RETENTION, GRACE s from now.
ends=$(date -u -d "$NEXT 00:00:00" +%s)
retention=$(( $(date +%s) + GRACE - ends ))
mkdir -p "$WORK/archive"
start=$(date +%s.%N)
RETENTION="${retention}s" ARCHIVE_DIR="$WORK/archive" MAINTENANCE_INTERVAL=10s \
  $BIN serve >"$WORK/serve.log" 2>&1 & serve=$!; pids+=("$serve")
ready
count=$(( RATE * (GRACE + AFTER + 600) ))
$BIN publish --count "$count" --rate "$RATE" --size 1024 >"$WORK/publish.txt" 2>&1 & pub=$!; pids+=("$pub")

# One line a second: elapsed, dropped, the histogram's cumulative buckets.
metrics() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics"; }
dropped_at=""
while :; do
  sleep 1
  t=$(echo "$(date +%s.%N) - $start" | bc)
  m=$(metrics)
  dropped=$(awk '$1 ~ /^candystore_partitions_dropped_total\{table="events"\}/ {print $2}' <<<"$m")
  buckets=$(awk '$1 ~ /^candystore_storage_latency_seconds_bucket/ {sub(/.*le="/, "", $1); sub(/".*/, "", $1); printf "%s=%s ", $1, $2}' <<<"$m")
  echo "$t ${dropped:-0} $buckets" >>"$WORK/samples.txt"
  if [ -z "$dropped_at" ] && [ "${dropped:-0}" != 0 ]; then dropped_at=$t; fi
  if [ -n "$dropped_at" ] && [ "$(echo "$t > $dropped_at + $AFTER" | bc)" = 1 ]; then break; fi
  if [ "$(echo "$t > 1800" | bc)" = 1 ]; then echo "the partition was not dropped within 30 min" >&2; exit 1; fi
done
kill -TERM "$pub" 2>/dev/null || true
sed 's/\x1b\[[0-9;]*m//g' "$WORK/serve.log" >"$WORK/plain.log"
archived_line=$(grep -m1 'partition archived' "$WORK/plain.log" || true)
stored=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT count(*) FROM events")
left=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT CASE WHEN to_regclass('$P') IS NULL THEN 'yes' ELSE 'NO' END")

python3 - "$WORK/samples.txt" "$GRACE" "$dropped_at" >"$WORK/table.md" <<'PY'
import sys
samples, grace, dropped = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = []
for line in open(samples):
    parts = line.split()
    t = float(parts[0])
    b = {}
    for kv in parts[2:]:
        k, v = kv.split("=")
        b[float("inf") if k == "+Inf" else float(k)] = float(v)
    rows.append((t, b))
def window(lo, hi):
    a = max((r for r in rows if r[0] <= lo), key=lambda r: r[0], default=rows[0])
    z = max((r for r in rows if r[0] <= hi), key=lambda r: r[0])
    return {k: z[1][k] - a[1].get(k, 0) for k in z[1]}
def quantile(d, q):
    les = sorted(d)
    n = d[les[-1]]
    if n == 0:
        return float("nan"), 0
    rank, prev_le, prev_c = q * n, 0.0, 0.0
    for le in les:
        if d[le] >= rank:
            if le == float("inf"):
                return prev_le * 1e3, n
            frac = (rank - prev_c) / max(d[le] - prev_c, 1)
            return (prev_le + (le - prev_le) * frac) * 1e3, n
        prev_le, prev_c = le, d[le]
    return float("nan"), n
def over(d, s):
    les = sorted(k for k in d if k != float("inf"))
    below = max((d[k] for k in les if k <= s), default=0)
    return d[float("inf")] - below
end = rows[-1][0]
for name, lo, hi in [("before (ingest alone)", 15, grace),
                     ("while archiving and dropping", grace, dropped),
                     ("after the drop", dropped, end)]:
    d = window(lo, hi)
    p50, n = quantile(d, 0.5)
    p99, _ = quantile(d, 0.99)
    print(f"| {name} | {lo:.0f}–{hi:.0f} s | {n:.0f} | {p50:.1f} | **{p99:.1f}** | {over(d, 0.1):.0f} |")
# Where the slow ones fell: events over 100 ms in each 30 s of the archive.
spans = []
lo = grace
while lo < dropped:
    hi = min(lo + 30, dropped)
    spans.append(f"{lo:.0f}–{hi:.0f} s: {over(window(lo, hi), 0.1):.0f}")
    lo = hi
print()
print("Events over 100 ms by 30 s of the archive: " + ", ".join(spans) + ".")
PY

mkdir -p reports
{
  echo "# Ingest latency while \`serve\` archives and drops a partition"
  echo
  echo "\`ROWS=$ROWS RATE=$RATE make loadtest-archive\` (\`loadtest/storage/archive-under-ingest.sh\`),"
  echo "$(date -u '+%F %H:%M') UTC, $(nproc) cores, PostgreSQL $(psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SHOW server_version')."
  echo
  echo "A partition of $ROWS events ($bytes on disk, ~3 KB TOASTed text each) is due for RETENTION"
  echo "${GRACE} s after \`serve\` starts (ARCHIVE_DIR set, MAINTENANCE_INTERVAL=10s), while $RATE events/s of"
  echo "~1 KB are published throughout. Storage latency is delivery → commit, from"
  echo "\`candystore_storage_latency_seconds\` (quantiles interpolated within its buckets; target p99 under 100 ms,"
  echo "the CandystoreStorageLatencyHigh alert)."
  echo
  echo "| window | seconds | events | p50 ms | p99 ms | over 100 ms |"
  echo "|---|---|---|---|---|---|"
  cat "$WORK/table.md"
  echo
  echo "- The partition was dropped ${dropped_at%.*} s after start; dropped from the catalog: $left."
  echo "- ${archived_line#*INFO }"
  # The line's own time (RFC 3339, first field), as seconds since serve started.
  archived_ts=$(awk '{print $1; exit}' <<<"$archived_line")
  if archived_s=$(date -u -d "$archived_ts" +%s.%N 2>/dev/null); then
    echo "- Archived (written and read back) $(echo "$archived_s - $start" | bc | cut -d. -f1) s after start; the drop followed."
  fi
  echo "- Live events stored meanwhile: $stored."
} >"$REPORT"
cat "$REPORT"
