# Every target creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The suite runs in 4 processes (pytest-xdist), each test file whole in one of them: most
# tests wait on servers and subprocesses, so 4 beat the 2 cores' count. PYTEST_ARGS=-n0
# runs it in one process.
PYTEST_ARGS ?= -n 4 --dist loadfile

.PHONY: serve test lint docs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)  ## run the service on its embedded default (SQLite bus and store)
	$(BIN)/eventmill serve

test: $(STAMP)   ## run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

docs: $(STAMP)    ## build the documentation site (MkDocs, Material theme) into site/
	$(BIN)/mkdocs build --strict

bench: $(STAMP)  ## the benchmark report under benchmarks/results/ (BENCH_ARGS=--quick: a smoke run)
	$(BIN)/python benchmarks/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
