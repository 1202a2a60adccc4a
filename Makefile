# Kronos serving bundle. Quickstart: `make serve`, `make test`.
# `make serve` installs the runtime dependencies only (no root, no apt); `make test` adds the
# test-only Python packages and the test-only system packages (Debian's nginx, redis-server,
# prometheus, postgresql, rabbitmq-server, chromium, via apt: run it as root or install them yourself).
# torch: the PyTorch CPU index by default; a GPU build with e.g.
#   make serve TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PORT ?= 3000
# torch from the PyTorch CPU index (TORCH_INDEX overrides it) when that index answers.
PIP := $(BIN)/pip install -q --disable-pip-version-check $$($(PYTHON) scripts/torch_index.py)

.PHONY: install install-dev system-deps test serve bench load-test clean

install: $(STAMP)

install-dev: $(DEV_STAMP) system-deps

# Test-only system packages: nginx (hybrid routing test), redis-server (shared forecast cache,
# shared rate limits), prometheus + promtool (alert rules, dashboard queries against a real
# Prometheus), postgresql (store and job tests), rabbitmq-server (queue workers), chromium +
# chromium-driver (the /ui page in a real headless browser).
SYSTEM_DEPS := nginx redis-server prometheus postgresql rabbitmq-server chromium chromium-driver
system-deps:
	@missing=""; for cmd in nginx redis-server prometheus promtool chromedriver; do \
	  command -v $$cmd >/dev/null 2>&1 || test -x /usr/sbin/$$cmd || test -x /usr/bin/$$cmd || missing=1; done; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	  test -x /usr/lib/rabbitmq/bin/rabbitmq-server || missing=1; \
	  test -z "$$missing" || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends $(SYSTEM_DEPS) >/dev/null)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	# The reference implementation is the test oracle only; its own deps are pinned above.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps kronos-model-arch==0.1.0
	touch $(DEV_STAMP)

test: install-dev
	$(BIN)/python -m pytest -q tests

serve: install
	$(BIN)/bentoml serve service:KronosService --port $(PORT)

bench: install-dev
	$(BIN)/python scripts/bench_runtime.py

# Batching on/off sweep on 127.0.0.1 (servers started by the script); writes build/load/.
load-test: install-dev
	$(BIN)/python scripts/load_test.py --sweep --dev-shape small --sliding approximate \
	    --concurrency 1 4 16 32 64 --shapes 64x16 400x120 400x120x8 --duration 15 --out build/load

clean:
	rm -rf $(VENV) .pytest_cache
