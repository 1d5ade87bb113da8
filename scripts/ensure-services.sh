#!/usr/bin/env bash
# Starts the local PostgreSQL and RabbitMQ if either is down, and waits until both
# accept connections. The commands are the ones this kind of machine uses.
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "ensure-services: $1 did not come up on 127.0.0.1:$2" >&2
  return 1
}

if ! port_open 5432; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
wait_for PostgreSQL 5432 60
until pg_isready -q -h 127.0.0.1 -p 5432; do sleep 0.5; done

if ! port_open 5672; then
  echo "ensure-services: starting RabbitMQ"
  rabbitmq-server -detached
fi
wait_for RabbitMQ 5672 120
