# Set-up is part of every target, so each is the one command a newcomer needs on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test lint data install serve

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

test: install data
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check models service offline tests load_tests

.PHONY: baselines
baselines: install data
	$(VENV)/bin/python -m models.eval.baselines

# The service on the bundled checkpoints at http://localhost:3000 (Swagger UI at /).
serve: install
	BENTOML_DO_NOT_TRACK=true $(VENV)/bin/bentoml serve --port 3000
