# Two commands do all set-up: `make demo` and `make test` (each creates .venv if missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raretarget demo --out demo_store

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not gpu" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo_store demo_store.links .pytest_cache
