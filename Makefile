# pg_vision: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

help:
	@echo "make demo    set up everything, start PostgreSQL, embed and search real photos"
	@echo "make test    set up everything and run every test"
	@echo "make bench   latency of embed_efficientnet through SQL (release build)"
	@echo "make setup | install | models | start | stop | psql | fclip | clean"

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

demo: setup
	scripts/demo.sh

# Unit tests (Postgres-free core), #[pg_test]s, pg_regress suite, reference parity.
test: setup
	scripts/test.sh

bench: setup
	scripts/bench.sh

# Fashion-CLIP needs internet (Hugging Face); not possible in CI.
fclip: setup
	scripts/fetch_fclip.sh

clean:
	-scripts/pg.sh stop
	cargo clean

.PHONY: help setup install models start stop psql demo test bench fclip clean
