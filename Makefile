# The README's two commands: `make demo` (set up, run the main job on the
# embedded default) and `make test` (set up, run the whole test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_REDIS_PORT ?= 6379

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,dlib]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/faec-rec demo

test: setup
	$(BIN)/python -m faec_rec.redis_server ensure --port $(TEST_REDIS_PORT)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
