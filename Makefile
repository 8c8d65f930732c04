# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run demo test lint typecheck unit bench browser mosquitto clean

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

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "fleetgate needs Python >= 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

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

# Test path only: Debian's chromium (+ chromedriver) and the playwright pip package.
mosquitto:
	@test -x $(MOSQUITTO) || command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

$(BROWSER_STAMP): $(STAMP) mosquitto
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	test -x $(CHROMIUM) || { echo "fleetgate: $(CHROMIUM) missing after apt-get install chromium"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,browser]'
	touch $@

browser: $(BROWSER_STAMP)

run: install
	$(BIN)/fleetgate serve $(ARGS)

demo: install mosquitto
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
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q tests/unit

bench: install
	cd bench && npm install --no-audit --no-fund --silent
	$(BIN)/python bench/decode_teltonika.py
	$(BIN)/python bench/ingest_teltonika.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
