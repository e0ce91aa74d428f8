# The whole set-up on a fresh machine with Python 3.11: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/*.proto)
GEN    := gateway/_proto/__init__.py

.PHONY: install proto manifests demo test lint bench clean debs compose mlserver

install: $(STAMP)

# xds-protos ships an older copy of OpenTelemetry's protos at the same import path as
# opentelemetry-proto (whichever installs last owns the files); the pods' OTLP exporter needs
# opentelemetry-proto's own, and Envoy's messages read either. So it is installed again, last.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

# MLServer's own virtualenv (requirements/mlserver.txt says why it is not beside ours): the
# pods of MLServer ServingRuntimes start it (gateway/pod/mlserver), the tests and benchmarks too.
MLSERVER_VENV := .venv-mlserver
mlserver: $(MLSERVER_VENV)/.installed

$(MLSERVER_VENV)/.installed: requirements/mlserver.txt $(STAMP)
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/pip install --quiet -r requirements/mlserver.txt \
	  "scikit-learn==$$($(BIN)/python -c 'import sklearn; print(sklearn.__version__)')"
	touch $@

$(GEN): $(PROTOS) gateway/tools/codegen.py $(STAMP)
	$(BIN)/python -m gateway.tools.codegen

proto: $(GEN)

# istio/envoyfilters.yaml and docker/envoy.yaml, from envoy/envoy.yaml and proto/ (committed; tests/deploy checks them).
manifests: $(STAMP)
	$(BIN)/python -m gateway.tools.manifests

demo: proto
	$(BIN)/mmgw demo

# Debian packages the tests run: curl (the seed's request), etcd (the shared-store tests
# start their own on loopback), and chromium with its WebDriver (the placement page's test
# drives a real headless browser). Installed when missing, as `make bench` installs h2load.
debs:
	@command -v etcd >/dev/null && command -v curl >/dev/null && command -v chromium >/dev/null \
	  && command -v chromedriver >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server curl chromium chromium-driver; }
	@command -v etcd >/dev/null || { echo "etcd could not be installed (Debian package etcd-server): the tests need it" >&2; exit 1; }

test: proto debs mlserver
	$(BIN)/pytest -q

# The gate CI runs before the tests: lint and format (ruff), types (mypy, strict on
# gateway/core), and the import contracts in pyproject.toml (lint-imports).
lint: proto
	$(BIN)/ruff check gateway tests benchmarks examples
	$(BIN)/ruff format --check gateway tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every benchmark, one after another; gateway_overhead needs h2load (Debian's nghttp2-client).
bench: proto mlserver
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
	$(BIN)/python -m benchmarks.gateway_overhead
	@echo; $(BIN)/python -m benchmarks.cache_quality
	@echo; $(BIN)/python -m benchmarks.scale
	@echo; $(BIN)/python -m benchmarks.traffic_split
	@echo; $(BIN)/python -m benchmarks.mlserver_runtime
	@echo; $(BIN)/python -m benchmarks.llm_serving
	@echo; $(BIN)/python -m benchmarks.cold_start
	@echo; $(BIN)/python -m benchmarks.load_queue
	@command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server; }
	@echo; $(BIN)/python -m benchmarks.etcd_store

# docker compose reads .env: the management API's bearer token, made once (kept if it exists)
# so that the first `docker compose up` works and the API is never open without one.
.env:
	@umask 077 && printf 'MMGW_API_TOKEN=%s\n' "$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(16))')" > $@
	@echo "wrote $@ with a new MMGW_API_TOKEN (mmgw reads it as MMGW_TOKEN: see the README)"

compose: .env
	docker compose up --build

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) gateway/_proto envoy/kserve_v2.pb .mmgw
