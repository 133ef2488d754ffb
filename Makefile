# sessiond developer entry points. Every target bootstraps what it needs on first use:
#   make serve   run the server (127.0.0.1:50051)
#   make test    lint, typecheck, proto lint, Dockerfile lint, stale-stub check, API docs, then pytest
#   make test-py the same without Node.js (no buf lint, no Node interop test)
# Needs only python3 (3.11+), make and node/npm; the venv and node_modules are created here. The
# cluster tests also need etcd (Debian's etcd-server/etcd-client), installed by `make deps-etcd` when root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

# Stamps: the venv re-installs when either pyproject.toml changes, node_modules when the lockfile does.
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

PIP_FLAGS := --quiet --disable-pip-version-check --progress-bar off
PYTEST_FLAGS ?= -q -p no:cacheprovider

# The steps of `make test` must run in the order listed, even under `make -j`.
.NOTPARALLEL:

.PHONY: help bootstrap .venv node_modules require-node deps-browser deps-etcd test test-py test-cluster lint lint-py \
        lint-proto lint-docker typecheck gen gen-check docs dist serve demo demo-gpu demo-cluster bench fuzz clean \
        distclean

help:
	@echo "make serve      run sessiond on 127.0.0.1:50051 (bootstraps .venv on first use)"
	@echo "make test       ruff, mypy, buf lint, hadolint, stale-stub check, mkdocs --strict, pytest"
	@echo "make test-py    the same without Node.js (skips buf lint and the Node interop test)"
	@echo "make docs       build the API reference (mkdocs-material + mkdocstrings) into build/site"
	@echo "make dist       build the sessiond and sessiond-client wheels into dist/"
	@echo "make lint       ruff + buf lint + hadolint"
	@echo "make typecheck  mypy --strict over sessiond and sessiond_client"
	@echo "make test-cluster  only the cluster tier (tests/cluster: real etcd members)"
	@echo "make demo-cluster  3 sessiond replicas on etcd: kill the one owning a worker, the session goes on"
	@echo "make deps-etcd  install etcd for the cluster tests (apt, as root) or say what to install"
	@echo "make gen        regenerate the gRPC stubs from protos/ (scripts/gen_protos.py)"
	@echo "make demo       run the examples/ file-processing demo"
	@echo "make demo-gpu   run the examples/ GPU demo (workers with 2 and 1 gpu; sessions ask for some)"
	@echo "make bench      run the benchmark"
	@echo "make fuzz       10,000 hostile wire requests against a real server (make test runs a few hundred)"
	@echo "make clean      remove caches and build output (keeps .venv and node_modules)"
	@echo "make distclean  clean, and also remove .venv and node_modules"

# ---- bootstrap -------------------------------------------------------------------------------

bootstrap: .venv node_modules

.venv: $(PY_STAMP)

node_modules: $(NODE_STAMP)

# A half-made venv (e.g. ensurepip missing) is removed so the next run starts over.
$(PY):
	@echo "==> creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# One pip call, so the local sessiond-client satisfies the root's `sessiond-client==` requirement.
$(PY_STAMP): pyproject.toml clients/python/pyproject.toml | $(PY)
	@echo "==> installing sessiond, sessiond-client and dev tools into $(VENV)"
	@$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	@$(PY) -m pip install $(PIP_FLAGS) -e clients/python -e ".[dev]"
	@touch $@

require-node:
	@sh scripts/require-node.sh

# npm ci wipes node_modules first, so the stamp inside it is recreated each time.
$(NODE_STAMP): package.json package-lock.json
	@sh scripts/require-node.sh
	@echo "==> installing node tooling (npm ci)"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's chromium + chromium-driver for the dashboard's browser test: installed with apt-get when
# missing and root, else one line says what to install (and, under CI=true, the run fails).
# Checked on every run (it costs a `command -v`), so a browser removed later is noticed.
deps-browser:
	@bash scripts/ensure_browser.sh

