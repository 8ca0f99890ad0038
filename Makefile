# Fresh machine: `make demo` or `make test` create .venv and install what they need.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint docs format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/longseq power demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP) docs
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# --strict fails on a broken link or anchor, a page missing from the nav or a docstring
# that does not render (no -q: it hides the warnings that --strict counts). Offline.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts

bench: $(STAMP)
	$(PY) benchmarks/power_bench.py
	$(PY) benchmarks/shuffle_bench.py
	$(PY) benchmarks/mamba2_bench.py
	$(PY) benchmarks/collapse_passkey.py
	$(PY) benchmarks/collapse_streaming.py
	$(PY) benchmarks/kltrace_bench.py
	$(PY) benchmarks/streaming_bench.py

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache .ruff_cache
