# Two commands for a fresh clone:  `make serve` (set up and run the service)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test lint setup-serve setup-dev clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Serving needs only the `cpu` extra (use `.[gpu]` on a CUDA host): no torch, transformers or optimum.
setup-serve: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e ".[cpu]"

serve: setup-serve
	$(PY) -m app

# Tests also build tiny models and check the export job, so they need the export and dev extras.
setup-dev: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e ".[cpu,export,dev]"
	$(PY) -m pip install --quiet -e ./clients/python

test: setup-dev
	$(PY) -m ruff check app model_export tests bench scripts clients
	$(PY) -m ruff format --check app model_export tests bench scripts clients
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
