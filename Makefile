# Kronos serving bundle. Quickstart: `make serve`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000

.PHONY: install system-deps test serve bench load-test clean

install: $(STAMP) system-deps

# nginx: the hybrid-deployment routing test runs Debian's nginx in front of two local services.
# redis-server: the rate-limit test shares a limit across two "replicas" through a real Redis.
system-deps:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null)
	@command -v redis-server >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	# The reference implementation is the test oracle only; its own deps are pinned above.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps kronos-model-arch==0.1.0
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

serve: install
	$(BIN)/bentoml serve service:KronosService --port $(PORT)

bench: install
	$(BIN)/python scripts/bench_runtime.py

# Batching on/off sweep on 127.0.0.1 (servers started by the script); writes build/load/.
load-test: install
	$(BIN)/python scripts/load_test.py --sweep --dev-shape small --sliding approximate \
	    --concurrency 1 4 16 32 64 --shapes 64x16 400x120 400x120x8 --duration 15 --out build/load

clean:
	rm -rf $(VENV) .pytest_cache
