# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8000
HOST   ?= 127.0.0.1

.PHONY: install run test lint bench compose-check clean

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
test: install
	@command -v docker-compose >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } || echo "docker-compose not installable here; its test will say so"
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

compose-check:
	docker-compose config --quiet

clean:
	rm -rf var staticfiles .pytest_cache
