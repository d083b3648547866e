# The two commands of the README are `make demo` and `make test`; the rest are their parts.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Debian packages the lab, the end-to-end tests and the browser/metrics tests use.
APT_PACKAGES = iproute2 nftables openssl nmap prometheus prometheus-blackbox-exporter chromium procps systemd

.PHONY: setup system-deps demo test lint typecheck unit bench clean

# Python side: the project with its dev extras, editable.
setup:
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'

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
	$(PYTHON) -m deploy.lab demo

lint:
	ruff check .
	ruff format --check .

typecheck:
	mypy

unit:
	$(PYTHON) -m pytest

test: lint typecheck unit

bench: system-deps setup
	$(PYTHON) -m bench

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache out
