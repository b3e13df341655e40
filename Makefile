# idcfs — `make demo` to try it offline, `make test` to test it. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-python demo demo-stop test test-unit test-big lint bench soak clean

# The mount needs FUSE 3; the Python package, its unit tests and lint do not.
install: install-python
	@command -v fusermount3 >/dev/null || { echo "FUSE 3 is missing: sudo apt-get install -y fuse3 libfuse3-3"; exit 1; }

install-python: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/python -m tests.testbed.demo start

demo-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tests.testbed.demo stop; fi

# The whole suite: real mounts and real servers (see README, "Tests", for what it needs); the
# OHIF viewer and playwright-core from npm for the browser test of the DICOMweb face.
test: install
	bash scripts/install_viewers.sh
	$(BIN)/python -m pytest -q

# The tests that mount nothing (the core in-process, the parts, the options): no /dev/fuse needed.
test-unit: install-python
	$(BIN)/python -m pytest -q -m "not integration and not big" -p no:cacheprovider

# IDC's largest series (91,980 objects) listed and read on the S3 and GCS test servers.
test-big: install
	$(BIN)/python -m pytest -q -m big --timeout 1800 tests/test_big.py

# LINK=100mbit,50ms: one shared line (bandwidth for all connections together, latency per request).
bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	LINK=$(LINK) $(BIN)/python scripts/bench.py

# Reliability under injected faults (bench/RELIABILITY.md): MINUTES=30 by default. Needs root.
MINUTES ?= 30
soak: install
	$(BIN)/python scripts/soak.py --minutes $(MINUTES) --report bench/RELIABILITY.md

# ruff, mypy, and the import rules of README's "How it works" (pyproject.toml's [tool.importlinter]).
# Needs no FUSE.
lint: install-python
	$(BIN)/ruff check idcfs tests scripts
	$(BIN)/ruff format --check idcfs tests scripts
	$(BIN)/mypy
	@# idc:// and idcfs serve run on macOS and Windows too: the calls each platform has, for the
	@# oldest and newest Python supported (typeshed knows them; no such machine runs here).
	@for platform in linux darwin win32; do for version in 3.10 3.13; do \
		echo "mypy --platform $$platform --python-version $$version"; \
		$(BIN)/mypy --platform $$platform --python-version $$version --no-error-summary || exit 1; \
	done; done
	$(BIN)/lint-imports

clean: demo-stop
	rm -rf demo-data demo-mnt .demo .testdata build *.egg-info
