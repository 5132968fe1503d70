# Deploying to a server needs only Python 3.10+ and OpenSSH (macOS, any Linux, WSL):
#   make venv           .venv with the watchme CLI and the pinned pyinfra; no apt, no root
# The local test host and the tests also need Docker, debootstrap and root (see README.md);
# on Debian/Ubuntu these two install them with apt:
#   make deploy-local   start a local test host and deploy to it
#   make test           every test, unit and end-to-end (.ci/run runs exactly this)

VENV   ?= .venv
EDITABLE := --config-settings editable_mode=compat
PYTHON ?= python3
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# shellcheck: actionlint checks the workflows' run: scripts with it when it is installed.
APT_PKGS  := python3 python3-venv docker.io debootstrap openssh-client tar shellcheck
# What the test host and the tests need on a machine without apt (the commands).
HOST_CMDS := docker debootstrap ssh ssh-keygen tar
# deploy-local deploys to the local test host only: every WATCHME_* setting of the caller
# (WATCHME_HOSTS above all) is removed from its environment, and pyinfra is limited to
# the `testhost` group.
LOCAL_ENV := env $(foreach v,$(filter WATCHME_%,$(.VARIABLES)),-u $(v)) \
             WATCHME_TESTHOST=$(CURDIR)/.testhost/current.json

# mermaid's own parser for tests/test_docs.py (the README's diagram), once per machine; only
# where npm exists (the test is skipped elsewhere).
MERMAID_DIR ?= $(or $(WATCHME_MERMAID_DIR),$(HOME)/.cache/watchme/mermaid)
MERMAID_PKGS := mermaid@11.17.2 jsdom@29.1.1

.PHONY: deploy-local test deps venv test-venv image bench clean mermaid

# Debian/Ubuntu: install what is missing with apt. Elsewhere: check, and say what to install.
deps:
	@if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then \
	  missing=""; for p in $(APT_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  fi; \
	else \
	  missing=""; for c in $(HOST_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "make deploy-local / make test need:$$missing (and root or sudo, a running Docker engine)."; \
	    echo "This machine has no apt: install them yourself, or run these targets in a Debian/Ubuntu VM."; \
	    echo "Deploying to a server needs none of them: make venv, then .venv/bin/watchme deploy."; \
	    exit 1; \
	  fi; \
	fi

# Python 3.10+ only: no apt, no root, no Docker (the laptop path).
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else \
	  "make venv needs Python 3.10+, $(PYTHON) is " + sys.version.split()[0] + \
	  "; fix: make venv PYTHON=python3.12 (or any 3.10+)")'
	@$(PYTHON) -m venv $(VENV) || { echo "make venv: $(PYTHON) -m venv failed; fix: on \
	Debian/Ubuntu install python3-venv (sudo apt-get install python3-venv)"; exit 1; }
	@# compat: the checkout as a plain path entry. The default editable finder imports
	@# pathlib and more at every start of Python (~10 ms of each `watchme deploy`).
	$(PY) -m pip install -q -e . $(EDITABLE)
	@# bytecode now: an environment with PYTHONDONTWRITEBYTECODE set (CI's, some shells')
	@# would otherwise compile the checkout on every `watchme deploy` (~20 ms of a no-op)
	$(PY) -m compileall -q watchme
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]' $(EDITABLE)
	touch $@

venv: $(VENV)/.installed

test-venv: deps $(VENV)/.installed-test

image: test-venv
	$(PY) -m watchme.testhost build

deploy-local: image
	$(PY) -m watchme.testhost start --local >/dev/null
	$(LOCAL_ENV) $(VENV)/bin/watchme deploy -y --limit testhost
	@echo; echo "Test host ready. Reach it with:"; echo "  $$($(PY) -m watchme.testhost ssh)"

mermaid:
	@if command -v npm >/dev/null 2>&1 && [ ! -d $(MERMAID_DIR)/node_modules/mermaid ]; then \
	  npm install --prefix $(MERMAID_DIR) --no-audit --no-fund $(MERMAID_PKGS) >/dev/null; \
	fi

test: image mermaid
	$(PY) -m pytest

bench: image
	$(PY) bench/noop_deploy.py

clean:
	-$(PY) -m watchme.testhost stop watchme-local
	rm -rf .testhost
