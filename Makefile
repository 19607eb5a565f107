# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLAYWRIGHT_VERSION := 1.65.2

.PHONY: setup demo serve test lint typecheck unit fhir-definitions bench clean e2e fuzz

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

## Ingest the bundled sample studies and serve FHIR on http://127.0.0.1:8080/fhir
demo: setup
	$(BIN)/pacsfhir demo

fhir-definitions:
	scripts/fetch-fhir-definitions

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: setup
	$(BIN)/mypy

## Everything: lint, types, and the whole test suite (SQLite and PostgreSQL)
test: setup fhir-definitions lint typecheck
	$(BIN)/python -m pytest -q --ignore=tests/e2e

# Playwright's Python package only: its driver is in the wheel, the browser is Debian's
# chromium (never `playwright install`).
$(BIN)/.playwright-$(PLAYWRIGHT_VERSION): $(BIN)/.installed
	$(BIN)/python -m pip install -q playwright==$(PLAYWRIGHT_VERSION)
	touch $@

## OHIF Viewer on pacsfhir in headless Chromium (Debian's chromium); screenshots in tests/artifacts/
e2e: setup $(BIN)/.playwright-$(PLAYWRIGHT_VERSION)
	scripts/fetch-ohif
	$(BIN)/python -m pytest -q tests/e2e

bench: setup
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache pacsfhir-demo-data

## The fuzz suite at scale (its small run is part of `make test`): a real `pacsfhir serve`,
## PACSFHIR_FUZZ_EXAMPLES requests per route and backend (and the file corpus scaled with
## it); figures in .cache/fuzz/figures.json. About 7 min at 200.
FUZZ_EXAMPLES ?= 200
fuzz: setup
	PACSFHIR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PACSFHIR_FUZZ_SERVER=subprocess \
	$(BIN)/python -m pytest -q -p no:randomly tests/fuzz
