# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8000
HOST   ?= 127.0.0.1

.PHONY: install run test test-tools lint bench soak compose-check clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## Start everything (Redis, migrations, demo KB, Celery worker, web server) and print the URL.
run: install
	$(PY) manage.py runstack --host $(HOST) --port $(PORT)

## Install and run the whole test suite (PostgreSQL and Redis on 127.0.0.1 when present).
test: install test-tools
	$(PY) -m pytest

# Debian's chromium (browser tests) and docker-compose (compose file check), when missing.
test-tools:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	  || echo "could not install$$missing: the tests that need them will say so"; \
	fi

## Benchmarks: print a table and save JSON under bench/results/ (see docs/BENCHMARKS.md).
## The load benchmark and the soak need PostgreSQL and Redis on 127.0.0.1; SOAK_MINUTES=5 shortens the soak.
SOAK_MINUTES ?= 30
bench: install
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_retrieval.py
	$(PY) bench/bench_calibration.py --both --tuned
	$(PY) bench/bench_oos_signal.py
	$(PY) bench/bench_tune.py
	$(PY) bench/bench_load.py
	$(PY) bench/bench_flood.py
	$(PY) bench/bench_import_memory.py
	$(PY) bench/bench_transcripts.py
	$(PY) bench/bench_soak.py --minutes $(SOAK_MINUTES)

## The soak alone: 100 customers for SOAK_MINUTES on the full stack, memory sampled.
soak: install
	$(PY) bench/bench_soak.py --minutes $(SOAK_MINUTES)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

compose-check:
	docker-compose config --quiet

clean:
	rm -rf var staticfiles .pytest_cache
