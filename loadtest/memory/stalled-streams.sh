#!/usr/bin/env bash
# Peak RSS of `candystore serve` while CLIENTS live-tail clients never read and
# COUNT events of SIZE bytes are stored (the issue's row: 20 such clients took
# RSS from 17 MB to 674 MB). Writes reports/memory-streams.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-20} COUNT=${COUNT:-2000} SIZE=${SIZE:-100000}
. scripts/serve-throwaway.sh
serve_throwaway candystore_streams 18686 19093
metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
idle=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
# Clients that send their request and never read a byte.
for i in $(seq 1 "$CLIENTS"); do
  exec {fd}<>/dev/tcp/127.0.0.1/$API_PORT
  printf 'GET /events/stream HTTP/1.1\r\nHost: x\r\n\r\n' >&$fd
done
sleep 1
open_before=$(metric candystore_streams_open)
$BIN publish --count "$COUNT" --size "$SIZE" >/dev/null
while [ "$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc 'SELECT count(*) FROM events')" -lt "$COUNT" ]; do sleep 1; done
sleep 15   # past STREAM_WRITE_TIMEOUT (10 s)
open_after=$(metric candystore_streams_open)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
mb() { echo "scale=0; $1 / 1024" | bc; }
cat > reports/memory-streams.md <<REPORT
# Memory with live-tail clients that never read

\`CLIENTS=$CLIENTS COUNT=$COUNT SIZE=$SIZE bash loadtest/memory/stalled-streams.sh\`, default
settings (STREAM_WRITE_TIMEOUT=10s). $CLIENTS clients open /events/stream and never read while
$COUNT events of ~$SIZE bytes ($(echo "scale=0; $COUNT * $SIZE / 1000000" | bc) MB) are stored.

| | value |
|---|---|
| RSS idle | $(mb "$idle") MB |
| streams open before the events | $open_before |
| streams open 15 s after the last event | $open_after (cut by the write timeout) |
| peak RSS (VmHWM) | $(mb "$hwm") MB |
REPORT
cat reports/memory-streams.md
