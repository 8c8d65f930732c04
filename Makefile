# Two commands do all set-up: `make run` and `make test` (see README.md).
# `make run` installs what serving needs (`pip install .`: the server, the embedded store,
# the logger and jsonl sinks, the three device kinds); `make test` (and `make install`)
# every sink backend's extra and the test and lint tools too.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.run-stamp
# Backends `make run` adds (e.g. EXTRAS=kafka,redis); `make test` installs them all.
EXTRAS ?=
# pytest-xdist workers for `make test`: most tests wait on servers, not on a core, so more
# workers than cores pay off (8 min with one, under 3 with four on 2 cores).
TEST_WORKERS ?= 4
DIST   := dist

.PHONY: install install-run run demo test lint typecheck unit bench browser mosquitto wheel clean

# The dashboard's and /docs' third-party JavaScript: npm packages pinned in web/package-lock.json,
# the files the pages load copied into the (git-ignored) static vendor folder.
VENDOR       := src/fleetgate/api/static/vendor
VENDOR_STAMP := $(VENDOR)/.installed-stamp
NPM_MODULES  := web/node_modules
# The browser test's Chromium (Debian's; Playwright's own download cannot work here).
BROWSER_STAMP := $(VENV)/.browser-stamp
CHROMIUM     ?= /usr/bin/chromium
# The demo's loopback MQTT broker for the simulated CAN gateways (Debian's mosquitto).
MOSQUITTO    ?= /usr/sbin/mosquitto

$(VENV)/.venv-stamp:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "fleetgate needs Python >= 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	touch $@

# Development and CI: every extra, the test and lint tools.
$(STAMP): pyproject.toml $(VENV)/.venv-stamp
	$(BIN)/pip install -q --disable-pip-version-check -e '.[all,dev]'
	touch $(STAMP)

# Serving only: the slim install (plus EXTRAS).
$(RUN_STAMP): pyproject.toml $(VENV)/.venv-stamp
	$(BIN)/pip install -q --disable-pip-version-check -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	touch $(RUN_STAMP)

$(VENDOR_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "fleetgate: npm (Node.js) is needed to install the dashboard's JavaScript libraries"; exit 1; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund --silent
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/leaflet $(VENDOR)/uplot $(VENDOR)/swagger-ui
	cp $(NPM_MODULES)/leaflet/dist/leaflet.js $(NPM_MODULES)/leaflet/dist/leaflet.css $(NPM_MODULES)/leaflet/LICENSE $(VENDOR)/leaflet/
	cp -r $(NPM_MODULES)/leaflet/dist/images $(VENDOR)/leaflet/
	cp $(NPM_MODULES)/uplot/dist/uPlot.iife.min.js $(NPM_MODULES)/uplot/dist/uPlot.min.css $(NPM_MODULES)/uplot/LICENSE $(VENDOR)/uplot/
	cp $(NPM_MODULES)/swagger-ui-dist/swagger-ui-bundle.js $(NPM_MODULES)/swagger-ui-dist/swagger-ui.css $(NPM_MODULES)/swagger-ui-dist/LICENSE $(VENDOR)/swagger-ui/
	touch $@

install: $(STAMP) $(VENDOR_STAMP)

install-run: $(RUN_STAMP) $(VENDOR_STAMP)

# The wheel the Dockerfile installs: the package with the dashboard's vendored JavaScript
# and the Tesla CA bundles (tests/e2e/test_slim_install.py checks what it carries).
wheel: $(VENV)/.venv-stamp $(VENDOR_STAMP)
	rm -rf $(DIST) build && $(BIN)/pip wheel -q --disable-pip-version-check --no-deps -w $(DIST) .

# Test path only: Debian's chromium (+ chromedriver) and the playwright pip package.
mosquitto:
	@test -x $(MOSQUITTO) || command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

$(BROWSER_STAMP): $(STAMP) mosquitto
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	test -x $(CHROMIUM) || { echo "fleetgate: $(CHROMIUM) missing after apt-get install chromium"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[all,dev,browser]'
	touch $@

browser: $(BROWSER_STAMP)

run: install-run
	$(BIN)/fleetgate serve $(ARGS)

demo: install-run mosquitto
	$(BIN)/fleetgate demo $(ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

test: install $(BROWSER_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q tests/unit

bench: install
	cd bench && npm install --no-audit --no-fund --silent
	$(BIN)/python bench/decode_teltonika.py
	$(BIN)/python bench/ingest_teltonika.py

clean:
	rm -rf $(VENV) build $(DIST) *.egg-info src/*.egg-info
