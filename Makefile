# kwarp — the two commands a new machine needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -P (Python 3.11+): never put the current folder on sys.path. The repository root holds a folder
# named operator/ (kwarp.operator), which would otherwise shadow the standard library's operator.
PIP := $(PY) -P -m pip
KWARP := $(VENV)/bin/kwarp
# The CPU build of torch (on this project's machines it lies on disk). Pass TORCH_SPEC='torch==X --index-url ...'
# for a CUDA build. It is installed before the project, so the project's range `torch>=2.4` is already met.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: help venv venv-test demo test test-slow test-all lint bench peers clean

help:
	@echo "make demo       create .venv, install kwarp, build the demo task, run an embedded WARP run, write its report"
	@echo "make test       install test needs (Python extras, Prometheus), run the suite (slow checks skipped)"
	@echo "make test-slow  the long checks (reproduction --quick, long end-to-end runs)"
	@echo "make lint       ruff and the import-layer contracts"
	@echo "make bench      the benchmarks (merge, store, train step, operator)"

$(VENV)/.torch:
	$(PYTHON) -P -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

demo: venv
	$(KWARP) task build
	$(KWARP) run "$$($(KWARP) task path)/warprun.yaml" --store $(DEMO_DIR)
	@echo "report: $(DEMO_DIR)/$$($(PY) -c 'import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "$$($(KWARP) task path)/warprun.yaml")/report/report.html"

# Prometheus and the Pushgateway are real peers of the observability tests: Debian packages.
peers:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null; \
	  else echo "prometheus/prometheus-pushgateway missing and cannot apt-get: their tests will be skipped"; fi; \
	fi

# checkov (the chart's static security scan) lives in its own venv: it pins old boto3/packaging.
$(VENV)-checkov/.installed:
	rm -rf $(VENV)-checkov
	$(PYTHON) -P -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install -q checkov==3.3.30
	touch $@

test: venv-test peers $(VENV)-checkov/.installed
	$(VENV)/bin/ruff check kwarp operator trainer merger tests benchmarks
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: venv-test peers
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

test-all: venv-test peers
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv-test
	$(VENV)/bin/ruff check kwarp operator trainer merger tests benchmarks

bench: venv-test
	$(PY) benchmarks/merge.py
	$(PY) benchmarks/store.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/operator.py

clean:
	rm -rf $(DEMO_DIR) build dist *.egg-info .pytest_cache .ruff_cache
