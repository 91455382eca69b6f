# Two commands to a first report: `make demo`, then `make test`. Each creates .venv if missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORE := sqlite:///$(CURDIR)/mlflow.db

# The project's own store (docs/ARCHITECTURE.md, "Contracts") unless the caller points
# elsewhere.
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),$(STORE))
RUN_ENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI="$(TRACKING_URI)" \
	MLFLOW_EXPERIMENT_NAME="$${MLFLOW_EXPERIMENT_NAME:-cxr-gradcam-report}" TF_CPP_MIN_LOG_LEVEL=2

.PHONY: help demo test ui lint bench bench-e2e bench-compare clean messages

help:
	@echo "make demo   set up .venv, train and register a demo model, write a report"
	@echo "make test   set up .venv and run the whole test suite"
	@echo "make ui     open the MLflow UI on the project's store (http://127.0.0.1:5000)"
	@echo "make bench  images per second: this engine vs model.predict and the tutorial's way"
	@echo "make bench-compare  the same, with tf-keras-vis and xplique in their own venv"
	@echo "make bench-e2e  a whole report run vs decoding + model.predict and the tutorial"
	@echo "make lint   ruff check"

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[spark,test]'
	touch $@

demo: $(STAMP)
	$(RUN_ENV) mlflow run . -e train --env-manager local
	$(RUN_ENV) mlflow run . --env-manager local

# Chromium and PostgreSQL for tests/integration come from Debian (idempotent; where apt is
# unavailable those tests skip and say why).
test: $(STAMP)
	bash scripts/install-system-deps.sh
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" TF_CPP_MIN_LOG_LEVEL=2 $(PYTHON) -m pytest

ui: $(STAMP)
	$(RUN_ENV) mlflow ui --backend-store-uri "$(TRACKING_URI)" --host 127.0.0.1 --port 5000

bench: $(STAMP)
	$(RUN_ENV) $(PYTHON) -m report bench

# The whole report pass against decoding + model.predict, on generated films (README, "Speed").
bench-e2e: $(STAMP)
	$(RUN_ENV) $(PYTHON) -m report bench --end-to-end films:600x237 --json reports/bench-600.json
	$(RUN_ENV) $(PYTHON) -m report bench --end-to-end films:200x1024 --json reports/bench-1024.json

# tf-keras-vis and xplique pin TensorFlow 2.20 and tf_keras, so they get their own venv with
# the project's other pins (read from pyproject.toml; xplique caps scikit-learn) on PYTHONPATH.
COMPARE := .venv-compare
$(COMPARE)/.installed: pyproject.toml $(STAMP)
	test -x $(COMPARE)/bin/python || python3 -m venv $(COMPARE)
	$(COMPARE)/bin/pip install --quiet tf-keras-vis==0.8.7 xplique==2.0.2
	$(COMPARE)/bin/pip install --quiet $$($(PYTHON) -c "import tomllib; \
		deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
		print(' '.join(d for d in deps if not d.startswith(('tensorflow', 'scikit-learn'))))")
	touch $@

bench-compare: $(COMPARE)/.installed
	$(RUN_ENV) PYTHONPATH="$(CURDIR)" $(COMPARE)/bin/python -m report bench

# The report's catalogs (README, "The report in Portuguese"): the English messages extracted
# from the code and templates into report/locales/report.pot, merged into each locale's .po,
# whose new msgstr a translator then fills (tests/test_i18n.py fails until they are).
messages: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -k _ -k ngettext:1,2 -k N_ --sort-by-file \
		--project cxr-gradcam-report -o report/locales/report.pot .
	$(VENV)/bin/pybabel update -i report/locales/report.pot -d report/locales -D report \
		--no-fuzzy-matching --ignore-obsolete

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf reports mlruns mlflow.db
