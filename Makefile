# Two commands to a first report: `make demo`, then `make test`. Each creates .venv if missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORE := sqlite:///$(CURDIR)/mlflow.db

# The project's own store (DESIGN.md §3) unless the caller already points elsewhere.
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),$(STORE))
RUN_ENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI="$(TRACKING_URI)" \
	MLFLOW_EXPERIMENT_NAME="$${MLFLOW_EXPERIMENT_NAME:-cxr-gradcam-report}" TF_CPP_MIN_LOG_LEVEL=2

.PHONY: help demo test ui lint bench clean

help:
	@echo "make demo   set up .venv, train and register a demo model, write a report"
	@echo "make test   set up .venv and run the whole test suite"
	@echo "make ui     open the MLflow UI on the project's store (http://127.0.0.1:5000)"
	@echo "make bench  images per second: this engine vs model.predict and the tutorial's way"
	@echo "make lint   ruff check"

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(STAMP)
	$(RUN_ENV) mlflow run . -e train --env-manager local
	$(RUN_ENV) mlflow run . --env-manager local

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" TF_CPP_MIN_LOG_LEVEL=2 $(PYTHON) -m pytest

ui: $(STAMP)
	$(RUN_ENV) mlflow ui --backend-store-uri "$(TRACKING_URI)" --host 127.0.0.1 --port 5000

bench: $(STAMP)
	$(RUN_ENV) $(PYTHON) -m report bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf reports mlruns mlflow.db
