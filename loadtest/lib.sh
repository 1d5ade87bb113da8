# Shared by the loadtest scripts that start their own `serve`. Source it after
# setting DB, API_PORT, METRICS_PORT, RABBIT_QUEUE and RABBIT_EXCHANGE; add every
# background process to `pids`; `trap cleanup EXIT` then leaves nothing behind
# (the database stays with KEEP_DB=1, WORK is removed if REMOVE_WORK=1).

pids=()

# Waits up to 20 s for the API to answer /health.
ready() {
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$API_PORT/health" >/dev/null && return 0
    sleep 0.2
  done
  echo "serve did not answer /health on port $API_PORT within 20 s" >&2
  return 1
}

# A metric's value summed over its labels (empty if the metric is absent).
metric() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2; n++} END {if (n) print s}'
}

drop_database() {
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
}

remove_topology() {
  rabbitmqctl -q delete_queue "$RABBIT_QUEUE" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_exchange "$RABBIT_EXCHANGE" >/dev/null 2>&1 || true
}

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  remove_topology
  [ -n "${KEEP_DB:-}" ] || drop_database "$DB"
  [ -z "${REMOVE_WORK:-}" ] || rm -rf "$WORK"
}
