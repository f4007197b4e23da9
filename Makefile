# Everything a fresh machine needs is installed into .venv by these targets.
# The newest supported Python this machine has (pyenv reads .python-version), so the suite runs
# on the newest Django (6.x needs Python 3.12 or later); `make PYTHON=python3.11 ...` picks one.
PYTHON ?= $(firstword $(foreach p,python3.13 python3.12 python3.11 python3,\
	$(if $(shell $(p) -c "" 2>/dev/null && echo found),$(p))))
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(PY_VERSION)
EXTRAS := redis,sqlalchemy,postgres,django,test,bench,docs
# compat: a path entry to the checkout, which mypy and IDEs follow (the default editable mode's
# import hook hides the package from them) and which sees a new module without a reinstall.
EDITABLE := --config-settings editable_mode=compat

.PHONY: install lint format test test-unit test-fast test-compat docs demo bench clean

install: $(STAMP)

# A venv made by another Python is made again rather than mixed with this one.
$(STAMP): setup.cfg pyproject.toml
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PY_VERSION)" ]; then \
		echo "$(VENV) is another Python's: making it again with $(PYTHON)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" $(EDITABLE)
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ergate_celery tests bench example_project tools
	$(BIN)/ruff format --check ergate_celery tests bench example_project tools
	$(BIN)/mypy
	$(BIN)/python tools/check_layout.py

format: $(STAMP)
	$(BIN)/ruff format ergate_celery tests bench example_project tools
	$(BIN)/ruff check --fix ergate_celery tests bench example_project tools

# Four pytest processes at once: each keeps its own Redis db, schema and vhost (tests/services.py).
# Most of a worker test is waiting (beat intervals, leases, sweeps), so four keep two cores busy.
# The suite builds the docs site too (tests/test_docs.py), and runs every page's code.
test: lint
	$(BIN)/python -m pytest -n 4

# The tests of tests/unit/ alone: no broker, backend, database or worker needed (under 30 s).
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# Skips the fault tests marked slow; CI runs everything through `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 4 -m "not slow"

# The Django tests on the LTS releases before the newest, each in a venv of its own on the
# oldest supported Python (not part of `make test`, which runs on the newest Django).
COMPAT_DJANGO := 4.2 5.2
COMPAT_PYTHON ?= python3.11
COMPAT_TESTS := tests/unit tests/test_django_console.py tests/test_django_db_backend.py \
	tests/test_store_django_postgres.py tests/test_example_project.py

test-compat: $(foreach v,$(COMPAT_DJANGO),.venv-django$(v)/.installed)
	@failed=""; for v in $(COMPAT_DJANGO); do \
		echo "== Django $$(.venv-django$$v/bin/python -m django --version)"; \
		.venv-django$$v/bin/python -m pytest -p no:cacheprovider $(COMPAT_TESTS) || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed on Django$$failed"; exit 1; fi

.venv-django%/.installed: setup.cfg pyproject.toml
	rm -rf .venv-django$*
	$(COMPAT_PYTHON) -m venv .venv-django$*
	.venv-django$*/bin/python -m pip install --quiet --upgrade pip
	.venv-django$*/bin/python -m pip install --quiet -e ".[redis,sqlalchemy,postgres,django,test]" \
		"django~=$*.0" $(EDITABLE)
	touch $@

# The documentation site, built as CI builds it: a warning (a broken link, a missing page or
# docstring reference) fails the build. Open site/index.html, or `.venv/bin/mkdocs serve`.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The example Django project end to end on its embedded defaults (no server needed).
demo: $(STAMP)
	$(BIN)/python example_project/demo.py

# Side by side with bare Celery on the same broker; prints ratios, writes bench/results/*.json.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-django* site .pytest_cache .mypy_cache .ruff_cache build *.egg-info
