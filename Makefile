# idcfs — `make demo` to try it offline, `make test` to test it. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-stop test test-big lint bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v fusermount3 >/dev/null || { echo "FUSE 3 is missing: sudo apt-get install -y fuse3 libfuse3-3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/python -m tests.testbed.demo start

demo-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tests.testbed.demo stop; fi

test: install
	$(BIN)/python -m pytest -q

# IDC's largest series (91,980 objects) listed and read on the S3 and GCS test servers.
test-big: install
	$(BIN)/python -m pytest -q -m big --timeout 1800 tests/test_big.py

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/bench.py

# Reliability under injected faults (bench/RELIABILITY.md): MINUTES=30 by default. Needs root.
MINUTES ?= 30
soak: install
	$(BIN)/python scripts/soak.py --minutes $(MINUTES) --report bench/RELIABILITY.md

# ruff, and the import rules of DESIGN.md (pyproject.toml's [tool.importlinter] contracts).
lint: install
	$(BIN)/ruff check idcfs tests scripts
	$(BIN)/ruff format --check idcfs tests scripts
	$(BIN)/lint-imports

clean: demo-stop
	rm -rf demo-data demo-mnt .demo .testdata build *.egg-info
