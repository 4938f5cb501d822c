# attune — the two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use from the lock file (every version and hash pinned;
# regenerate it after editing pyproject.toml: see README, "Dependencies").
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit integration faults lint typecheck bench clean

$(STAMP): pyproject.toml requirements/dev-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev-lock.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the whole flow on a local Ray with a local store
	$(BIN)/attune demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check platform tests jobs bench
	$(BIN)/ruff format --check platform tests jobs bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

faults: $(STAMP)  ## fault injection under load (real Ray, Serve, S3 server)
	$(BIN)/pytest -q -m faults tests/faults

test: lint typecheck $(STAMP)  ## everything CI runs: lint, types, unit, integration, faults
	$(BIN)/pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/tune.py
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) .attune .pytest_cache .mypy_cache .ruff_cache
