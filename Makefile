# Two commands do all set-up:  `make serve` (the service)  and  `make test` (the test suite).
# Both create .venv and install what they need on first use.

VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
# The CPU build on machines without a GPU; on Linux x86_64, PyPI's torch is the CUDA build (see README).
TORCH_SPEC  ?= torch==2.13.0
SERVE_ARGS  ?=
CLUSTER_ARGS ?=
ARGS        ?= status
PYTEST_ARGS ?=

.PHONY: serve cluster cluster-ctl cluster-clean cluster-deps test test-deps install clean

$(STAMP): pyproject.toml
	@echo "==> first-time set-up in $(VENV): PyTorch, diffusers and the rest (a few minutes; progress below)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[test]"
	@# insightface's metadata also pulls opencv-python (needs libGL); keep only the headless build (README, V2)
	$(PY) -m pip uninstall -y -q opencv-python || true
	$(PY) -m pip install -q --force-reinstall --no-deps opencv-python-headless
	touch $(STAMP)
	@echo "==> set-up done"

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/photomaker serve $(SERVE_ARGS)

# Scale-out on one machine, to try and to break: PostgreSQL + S3 (from wheels), 2 API replicas behind HAProxy (one
# front address), 2 tiny workers, each its own data dir under .cluster/. CLUSTER_ARGS="--replicas 3 --workers 4".
# A process that dies is restarted; `make cluster-ctl ARGS="kill worker1"` (status, kill, stop, start, restart) from
# another terminal. Ctrl-C stops it all; the data stays until `make cluster-clean`.
cluster: $(STAMP) cluster-deps
	$(PY) tools/cluster.py $(CLUSTER_ARGS)

cluster-ctl: $(STAMP)
	$(PY) tools/cluster.py ctl $(ARGS)

cluster-clean: $(STAMP)
	$(PY) tools/cluster.py clean

# HAProxy, the cluster's load balancer (Debian's package).
cluster-deps:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  echo "installing Debian's haproxy for the cluster's front address"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }

# The official JS client (npm), a real Chromium for the browser test, curl + jq for the documented examples,
# iproute2 for the multi-host tests (network namespaces), haproxy for the cluster tests and the reverse-proxy test of
# the login link.
test-deps: $(STAMP) cluster-deps
	cd tests/clients && npm ci --no-audit --no-fund --loglevel=error
	@missing=""; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v jq >/dev/null 2>&1 || missing="$$missing jq"; \
	  command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	  command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages for the browser and docs tests:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi

test: test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	@if [ -x $(PY) ] && [ -d .cluster ]; then $(PY) tools/cluster.py clean --all; fi
	rm -rf $(VENV) tests/clients/node_modules .pytest_cache .cluster
