# The two commands a user needs: `make run` (the demo) and `make test` (the tests).
# Both install everything themselves: the venv, the package, and (for tests) PostgreSQL.
# `make lint` is what CI runs before the tests: ruff, mypy --strict, import-linter contracts.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TIER   ?= fast
PYTEST_ARGS ?=

.PHONY: run test test-all venv clean bench-recovery bench-lb lint

$(STAMP): pyproject.toml
	bash scripts/bootstrap.sh $(VENV) $(PYTHON)

venv: $(STAMP)

## make run: start a daemon (embedded local provider, SQLite), launch examples/train.yaml,
## preempt it (once with a notice, once without), follow it to the end, print the job table.
run: $(STAMP)
	$(PY) examples/demo.py

## make lint: ruff check, ruff format --check, mypy --strict over the package, lint-imports
## (the contracts in .importlinter). scripts/lint.sh says why mypy and import-linter read a
## shadow tree in build/lint/.
lint: $(STAMP)
	bash scripts/lint.sh

## make test: the fast tier (a few minutes). TIER=all adds the slow tiers (what CI runs).
test: $(STAMP)
	bash scripts/test.sh $(TIER) $(PYTEST_ARGS)

test-all:
	$(MAKE) test TIER=all

bench-recovery: $(STAMP)
	$(PY) bench/recovery.py

bench-lb: $(STAMP)
	$(PY) bench/lb.py

clean:
	rm -rf $(VENV) .spotd-demo build *.egg-info
