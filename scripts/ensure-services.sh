#!/usr/bin/env bash
# Gets the local services Candystore needs running on 127.0.0.1, and waits for them:
#   RabbitMQ (5672) always;
#   PostgreSQL (5432) when DATABASE_URL names PostgreSQL, and always for `--for test`
#   (the integration tests run against it), not for an embedded `sqlite:` store.
# For each: answering already -> nothing; installed -> started; missing on Debian or
# Ubuntu (apt-get) -> installed from the system's packages, then started; missing
# elsewhere -> the one command that gets it (ops/compose.yaml), and exit 1.
# A PostgreSQL this script installs gets trust auth on 127.0.0.1 and ::1 (a development
# machine's setting: the tests connect as postgres without a password); one already
# installed is never reconfigured.
#
#   ensure-services.sh [--for run|test] [--plan]
#
# --plan prints the decision for each service, one line each, and changes nothing
# (tests/it/docs.rs checks them). For the plan, what the machine has can be given
# instead of read: ENSURE_OPEN="5432 5672" (ports answering), ENSURE_INSTALLED="postgresql
# rabbitmq", ENSURE_APT=yes|no.
set -euo pipefail

purpose=run
plan=no
while [ $# -gt 0 ]; do
  case "$1" in
    --for) purpose="$2"; shift 2 ;;
    --plan) plan=yes; shift ;;
    *) echo "ensure-services: unknown argument $1 (usage: ensure-services.sh [--for run|test] [--plan])" >&2; exit 2 ;;
  esac
done
case "$purpose" in run|test) ;; *) echo "ensure-services: --for takes run or test, not $purpose" >&2; exit 2 ;; esac

port_open() {
  if [ -n "${ENSURE_OPEN+set}" ]; then [[ " $ENSURE_OPEN " == *" $1 "* ]]; return; fi
  timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null
}

installed() { # postgresql | rabbitmq
  if [ -n "${ENSURE_INSTALLED+set}" ]; then [[ " $ENSURE_INSTALLED " == *" $1 "* ]]; return; fi
  case "$1" in
    postgresql) command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ] ;;
    rabbitmq) command -v rabbitmq-server >/dev/null 2>&1 ;;
  esac
}

has_apt() {
  if [ -n "${ENSURE_APT+set}" ]; then [ "$ENSURE_APT" = yes ]; return; fi
  command -v apt-get >/dev/null 2>&1
}

needs_postgresql() {
  [ "$purpose" = test ] && return 0
  case "${DATABASE_URL:-sqlite:candystore.db}" in
    sqlite:*) return 1 ;;
    *) return 0 ;;
  esac
}

# decide NAME PORT -> running | start | install | elsewhere
decide() {
  if port_open "$2"; then echo running
  elif installed "$1"; then echo start
  elif has_apt; then echo install
  else echo elsewhere
  fi
}

compose_service() { case "$1" in postgresql) echo postgres ;; rabbitmq) echo rabbitmq ;; esac; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$@" >/dev/null; }
}

wait_for() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "ensure-services: $1 did not come up on 127.0.0.1:$2" >&2
  return 1
}

start_postgresql() {
  local version
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

trust_local_postgresql() {
  local version hba
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
}

ensure() { # name port
  local name="$1" port="$2" decision
  decision="$(decide "$name" "$port")"
  if [ "$plan" = yes ]; then
    case "$decision" in
      running) echo "$name: running on 127.0.0.1:$port" ;;
      start) echo "$name: installed, start it" ;;
      install) echo "$name: install with apt-get, then start it" ;;
      elsewhere) echo "$name: missing, and no apt-get here: docker compose -f ops/compose.yaml up -d $(compose_service "$name")" ;;
    esac
    return 0
  fi
  case "$decision" in
    running) return 0 ;;
    install)
      echo "ensure-services: installing $name (apt-get)"
      if [ "$name" = postgresql ]; then
        apt_install postgresql postgresql-client
        trust_local_postgresql
      else
        apt_install rabbitmq-server
      fi
      ;;
    elsewhere)
      echo "ensure-services: $name is not installed and this machine has no apt-get; start it with" >&2
      echo "  docker compose -f ops/compose.yaml up -d $(compose_service "$name")" >&2
      return 1
      ;;
  esac
  echo "ensure-services: starting $name"
  if [ "$name" = postgresql ]; then
    start_postgresql
    wait_for PostgreSQL "$port" 60
    until pg_isready -q -h 127.0.0.1 -p "$port"; do sleep 0.5; done
  else
    as_root rabbitmq-server -detached
    wait_for RabbitMQ "$port" 120
  fi
}

if needs_postgresql; then
  ensure postgresql 5432
elif [ "$plan" = yes ]; then
  echo "postgresql: not needed (DATABASE_URL=${DATABASE_URL:-sqlite:candystore.db})"
fi
ensure rabbitmq 5672
