# Sourced by the measurement scripts: `serve_throwaway NAME API_PORT METRICS_PORT`
# starts `target/release/candystore serve` on a fresh database NAME, exchange and
# queue NAME, waits until it answers, and removes all three on exit. Sets BIN,
# DB and pid; extra settings come from the caller's environment. STORE=sqlite:
# a fresh embedded file target/throwaway/NAME.db instead of a database.
# `store_query SQL` runs SQL on whichever store it is (both speak it).
serve_throwaway() {
  BIN=target/release/candystore
  DB=$1
  if [ "${STORE:-postgres}" = sqlite ]; then
    mkdir -p target/throwaway
    FILE=target/throwaway/$DB.db
    rm -f "$FILE" "$FILE-wal" "$FILE-shm" "$FILE.lock"
    export DATABASE_URL="sqlite:$FILE"
  else
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
  fi
  export RABBIT_EXCHANGE=$1 RABBIT_QUEUE=$1
  export API_HOST=127.0.0.1 API_PORT=$2 METRICS_PORT=$3 LOG_LEVEL=${LOG_LEVEL:-warn}
  # The throwaway database's own checkpoint signing key, removed with it (the
  # default file in the working directory is `make run`'s).
  mkdir -p target/throwaway-keys
  export SIGNING_KEY_FILE=target/throwaway-keys/$DB.key
  rm -f "$SIGNING_KEY_FILE"
  if [ "${STORE:-postgres}" != sqlite ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    createdb -h 127.0.0.1 -U postgres "$DB"
  fi
  $BIN migrate >/dev/null
  $BIN serve & pid=$!
  trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true
        rabbitmqctl -q delete_queue "$RABBIT_QUEUE" >/dev/null 2>&1 || true
        rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$RABBIT_EXCHANGE\">>), false, <<\"cli\">>)." >/dev/null 2>&1 || true
        psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
        rm -f "$SIGNING_KEY_FILE" ${FILE:+"$FILE" "$FILE-wal" "$FILE-shm" "$FILE.lock"}' EXIT
  for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$API_PORT/health" >/dev/null && break; sleep 0.2; done
}

store_query() {
  if [ "${STORE:-postgres}" = sqlite ]; then
    sqlite3 -readonly "$FILE" "$1"
  else
    psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "$1"
  fi
}
