# cfjax: `make demo` runs the main job, `make test` the test suite. Both create/use .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

.PHONY: install demo test bench clean
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cfjax demo --out $(OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

bench: $(BIN)/.installed
	$(BIN)/python experiments/bench.py --out bench.json

clean:
	rm -rf $(VENV) runs .pytest_cache
