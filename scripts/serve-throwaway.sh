# Sourced by the measurement scripts: `serve_throwaway NAME API_PORT METRICS_PORT`
# starts `target/release/candystore serve` on a fresh database NAME, exchange and
# queue NAME, waits until it answers, and removes all three on exit. Sets BIN,
# DB and pid; extra settings come from the caller's environment.
serve_throwaway() {
  BIN=target/release/candystore
  DB=$1
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
  export RABBIT_EXCHANGE=$1 RABBIT_QUEUE=$1
  export API_HOST=127.0.0.1 API_PORT=$2 METRICS_PORT=$3 LOG_LEVEL=${LOG_LEVEL:-warn}
  # The throwaway database's own checkpoint signing key, removed with it (the
  # default file in the working directory is `make run`'s).
  mkdir -p target/throwaway-keys
  export SIGNING_KEY_FILE=target/throwaway-keys/$DB.key
  rm -f "$SIGNING_KEY_FILE"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  createdb -h 127.0.0.1 -U postgres "$DB"
  $BIN migrate >/dev/null
  $BIN serve & pid=$!
  trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true
        rabbitmqctl -q delete_queue "$RABBIT_QUEUE" >/dev/null 2>&1 || true
        psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
        rm -f "$SIGNING_KEY_FILE"' EXIT
  for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$API_PORT/health" >/dev/null && break; sleep 0.2; done
}
