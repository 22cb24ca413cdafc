# make run  — install what is missing, then start the portal with its stand-ins (Ctrl-C stops all)
# make test — install what is missing (Debian packages too: scripts/system-deps.sh), then run the whole test suite
#
# Installs are keyed on stamp files: nothing is reinstalled until pyproject.toml or
# package.json changes (or the venv / vendor files are deleted).

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
VENDOR_FILES := portal/static/vendor/htmx.min.js portal/static/vendor/chart.umd.js portal/static/vendor/pico.min.css

# Nothing downloads a browser: tests drive the system's chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test bench clean system-deps

install: .stamp-python $(VENDOR_FILES)

$(VPY):
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required (set PY=python3.11)"; exit 1; }
	$(PY) -m venv $(VENV)

.stamp-python: pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet -e '.[dev]'
	@touch $@

.stamp-npm: package.json
	npm install --no-audit --no-fund
	@touch $@

$(VENDOR_FILES) &: .stamp-npm scripts/vendor.mjs
	@[ -d node_modules/htmx.org ] || npm install --no-audit --no-fund
	node scripts/vendor.mjs
	@touch $(VENDOR_FILES)

run: install
	$(VPY) -m devtools.launcher run

# chromium for the browser tests, ApacheBench for tests/test_bench.py: as root apt-get installs
# what is missing; as another user it names the packages and stops before any test runs.
system-deps:
	@bash scripts/system-deps.sh

# pytest exits 5 when it collected no tests: that is a failure, never a pass.
test: system-deps install
	@$(VPY) -m pytest -p no:cacheprovider $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$code

# Benchmarks (not tests): need ApacheBench (`apt-get install apache2-utils`) for the API one.
# `make bench BENCH_ARGS=--tiny` runs both in seconds, to see that they work (figures mean nothing).
bench: install
	$(VPY) bench/pages.py --backend both $(BENCH_ARGS)
	$(VPY) bench/usage_api.py --backend both $(BENCH_ARGS)

clean:
	rm -rf .stamp-python .stamp-npm node_modules portal/static/vendor
