# MEIJU Review: `make run` and `make test` do all the set-up in a local virtual environment.
#
# Torch is chosen explicitly. The default is the CPU build (torch==2.13.0). With an NVIDIA GPU,
# install the CUDA build instead:   make run TORCH=torch   (PyPI's Linux wheels are CUDA builds)
# or any pip requirement, e.g.      make run TORCH="torch==2.13.0 --index-url <your CUDA index>"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PORT ?= 8501
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo worker test lint format browser postgres bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/meiju demo

run: demo
	$(BIN)/meiju run --port $(PORT)

worker: install
	$(BIN)/meiju worker

# Debian's Chromium drives the browser tests (Playwright uses it; it never downloads a browser);
# a CJK font makes the screenshots readable.
browser:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi wqy; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null; \
	  else echo "install Debian's chromium: sudo apt-get install chromium chromium-driver"; exit 1; fi; }

# Debian's PostgreSQL server binaries (initdb, pg_ctl): the store, queue, quota, lease and
# concurrency tests also run on PostgreSQL, on a throw-away server each test session starts
# (tests/conftest.py: initdb in a temporary folder, a free port, stopped at the end).
postgres:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	  else echo "install Debian's postgresql: sudo apt-get install postgresql"; exit 1; fi; }

# ruff; the layers of shared/DESIGN.md as import contracts ([tool.importlinter] in
# pyproject.toml); mypy on the store and the services ([tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install browser postgres lint
	$(BIN)/pytest

bench: install
	command -v ffmpeg >/dev/null || { apt-get update -qq && apt-get install -y -qq ffmpeg; }
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
