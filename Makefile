# Two commands for users: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install prometheus test unit demo lint typecheck bench clean gpu-check

install: $(STAMP)

# prometheus + promtool (Debian package) where missing: the alert rule tests and the real-server test
prometheus:
	@sh deploy/install-prometheus.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

# The whole suite against a real Kafka broker started on free ports and always stopped afterwards.
test: install prometheus
	$(VENV)/bin/stream-app kafka exec -- $(PY) -m pytest $(PYTEST_ARGS)

# Fast pure tests only (no broker).
unit: install prometheus
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/stream-app demo

# Every GPU check in one command (needs an NVIDIA GPU; says so and exits 2 without one): the CUDA
# tests, the GRU step on CUDA (1M-user device table, CUDA graphs), the scoring path with the device
# hidden cache; writes benchmarks/results/gru_step_cuda.json with each goal and whether it is met.
gpu-check: install
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy stream_app clickstream_tools models

clean:
	rm -rf var .pytest_cache
