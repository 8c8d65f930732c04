# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "fleetgate needs Python >= 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/fleetgate serve $(ARGS)

demo: install
	$(BIN)/fleetgate demo $(ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q tests/unit

bench: install
	cd bench && npm install --no-audit --no-fund --silent
	$(BIN)/python bench/decode_teltonika.py
	$(BIN)/python bench/ingest_teltonika.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
