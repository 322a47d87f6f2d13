# The two commands of the README: `make run` and `make test`. Only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# checkov pins many dependencies of its own: it gets a separate virtualenv (requirements-tools.txt).
TOOLS  := .venv-tools
# The suite on two workers (pytest-xdist; groups in tests/conftest.py: a file per worker, the e2e files on one);
# each worker has its own database, queue prefix and ports. `make test PYTEST_ARGS=` runs it in one process.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: run test install install-test tools lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(TOOLS)/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet -r requirements-tools.txt
	touch $@

## Tools the tests call but that cannot share the project's venv (checkov, for tests/k8s).
tools: $(TOOLS)/.installed

## Start everything: four APIs + workers, dev inbox, embedded Postgres/Redis unless TENURE_*_URL are set.
run: install
	$(BIN)/tenure dev

## Run the whole test suite (pytest's "no tests collected" counts as a failure), manifests and image included.
test: install-test tools
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

lint: install-test
	$(BIN)/ruff check shared services tests bench

clean:
	rm -rf $(VENV) $(TOOLS) .tenure .pytest_cache
