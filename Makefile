# genserve: `make serve` serves the shipped models, `make test` runs the tests.
# Each creates its own virtual environment; nothing downloads model weights or data.
PYTHON ?= python3
VENV := .venv
SERVE_VENV := .venv-serve

.PHONY: test serve lint typecheck bench-core loadtest clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[train,dev]'
	$(VENV)/bin/python scripts/check_env.py
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q -e .
	$(SERVE_VENV)/bin/python scripts/check_env.py --serving
	touch $@

test: $(VENV)/.installed
	bash scripts/ensure_prometheus.sh
	$(VENV)/bin/ruff check service deployments training tests
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check service deployments training tests
	$(VENV)/bin/ruff format --check service deployments training tests

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/python -m deployments.run

bench-core: $(VENV)/.installed
	$(VENV)/bin/python loadtests/bench_core.py --out docs/bench-core.md

# A short headless Locust run against a running `make serve` (override HOST, USERS, TIME).
HOST ?= http://127.0.0.1:8000
USERS ?= 8
TIME ?= 30s
loadtest: $(VENV)/.installed
	mkdir -p loadtests/results
	$(VENV)/bin/locust -f loadtests/locustfile.py --host $(HOST) --headless -u $(USERS) -r $(USERS) -t $(TIME) \
		--csv loadtests/results/mixed --only-summary GanUser VaeUser DiffusionMixedUser

clean:
	rm -rf $(VENV) $(SERVE_VENV) *.egg-info
