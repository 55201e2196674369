# mv-refresh: `make demo` (the main job) and `make test`. Everything installs itself into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-ui lint airflow load-test bench demo-stop clean celery-up celery-down celery-status orphan-timings

help:
	@echo "make demo      refresh the demo views through the ops_mv_refresh DAG and print their health"
	@echo "               (embedded PostgreSQL under .demo/, or the database in MV_REFRESH_DSN)"
	@echo "make test      all tests but the browser ones (TEST_DATABASE_URL names a server; else an embedded PostgreSQL)"
	@echo "make test-ui   the browser tests: Debian's chromium (/usr/bin/chromium) against make airflow"
	@echo "make airflow   airflow standalone on the demo database: trigger from the UI, Browse > MV Health"
	@echo "make lint      ruff"
	@echo "make load-test 50 views on the Celery deployment (2 workers) + a CLI loop for 10 minutes"
	@echo "               (LOAD_VIEWS, LOAD_SECONDS; docs/at-scale.md)"
	@echo "make celery-up Airflow with the CeleryExecutor, Redis, PostgreSQL metadata, 2 workers, in the"
	@echo "               background (make celery-status, make celery-down)"
	@echo "make orphan-timings  how long a REFRESH goes on after its client is killed or cut off"
	@echo "make bench     benchmarks: tables, bench/out/ (results, figures; README figures to docs/img/); BENCH_SCALE=full: the long form"
	@echo "make demo-stop stop the embedded PostgreSQL;  make clean  remove .demo/ and .venv/"

# The venv is rebuilt only when a requirements file or pyproject.toml changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

install: $(STAMP)

demo: install
	@bash scripts/demo.sh

test: install
	$(BIN)/pytest -m "not ui" $(PYTEST_ARGS)

# Needs Debian's chromium (apt-get install -y chromium); Playwright drives it, it downloads no browser.
test-ui: install
	@test -x /usr/bin/chromium || { echo "test-ui needs /usr/bin/chromium: apt-get install -y chromium"; exit 1; }
	$(BIN)/pytest -m ui tests/ui $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff check --select AIR3 dags plugins

load-test: install
	$(BIN)/python bench/loadtest.py --views $${LOAD_VIEWS:-50} --seconds $${LOAD_SECONDS:-600}

celery-up: install
	$(BIN)/python tests/support/celery_stack.py start

celery-down: install
	$(BIN)/python tests/support/celery_stack.py stop

celery-status: install
	$(BIN)/python tests/support/celery_stack.py status

# On TEST_DATABASE_URL's server when set, then on the embedded PostgreSQL 18.
orphan-timings: install
	@if [ -n "$${TEST_DATABASE_URL:-}" ]; then BENCH_DATABASE_URL=$$TEST_DATABASE_URL $(BIN)/python bench/orphan_timings.py; fi
	env -u BENCH_DATABASE_URL $(BIN)/python bench/orphan_timings.py

bench: install
	$(BIN)/python bench/run.py

airflow: install
	@bash scripts/airflow.sh

demo-stop: install
	$(BIN)/mv-refresh embedded stop --data-dir .demo/pg

clean: demo-stop
	rm -rf .demo $(VENV)
