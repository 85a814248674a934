# Two commands do everything on a fresh machine:
#   make run   install, migrate, make sure an admin exists, start the whole platform
#   make test  install (including Redis and PostgreSQL from Debian packages) and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint install install-test install-bench services messages bench bench-targets bench-gateway bench-api bench-cards clean

$(PY):
	@echo "==> creating virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt | $(PY)
	@echo "==> installing requirements.txt"
	$(PIP) install --disable-pip-version-check -q -r requirements.txt
	@touch $@

$(VENV)/.test-deps: requirements.txt requirements-test.txt | $(PY)
	@echo "==> installing requirements-test.txt"
	$(PIP) install --disable-pip-version-check -q -r requirements-test.txt
	@touch $@ $(VENV)/.run-deps

$(VENV)/.bench-deps: requirements.txt requirements-test.txt bench/requirements.txt | $(PY)
	@echo "==> installing bench/requirements.txt"
	$(PIP) install --disable-pip-version-check -q -r bench/requirements.txt
	@touch $@ $(VENV)/.test-deps $(VENV)/.run-deps

install: $(VENV)/.run-deps

install-test: $(VENV)/.test-deps

install-bench: $(VENV)/.bench-deps


# runplatform --prepare binds the port first, then migrates and makes sure an admin exists:
# a second `make run` whose port is busy fails at once and changes nothing.
run: install
	@$(PY) manage.py translations_compile -v0
	@exec $(PY) manage.py runplatform --prepare

services:
	@./scripts/ensure-test-services.sh

# After marking or changing strings shown to people: extract them into locale/zh_Hans (needs GNU
# gettext), translate the new msgids there; make run / make test compile the .po files.
MESSAGES_IGNORE := --ignore=.venv --ignore=var --ignore=tests --ignore=bench --ignore=examples \
	--ignore=test-artifacts --ignore=staticfiles --ignore=ukey --ignore=signagent --ignore=signclient --ignore=scripts
messages: install
	$(PY) manage.py makemessages -l zh_Hans --no-obsolete --no-location $(MESSAGES_IGNORE)

# Every import points down a layer ([tool.layers] in pyproject.toml), and ruff finds nothing.
lint: install-test
	@echo "==> import layers and ruff"
	@$(PY) scripts/check_layers.py
	@$(VENV)/bin/ruff check --quiet . && echo "ruff: no findings"

test: install-test lint services
	@$(PY) manage.py translations_compile
	@echo "==> tests against PostgreSQL + Redis (started by the test fixtures)"
	SIGNPLATFORM_TEST_BACKENDS=services $(PY) -m pytest
	@echo "==> gateway tests against the embedded defaults (SQLite, in-memory channel layer)"
	SIGNPLATFORM_TEST_BACKENDS=embedded $(PY) -m pytest -m "embedded and not services"

# Every benchmark, each run even when one before it misses a goal; the exit status is 1 when any did.
# bench-targets prints every target of issue 16 with its figure, PASS/FAIL and its comparison.
bench: install-bench
	@failed=0; for b in bench-targets bench-gateway bench-cards; do $(MAKE) --no-print-directory $$b || failed=1; done; \
	exit $$failed

# Issue 16's targets against the Flask sign-server stand-in, in one run (PostgreSQL and Redis
# are started by the benchmark as the tests start them: make services installs them).
bench-targets: install-bench services
	$(PY) bench/targets.py

bench-gateway: install
	$(PY) bench/gateway_bench.py

# The HTTP API through uvicorn; it starts the platform with tests/live.py, hence install-test.
bench-api: install-test
	$(PY) bench/api_bench.py

# Card pools and the card agent, against a running platform (five simulators, signagent).
bench-cards: install-test
	$(PY) bench/cards_bench.py

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
