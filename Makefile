# pg_vision: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

help:
	@echo "make demo    set up everything, start PostgreSQL, embed and search real photos, serve the search page"
	@echo "make demo-web  the search page alone (Ctrl-C stops it)"
	@echo "make test    set up everything and run every test"
	@echo "make bench   benchmarks through SQL, release build (scripts/bench.sh)"
	@echo "make setup | install | models | start | stop | psql | fclip | fclip-fixture | clean"

setup:
	scripts/setup.sh

install:
	scripts/install.sh

models:
	scripts/models.sh

start:
	scripts/pg.sh start

stop:
	scripts/pg.sh stop

psql:
	scripts/pg.sh psql

# Ends by serving the search page on localhost (Ctrl-C stops it); PGV_DEMO_WEB=0 make demo does not.
demo: setup
	scripts/demo.sh

# The search page over the demo catalogue (loaded first if make demo has not run).
demo-web: setup
	scripts/demo_web.sh

# fmt and clippy, unit tests (Postgres-free core), #[pg_test]s, then the suites in
# pgrx-tests/ (pg_regress, upgrade, pytest); see pgrx-tests/README.md.
test: setup
	scripts/test.sh

# Latency, shop ingestion and search, first-call latency, load under a memory budget,
# decode peak memory (drivers in scripts/bench/); results in bench-results/.
bench: setup
	scripts/bench.sh

# Fashion-CLIP needs internet (Hugging Face); not possible in CI.
fclip: setup
	scripts/fetch_fclip.sh

# Fashion-CLIP's architecture with random weights, exported and installed offline (make test
# runs it; torch + transformers in their own venv, a few GB, once).
fclip-fixture: setup
	scripts/fclip_fixture.sh

clean:
	-scripts/pg.sh stop
	cargo clean

.PHONY: help setup install models start stop psql demo demo-web test bench fclip fclip-fixture clean
