# siyu: every target sets itself up (a .venv with the project installed) before it runs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: up test bench lint install clean scale-test

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "siyu needs Python 3.11 ($(PYTHON)); set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/siyu up

# Two workers, each with its own Prefect server and sandbox; a file's tests stay on one worker
# (they share module fixtures). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The two-worker scale-out on PostgreSQL (README, "How it scales"), alone: ~3 minutes.
scale-test: $(STAMP)
	$(BIN)/python -m pytest tests/deployments/test_scale_out.py tests/deployments/test_recovery.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
