# Two commands for a fresh clone:  `make serve` (set up and run the service)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test test-fast lint browser setup-serve setup-dev clean

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

# The demo page's browser tests drive Debian's chromium and chromedriver (selenium never downloads a browser).
# As root this installs them; otherwise it stops at once with the command to run.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	  else \
	    echo "make test needs Debian's chromium and chromium-driver; install them with:" >&2; \
	    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium chromium-driver" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: setup-dev
	$(PY) -m ruff check app model_export tests bench scripts clients
	$(PY) -m ruff format --check app model_export tests bench scripts clients

# Everything: unit, API, contract, client, and the integration tests on real ONNX models, uvicorn and Chromium.
# Two workers, a test file each at a time: the suite fits its 4-minute budget on 2 cores (about 2.5 minutes here;
# 3.6 in one process). Servers take free ports, so files never collide.
test: lint browser
	$(PY) -m pytest -q -n 2 --dist loadfile

# The edit loop: everything but the tests marked slow (real servers, builds, the browser), in well under a minute.
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
