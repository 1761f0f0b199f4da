# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# two stamps: the demo needs podium alone (its own dependencies), the tests every extra they exercise
CORE   := $(VENV)/.podium-core
STAMP  := $(VENV)/.podium-installed

.PHONY: demo test check setup bench clean

# (a current test install already holds everything the demo needs: no second pip run)
$(CORE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -f $(STAMP) && test $(STAMP) -nt pyproject.toml || $(BIN)/python -m pip install --quiet -e .
	touch $(CORE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP) $(CORE)

setup: $(STAMP)

demo: $(CORE)
	$(BIN)/podium demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Static gate (CI runs it before the tests), configured in pyproject.toml: ruff's F, I, B, UP rules over
# all Python files, then mypy on src/podium.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) demo_data .pytest_cache