# etcd for the cluster tier (tests/cluster), the same way: Debian's etcd-server (3.4.23 on Debian 12;
# production wants 3.5.10+, see README) and etcd-client (etcdctl, used by the auth test).
deps-etcd:
	@bash scripts/ensure_debian_packages.sh "the cluster tests" "command -v etcd && command -v etcdctl" \
	    etcd-server etcd-client

# ---- checks ----------------------------------------------------------------------------------

# grpc core logs INFO lines (e.g. GOAWAY on shutdown) at its default verbosity; keep test output clean.
PY_CHECKS := lint-py typecheck lint-docker gen-check docs

# Node first: without it, the one line that says what to install comes before anything else runs.
test: export GRPC_VERBOSITY ?= ERROR
test: require-node $(PY_CHECKS) lint-proto deps-browser deps-etcd
	$(PY) -m pytest $(PYTEST_FLAGS) tests

# The Python-only subset: every check and test except buf lint and the Node interop test.
test-py: export GRPC_VERBOSITY ?= ERROR
test-py: $(PY_CHECKS) deps-browser deps-etcd
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not node" tests

test-cluster: export GRPC_VERBOSITY ?= ERROR
test-cluster: deps-etcd $(PY_STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) tests/cluster

lint: lint-py lint-proto lint-docker

lint-py: $(PY_STAMP)
	$(BIN)/ruff check --quiet .

lint-proto: $(NODE_STAMP)
	node_modules/.bin/buf lint

lint-docker: $(PY_STAMP)
	$(BIN)/hadolint Dockerfile

typecheck: $(PY_STAMP)
	$(BIN)/mypy sessiond clients/python/src/sessiond_client

gen-check: $(PY_STAMP)
	$(PY) scripts/gen_protos.py --check

gen: $(PY_STAMP)
	$(PY) scripts/gen_protos.py

# The API reference; --strict turns every broken reference or docstring warning into a failure.
docs: $(PY_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

# Both wheels; install the server with `pip install --find-links dist sessiond`.
dist: $(PY_STAMP)
	rm -rf dist build clients/python/build
	$(PY) -m pip wheel $(PIP_FLAGS) --no-deps --wheel-dir dist clients/python .
	rm -rf build clients/python/build

# ---- run -------------------------------------------------------------------------------------

serve: $(PY_STAMP)
	$(BIN)/sessiond serve

demo: $(PY_STAMP)
	$(PY) -m examples.fileprocessing

# Three replicas on a 3-member etcd; the replica owning a running session's worker is killed.
demo-cluster: export GRPC_VERBOSITY ?= ERROR
demo-cluster: deps-etcd $(PY_STAMP)
	$(PY) -m examples.replicas

demo-gpu: $(PY_STAMP)
	$(PY) -m examples.gpu

bench: $(PY_STAMP)
	$(PY) -m bench

# The fuzz tier at full size (tests/fuzz/test_wire_fuzz.py); FUZZ_SEED picks other cases.
FUZZ_CASES ?= 10000
FUZZ_SEED ?= 7
fuzz: export GRPC_VERBOSITY ?= ERROR
fuzz: $(PY_STAMP)
	SESSIOND_FUZZ_CASES=$(FUZZ_CASES) SESSIOND_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest $(PYTEST_FLAGS) -s tests/fuzz

# ---- housekeeping ----------------------------------------------------------------------------

clean:
	rm -rf build dist clients/python/build .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o \
	    \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) node_modules

# ---- benchmark smoke (CI) --------------------------------------------------------------------

.PHONY: bench-smoke

# `make bench` is the full run (about 20 min: bench/results.json + bench/RESULTS.md);
# this one runs every scenario at tiny sizes in well under a minute (output in bench/out/smoke/).
bench-smoke: export GRPC_VERBOSITY ?= ERROR
bench-smoke: $(PY_STAMP)
	$(PY) -m bench --smoke
