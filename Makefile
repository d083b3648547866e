# The two commands of the README are `make demo` and `make test`; the rest are their parts.
# Everything Python goes into a virtualenv in .venv (PEP 668 systems refuse system-wide pip).
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
# Tools installed into the virtualenv (ruff, mypy, ansible-lint, hadolint, ...) come first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Debian packages the lab, the end-to-end tests and the browser/metrics tests use.
APT_PACKAGES = iproute2 nftables openssl nmap prometheus prometheus-blackbox-exporter chromium \
  procps systemd python3-venv iperf3

.PHONY: setup setup-dev system-deps demo test lint typecheck unit bench clean

$(PY):
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip

# Runtime: the project, editable (what the demo needs).
setup: $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .

# Development: the project with its test and lint tools.
setup-dev: $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# System side (root only): what the lab and the tests need from Debian.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root: skipping Debian packages ($(APT_PACKAGES))"; fi

# The main job: a whole HDM site in network namespaces behind an nftables firewall, audited.
demo: system-deps setup
	$(PY) -m deploy.lab demo

# Lint the Python files git tracks (that still exist), never scratch files left in the tree.
PY_FILES = $(shell git ls-files '*.py' 2>/dev/null | while read -r f; do [ -e "$$f" ] && echo "$$f"; done)

# The guest agent's archive (deploy/zipapp/build.py --guest): what vermin checks for 3.6.
GUEST_FILES = agent/guest netcheck/__init__.py agent/__init__.py

lint: setup-dev
	@echo "ruff check + format --check: $(words $(PY_FILES)) files git tracks"
	@ruff check $(PY_FILES)
	@ruff format --check $(PY_FILES)
	@echo "vermin: the guest agent (agent/guest, one file on the guests) runs on Python 3.6+"
	@vermin -t=3.6- --violations --no-tips --eval-annotations -q $(GUEST_FILES)

typecheck: setup-dev
	mypy

unit: setup-dev
	$(PY) -m pytest

test: system-deps setup-dev lint typecheck unit

bench: system-deps setup-dev
	$(PY) -m bench

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache out $(VENV)
