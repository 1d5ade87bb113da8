#!/usr/bin/env bash
# Peak RSS (VmHWM) of a separate `candystore serve` draining a backlog of COUNT
# events of SIZE bytes, published while it is stopped (SIGSTOP), with the settings
# of the caller's environment (e.g. MAX_INFLIGHT_BYTES; STORE=sqlite for the
# embedded store). Prints one line.
# Defaults: COUNT=1000 SIZE=1048576 (issue 10's "1,000 events of 1 MB").
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-1000} SIZE=${SIZE:-1048576}
. scripts/serve-throwaway.sh
serve_throwaway candystore_rss 18694 19094
kill -STOP "$pid"
$BIN publish --count "$COUNT" --size "$SIZE" --generation 1 >/dev/null
echo 5 > "/proc/$pid/clear_refs"   # reset the high-water mark
kill -CONT "$pid"
start=$(date +%s.%N)
until [ "$(store_query "SELECT count(*) FROM events")" -ge "$COUNT" ]; do
  sleep 0.5
done
echo "drained $COUNT x $SIZE B in $(echo "$(date +%s.%N) - $start" | bc) s; peak RSS $(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status") MB; MAX_INFLIGHT_BYTES=${MAX_INFLIGHT_BYTES:-default}; store ${STORE:-postgres}"
