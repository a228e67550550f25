# Set-up is part of every target: venv, Python deps, Docker engine (installed/started if absent), test image.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup docker chromium run examples serve serve-pg test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) docker

docker:
	bash scripts/setup-docker.sh

## headless Chromium for the Prefect UI test (Debian's package)
chromium:
	bash scripts/setup-chromium.sh

## run the main example pipeline on this machine (local Prefect server, reference backend in-process)
run: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false WORKER_PULL_POLICY=never \
		$(BIN)/cicd-worker run examples/hello-project/pipeline.yaml

## the issue-13 examples, offline: services, a matrix, a cache (twice: the second run restores it) and reuse
## (twice: the second run reuses the unchanged jobs)
examples: setup
	for file in services matrix cache cache reuse reuse; do \
		PREFECT_SERVER_ANALYTICS_ENABLED=false WORKER_PULL_POLICY=never \
			$(BIN)/cicd-worker run examples/$$file.yaml || exit 1; \
	done

## serve the worker API with a local Prefect server (UI on :4200) and print the URLs
serve: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/cicd-worker serve

## the same with the local Prefect server on PostgreSQL (Debian's package, installed and started if absent): for
## load, where the embedded SQLite answers 503 "database is locked" under concurrent jobs
serve-pg: setup
	url=$$(bash scripts/setup-postgres.sh prefect | tail -n 1) && \
		PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_API_DATABASE_CONNECTION_URL="$$url" $(BIN)/cicd-worker serve

## ruff, mypy, and the layer contracts of pyproject.toml (imports point down only; no module circles)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## lint, type-check and run the whole suite (real engine, real Prefect server, reference backend): on two
## pytest-xdist workers, then alone the tests marked serial (engine restarts, scale-out limits under load)
test: setup chromium lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=10 -n 2 -m "not serial" $(PYTEST_ARGS)
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 -m serial $(PYTEST_ARGS)

## the fast lane: every test that needs no Docker engine and is not marked slow (unit tests, the planner, the
## flows' logic on the in-process DummyExecutor, the backend client against the reference backend);
## `make lint test-fast` for lint as well
test-fast: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider --durations=5 -n 2 -m "not slow and not engine" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench.job_latency
	$(BIN)/python -m bench.planning

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache .mypy_cache .ruff_cache
