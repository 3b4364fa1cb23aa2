# The two commands a new user needs: `make serve` (MCP server on the embedded defaults) and
# `make test` (the whole suite). Both install what they need from the pinned lock file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed

.PHONY: serve test lint install system-deps bench bench-e2e corpus clean

serve: $(STAMP)
	$(VENV)/bin/inkmcp serve

# -ra lists every skip with its reason. INKMCP_REQUIRE_ALL=1 (set by .ci/run) turns the skips for a missing
# component into failures; fast subset: make test PYTEST_ARGS='-m "not slow"' (tests/conftest.py).
# Three workers (pytest-xdist), each running whole test files, so most of the suite's waiting (builds, health checks,
# daemons) overlaps; then the tests that keep time against their own clocks, alone (scripts/pytest-parts.sh).
# PYTEST_WORKERS=0 runs everything in one process. Three are ~4 minutes faster than two on CI's 2 cores (CI run 57:
# parallel part 22 min 56 s against 27 min 8 s): the suite mostly waits.
export PYTEST_WORKERS ?= 3
test: $(STAMP)
	@if [ "$$(id -u)" -eq 0 ]; then bash scripts/test-system-deps.sh && bash scripts/test-docker.sh && bash scripts/test-docker-trixie.sh; fi
	$(VENV)/bin/ruff check .
	bash scripts/pytest-parts.sh $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every speed figure beside its same-run baseline (nginx, bare start, virtualenv + pip) as ratios; then the
# end-to-end MCP figures (deploy to first 200, redeploy, wake) on a real `inkmcp serve`.
bench: $(STAMP)
	@bash scripts/bench-deps.sh
	$(VENV)/bin/python benchmarks/summary.py
	$(VENV)/bin/python benchmarks/run_all.py

bench-e2e: $(STAMP)
	$(VENV)/bin/python benchmarks/run_all.py

# issue 9's corpus: every app in tests/corpus/apps.toml (needs the bundles: see that file's header), ~14 min
corpus: $(STAMP)
	$(VENV)/bin/python benchmarks/corpus.py

install: $(STAMP)

# Debian packages tenant builds and tests rely on (git, a venv-capable system Python, Node/npm).
system-deps:
	@bash scripts/system-deps.sh

# The install runs once (again only when the lock file, pyproject.toml or the wrapper's source change). It takes
# a minute or two the first time, so each step says what it does and uv shows its own progress (bars on a
# terminal; resolved/prepared/installed counts otherwise); a run with nothing to install prints nothing of it.
$(STAMP): requirements.lock pyproject.toml scripts/system-deps.sh inkmcp/providers/compute/local/inkspawn.c \
  inkmcp/providers/compute/local/nginx_module/ngx_http_inkmcp_module.c
	@echo "==> installing InkMCP into $(VENV) (first run or changed dependencies: a minute or two; later runs skip this)"
	@bash scripts/system-deps.sh
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(VENV)/bin/python || { echo "==> creating $(VENV)"; $(PY) -m venv $(VENV); }
	@# --- proxy6: InkMCP's nginx module, compiled for the installed nginx from the nginx-dev source of its exact
	@# version (nginx_module/build.py, standard library only): 20-35 s, mostly nginx's configure, so it runs beside
	@# the Python packages' install and its outcome is printed at the end. Without it the proxy runs the same rules
	@# as headers-more directives (and says so at start): a failed build does not fail the install, but
	@# tests/local/test_nginx_module.py fails CI (component nginx_module).
	@if [ "$$(id -u)" -eq 0 ]; then rm -f $(VENV)/nginx-module.rc; \
	  { $(PY) inkmcp/providers/compute/local/nginx_module/build.py >$(VENV)/nginx-module.log 2>&1; \
	    echo $$? >$(VENV)/nginx-module.rc; } </dev/null & fi
	@# --- end
	@echo "==> installing uv $(UV_VERSION) (the installer) into $(VENV)"
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	@echo "==> installing the Python packages pinned in requirements.lock (the long step)"
	@$(VENV)/bin/uv pip install --compile-bytecode --python $(VENV)/bin/python -r requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --no-deps -e .
	@# bytecode now, once: where PYTHONDONTWRITEBYTECODE is set (CI images, this dev box) every `inkmcp` process,
	@# replica and test subprocess would otherwise compile each module it imports again (measured: 9.2 s -> 2.8 s
	@# to import the server under load)
	@echo "==> compiling InkMCP's own modules"
	@PYTHONDONTWRITEBYTECODE= $(VENV)/bin/python -m compileall -q -j 0 inkmcp tests benchmarks >/dev/null
	@# the local provider's exec wrapper (static C); used only as root, where it confines tenant processes
	@if [ "$$(id -u)" -eq 0 ]; then echo "==> building the local provider's exec wrapper"; \
	  $(VENV)/bin/python -m inkmcp.providers.compute.local.wrapper_build; fi
	@# --- proxy6: the nginx module's build, started above
	@if [ "$$(id -u)" -eq 0 ]; then echo "==> InkMCP's nginx module for the installed nginx"; \
	  for _ in $$(seq 1200); do [ -s $(VENV)/nginx-module.rc ] && break; sleep 0.5; done; \
	  cat $(VENV)/nginx-module.log; [ "$$(cat $(VENV)/nginx-module.rc 2>/dev/null)" = 0 ] \
	  || echo "(the proxy runs its headers-more config instead: same answers, ~1,500 instructions a request more)"; fi
	@# --- end
	@touch $(STAMP)
	@echo "==> installed"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
