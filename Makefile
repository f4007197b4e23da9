# Everything a fresh machine needs is installed into .venv by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install lint format test test-unit test-fast demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[redis,sqlalchemy,postgres,django,test,bench]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ergate_celery tests bench example_project tools
	$(BIN)/ruff format --check ergate_celery tests bench example_project tools
	$(BIN)/mypy
	$(BIN)/python tools/check_layout.py

format: $(STAMP)
	$(BIN)/ruff format ergate_celery tests bench example_project tools
	$(BIN)/ruff check --fix ergate_celery tests bench example_project tools

# Two pytest processes at once: each keeps its own Redis db, schema and vhost (tests/services.py).
test: lint
	$(BIN)/python -m pytest -n 2

# The tests of tests/unit/ alone: no broker, backend, database or worker needed (under 30 s).
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# Skips the fault tests marked slow; CI runs everything through `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow"

# The example Django project end to end on its embedded defaults (no server needed).
demo: $(STAMP)
	$(BIN)/python example_project/demo.py

# Side by side with bare Celery on the same broker; prints ratios, writes bench/results/*.json.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
