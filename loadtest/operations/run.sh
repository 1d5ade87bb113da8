#!/usr/bin/env bash
# Issue 11's figures on COUNT events (default 1,000,000, ~1 KB, the three envelope
# generations mixed), ingested by a separate `candystore serve` with AUDIT_KEY set:
# - appending the whole backlog to the audit tree (the serve restarted with
#   SEAL_INTERVAL=1s after an ingest during which it signed nothing), every leaf's
#   attestation checked;
# - `candystore verify` with the key (every MAC rechecked) and without it;
# - `candystore replay` of all of it into the serve's own exchange (ingest acks
#   each as a replay and stores nothing);
# - GET /event-types and GET /sources latency (200 sequential requests each).
# Writes reports/operations-1m.md. Takes ~5 minutes for 1M.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-1000000}
OUT=${OUT:-reports/operations-1m.md}
export AUDIT_KEY=${AUDIT_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export PREFETCH_COUNT=2000 BATCH_SIZE=500 SEAL_INTERVAL=1h
. scripts/serve-throwaway.sh
serve_throwaway candystore_ops 18695 19095
now() { date +%s.%N; }
sql() { psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "$1"; }
stored() { curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^candystore_events_stored_total/ {s += $2} END {print s + 0}'; }

echo "publishing $COUNT events" >&2
t0=$(now)
$BIN publish --count "$COUNT" --size 1024 --generation 0 --rate 0 >/dev/null &
publisher=$!
until [ "$(stored)" -ge "$COUNT" ]; do sleep 0.5; done
wait $publisher
ingest_s=$(echo "$(now) - $t0" | bc)
tree_size() { sql "SELECT coalesce(max(size), 0) FROM audit_heads"; }
sealed_during=$(tree_size)

echo "appending the backlog to the audit tree" >&2
kill -TERM "$pid"; wait "$pid" || true
export SEAL_INTERVAL=1s
t0=$(now)
$BIN serve & pid=$!
until [ "$(tree_size)" -ge "$COUNT" ]; do sleep 0.2; done
seal_s=$(echo "$(now) - $t0" | bc)
checkpoints=$(sql "SELECT count(*) FROM audit_heads")
unattested=$(curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^candystore_audit_unattested_total/ {print $2 + 0}')

echo "verifying" >&2
verify_key=$($BIN verify)
verify_nokey=$(env -u AUDIT_KEY $BIN verify)

echo "replaying" >&2
replay=$($BIN replay --exchange "$RABBIT_EXCHANGE" 2>&1 | tail -1 | sed 's/; resume with.*//')
replay_s=$(echo "$replay" | grep -o 'in [0-9.]*s' | tr -dc '0-9.')
until [ "$(curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" | awk '/^candystore_replays_ignored_total/ {print $2}')" = "$COUNT" ]; do sleep 0.5; done
rows=$(sql "SELECT count(*) FROM events")

# Latency of the catalog routes, once the catalog has counted everything.
until [ "$(sql "SELECT coalesce(sum(count), 0) FROM catalog_event_types")" -ge "$COUNT" ]; do sleep 0.5; done
latency() {
  for _ in $(seq 200); do curl -fs -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$API_PORT$1"; done |
    sort -n | awk '{a[NR] = $1 * 1000} END {printf "p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.2f ms", a[int(NR*0.5)], a[int(NR*0.95)], a[int(NR*0.99)], a[NR]}'
}
types=$(latency /event-types)
sources=$(latency /sources)

rate() { echo "$1 / $2" | bc; }
cat > "$OUT" <<REPORT
# Operators' tools on $COUNT events (\`make loadtest-operations\`)

Measured $(date -u +"%Y-%m-%d %H:%M UTC") on this machine ($(nproc) cores), by
\`loadtest/operations/run.sh\`: $COUNT events of ~1 KB, the three envelope generations mixed,
ingested by a separate \`candystore serve\` (high-throughput settings) with \`AUDIT_KEY\` set,
so every leaf carries a writer attestation.

| what | result |
|---|---|
| ingest | $COUNT events in ${ingest_s%.*} s ($(rate "$COUNT" "$ingest_s") events/s, publisher included); in the tree meanwhile: $sealed_during (SEAL_INTERVAL=1h) |
| appending the backlog to the audit tree, every attestation checked | $COUNT leaves in $(printf %.1f "$seal_s") s = **$(rate "$COUNT" "$seal_s") leaves/s** ($checkpoints signed checkpoints, $unattested unattested; from the serve's restart, start-up included) |
| \`candystore verify\` with AUDIT_KEY | $verify_key |
| \`candystore verify\` without it | $verify_nokey |
| \`candystore replay\` of everything into the serve's own exchange | $replay = **$(rate "$COUNT" "$replay_s") events/s**; the serve acked all $COUNT as replays and \`events\` still holds $rows rows |
| \`GET /event-types\` | $types |
| \`GET /sources\` | $sources |
REPORT
cat "$OUT"
