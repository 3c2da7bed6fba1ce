# kwarp — the two commands a new machine needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -P (Python 3.11+): never put the current folder on sys.path. The repository root holds a folder
# named operator/ (kwarp.operator), which would otherwise shadow the standard library's operator.
PIP := $(PY) -P -m pip
KWARP := $(VENV)/bin/kwarp
# Every install goes through a lock (requirements/*.txt, `make lock`), so the demo, CI and both images run
# the same versions and none of them moves when PyPI does. pyproject.toml keeps ranges.
LOCK_DEV := requirements/dev.txt
LOCK_CHECKOV := requirements/checkov.txt
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
# torch is installed first, at the locked version (requirements/torch.in), as plain `torch==X`: from PyPI that
# is the CUDA build on Linux (gigabytes of CUDA wheels); this project's machines have a CPU build on disk that
# pip takes instead. Elsewhere, for the CPU build pass (as README says)
#   TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'
# and for one CUDA release e.g. TORCH_SPEC='torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu130'
TORCH_SPEC ?= torch==$(shell sed -n 's/^torch==//p' requirements/torch.in)
DEMO_DIR ?= demo
S3RVER_DIR := tests/peers/s3rver
PYTEST_ARGS ?=

.PHONY: help venv venv-test demo test test-slow test-all lint bench peers lock clean

help:
	@echo "make demo       create .venv, install kwarp, build the demo task, run an embedded WARP run, export its policy, write its report"
	@echo "make test       install test needs (Python extras, Prometheus), run the suite (slow checks skipped)"
	@echo "make test-slow  the long checks (reproduction --quick, long end-to-end runs)"
	@echo "make lint       ruff (the import-layer contracts are tests/test_layers.py, in make test)"
	@echo "make bench      the benchmarks (merge, store, train step, operator, admission checks)"
	@echo "make lock       re-resolve requirements/*.txt from pyproject.toml (then commit them)"

$(VENV)/.torch: requirements/torch.in
	$(PYTHON) -P -m venv $(VENV)
	$(PIP) install -q pip==$(PIP_VERSION)
	$(PIP) install -q -c $(LOCK_DEV) $(TORCH_SPEC)
	touch $@

# The demo's environment has every subcommand (the `all` extra); the test one adds the test tools.
$(VENV)/.installed: $(VENV)/.torch pyproject.toml $(LOCK_DEV)
	$(PIP) install -q -c $(LOCK_DEV) -e '.[all]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.torch pyproject.toml $(LOCK_DEV)
	$(PIP) install -q -c $(LOCK_DEV) -e '.[all,test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

demo: venv
	$(KWARP) task build
	@# kwarp run prints where the report is: $(DEMO_DIR)/local/<run>/<uid>/report/report.html
	@# and, as the demo WarpRun has spec.export, where its policy is: exported policy: $(DEMO_DIR)/local/<run>/<uid>/export
	$(KWARP) run "$$($(KWARP) task path)/warprun.yaml" --store $(DEMO_DIR)

# Prometheus and the Pushgateway are real peers of the observability tests: Debian packages.
peers:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null; \
	  else echo "prometheus/prometheus-pushgateway missing and cannot apt-get: their tests will be skipped"; fi; \
	fi
	@# kubectl (tests/test_kubectl.py) comes with this project's machine image: Debian package `kubectl`
	@# of the Google Cloud SDK (1.32). Debian's own kubernetes-client (1.20) predates server-side field
	@# validation and kustomize patches, so it is not installed in its place.
	@command -v kubectl >/dev/null || echo "kubectl missing: tests/test_kubectl.py will be skipped (set KWARP_KUBECTL to a kubectl >= 1.27)"
	@# s3rver, the file-backed S3 server benchmarks/store.py measures beside moto: npm, from the committed lock.
	@if command -v npm >/dev/null; then \
	  [ $(S3RVER_DIR)/node_modules/.package-lock.json -nt $(S3RVER_DIR)/package-lock.json ] || \
	    (cd $(S3RVER_DIR) && npm ci --no-audit --no-fund --silent); \
	else echo "npm missing: benchmarks/store.py will measure moto only"; fi

# checkov (the chart's static security scan) lives in its own venv: it pins old boto3/packaging.
$(VENV)-checkov/.installed: $(LOCK_CHECKOV)
	rm -rf $(VENV)-checkov
	$(PYTHON) -P -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install -q -r $(LOCK_CHECKOV)
	touch $@

# Re-resolve every lock from pyproject.toml's ranges (uv's resolver, universal: one file for every platform).
# dev.txt (what `make demo` and `make test` install) is resolved first; the images' worker.txt and
# operator.txt are resolved under it, so a package has the same version everywhere.
UV := $(VENV)/bin/uv
LOCK_FLAGS := --universal --python-version 3.11 --quiet --custom-compile-command 'make lock'
$(UV): $(VENV)/.torch
	$(PIP) install -q uv==$(UV_VERSION)

lock: $(UV)
	$(UV) pip compile pyproject.toml --extra all --extra test -c requirements/torch.in $(LOCK_FLAGS) -o $(LOCK_DEV)
	$(UV) pip compile pyproject.toml --extra worker -c requirements/torch.in -c $(LOCK_DEV) $(LOCK_FLAGS) -o requirements/worker.txt
	$(UV) pip compile pyproject.toml --extra operator -c $(LOCK_DEV) $(LOCK_FLAGS) -o requirements/operator.txt
	$(UV) pip compile requirements/checkov.in $(LOCK_FLAGS) -o $(LOCK_CHECKOV)

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
	$(PY) benchmarks/admission.py
	$(PY) benchmarks/store_outage.py --fault down
	$(PY) benchmarks/store_outage.py --fault blackhole

clean:
	rm -rf $(DEMO_DIR) build dist *.egg-info .pytest_cache .ruff_cache
