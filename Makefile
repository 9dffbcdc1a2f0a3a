# genserve: `make serve` serves the shipped models, `make test` runs the tests.
# Each creates its own virtual environment; nothing downloads model weights or data.
PYTHON ?= python3
VENV := .venv
SERVE_VENV := .venv-serve

.PHONY: test serve lint typecheck bench bench-core bench-text2image chaos loadtest screenshots images image-cpu image-gpu image-monitoring clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[train,dev]' -e ./client
	$(VENV)/bin/python scripts/check_env.py
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q -e .
	$(SERVE_VENV)/bin/python scripts/check_env.py --serving
	touch $@

test: $(VENV)/.installed
	bash scripts/ensure_package.sh prometheus prometheus
	bash scripts/ensure_package.sh prometheus-alertmanager prometheus-alertmanager
	bash scripts/ensure_package.sh chromium chromium
	bash scripts/container_setup.sh localhost/debian:bookworm
	$(VENV)/bin/ruff check service deployments training tests loadtests client monitoring
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check service deployments training tests loadtests client monitoring
	$(VENV)/bin/ruff format --check service deployments training tests loadtests client monitoring

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The playground's screenshots in README and docs: its browser test, writing them to docs/figures.
screenshots: $(VENV)/.installed
	bash scripts/ensure_package.sh chromium chromium
	GENSERVE_SCREENSHOTS_DIR=$(CURDIR)/docs/figures $(VENV)/bin/python -m pytest -q tests/integration/test_playground.py

# The head/CPU and GPU worker images (docker/Dockerfile); docker, or podman where docker is absent.
# BASE: the base image (python:3.11.7-slim-bookworm; a local Debian where no registry is reachable).
CONTAINER ?= $(shell command -v docker >/dev/null 2>&1 && echo docker || echo podman)
IMAGE_TAG ?= 0.1.0
BASE ?= python:3.11.7-slim-bookworm
# IMAGE_BUILD_ARGS: extra build flags (docs/containers.md has this machine's podman recipe).
IMAGE_BUILD_ARGS ?=
# podman keeps HEALTHCHECK only in docker's image format
IMAGE_FORMAT := $(if $(findstring podman,$(CONTAINER)),--format docker,)
images: image-cpu image-gpu
image-cpu image-gpu: image-%:
	$(CONTAINER) build $(IMAGE_FORMAT) $(IMAGE_BUILD_ARGS) --build-arg BASE=$(BASE) --target $* -t genserve-$*:$(IMAGE_TAG) -f docker/Dockerfile .
# Prometheus and Alertmanager from Debian's packages, for compose where no registry is reachable.
image-monitoring:
	$(CONTAINER) build $(IMAGE_FORMAT) $(IMAGE_BUILD_ARGS) --build-arg BASE=$(BASE) -t genserve-monitoring:$(IMAGE_TAG) -f docker/monitoring.Dockerfile .

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/python -m deployments.run

# PyTriton's Python-backend stub links the system libpython, so its environment is built from
# Debian's python3 (not a python built elsewhere); onnxruntime (CPU) lives only in this venv.
PYTRITON_VENV := .venv-pytriton
SYSTEM_PYTHON ?= /usr/bin/python3
$(PYTRITON_VENV)/.installed:
	$(SYSTEM_PYTHON) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/pip install -q nvidia-pytriton onnxruntime numpy pillow pydantic pydantic-settings
	touch $@

# The side-by-side benchmark, three rounds (about 90 minutes here): docs/benchmarks.{json,md}.
bench: $(VENV)/.installed $(PYTRITON_VENV)/.installed
	$(VENV)/bin/python -m loadtests.bench --json docs/benchmarks.json --out docs/benchmarks.md --before docs/benchmarks-before.json

# Overload at 3x saturation for 2 minutes, replica / ingress / worker-node kills under load and an
# abandoned request (about 8 minutes here): docs/reliability.{json,md}.
chaos: $(VENV)/.installed
	$(VENV)/bin/python -m loadtests.chaos --node-loss --json docs/reliability.json --out docs/reliability.md

bench-core: $(VENV)/.installed
	$(VENV)/bin/python loadtests/bench_core.py --out docs/bench-core.md

# Text-to-image, step-level against request-level batching, in-process (about 5 minutes here):
# docs/bench-text2image.{json,md}.
bench-text2image: $(VENV)/.installed
	$(VENV)/bin/python -m loadtests.bench_text2image --out docs/bench-text2image.md

# A short headless Locust run against a running `make serve` (override HOST, USERS, TIME).
HOST ?= http://127.0.0.1:8000
USERS ?= 8
TIME ?= 30s
loadtest: $(VENV)/.installed
	mkdir -p loadtests/results
	$(VENV)/bin/locust -f loadtests/locustfile.py --host $(HOST) --headless -u $(USERS) -r $(USERS) -t $(TIME) \
		--csv loadtests/results/mixed --only-summary GanUser VaeUser DiffusionMixedUser

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(PYTRITON_VENV) *.egg-info
