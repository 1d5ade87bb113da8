#!/usr/bin/env bash
# Starts Candystore on a database and queue of its own, feeds it events while the
# k6 scripts run, then stops it and removes what it made. Bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/candystore
DB=candystore_loadtest
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
# This database's own checkpoint signing key (the working directory's is `make run`'s).
mkdir -p target/throwaway-keys
export SIGNING_KEY_FILE=target/throwaway-keys/$DB.key
export RABBIT_EXCHANGE=candystore_loadtest RABBIT_QUEUE=candystore_loadtest
export API_HOST=127.0.0.1 API_PORT=18683 METRICS_PORT=19090 LOG_LEVEL=warn
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 || createdb -h 127.0.0.1 -U postgres "$DB"
$BIN migrate >/dev/null
$BIN serve & pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$API_PORT/ready" >/dev/null && break; sleep 0.2; done
$BIN publish --count 15000 --rate 1000 >/dev/null &
for script in loadtest/*.js; do
  echo "== $script"
  k6 run --quiet -e BASE_URL="http://127.0.0.1:$API_PORT" -e METRICS_URL="http://127.0.0.1:$METRICS_PORT" "$script"
done
wait %2 2>/dev/null || true
