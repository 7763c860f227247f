# Set-up is part of every target, so each is the one command a newcomer needs on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test lint data install serve prometheus servers chromium image image-test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

data: $(FMNIST_DIR)/t10k-images-idx3-ubyte.gz

$(FMNIST_DIR)/t10k-images-idx3-ubyte.gz:
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q dataset-fashion-mnist

# The real Prometheus (and promtool) for tests/deploy/test_observability.py, which evaluates the
# dashboard's and the alerts' queries against a running service; Debian's package, 2.42.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus; }

# Redis and HAProxy for the task-store and replica tests (tests/service/test_task_store.py,
# tests/deploy/test_replicas.py), which start them themselves; Debian's packages.
servers:
	@command -v redis-server >/dev/null && command -v haproxy >/dev/null || { \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server haproxy; }


# Debian's Chromium for tests/service/test_ui_browser.py, which drives the /ui page with Playwright
# (a PyPI package in the dev extras, pointed at /usr/bin/chromium: it downloads no browser).
chromium:
	@command -v chromium >/dev/null || { \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

test: install data prometheus servers chromium
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check models service offline tests load_tests examples

.PHONY: baselines
baselines: install data
	$(VENV)/bin/python -m models.eval.baselines

# The service on the bundled checkpoints at http://localhost:3000 (Swagger UI at /).
serve: install
	BENTOML_DO_NOT_TRACK=true $(VENV)/bin/bentoml serve --port 3000

# The container image. BASE_IMAGE defaults to a Debian bookworm base built here by debootstrap
# (no image registry is reachable from these machines); where one is, pass
# BASE_IMAGE=debian:bookworm-slim TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
IMAGE ?= elbo-serve:cpu
LOCAL_BASE_IMAGE := elbo-serve-base:bookworm
BASE_IMAGE ?= $(LOCAL_BASE_IMAGE)
TORCH_INDEX_URL ?=

image: install
	@if [ "$(BASE_IMAGE)" = "$(LOCAL_BASE_IMAGE)" ]; then deploy/docker/base-image.sh $(BASE_IMAGE); fi
	deploy/docker/wheelhouse.sh $(VENV) $(TORCH_INDEX_URL)
	docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		$(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) -t $(IMAGE) .
	@docker image inspect $(IMAGE) --format '$(IMAGE): {{.Size}} bytes' \
		| awk '{printf "%s %.0f MB\n", $$1, $$2 / 1e6}'

# Runs the image and checks what a user touches; fails loudly on any miss.
image-test: install
	$(VENV)/bin/python deploy/docker/image_test.py --image $(IMAGE)
