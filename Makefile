# Two commands do everything on a fresh Debian machine (see README.md):
#   make deploy-local   start a local test host and deploy to it
#   make test           every test, unit and end-to-end (.ci/run runs exactly this)

VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# shellcheck: actionlint checks the workflows' run: scripts with it when it is installed.
APT_PKGS := python3 python3-venv docker.io debootstrap openssh-client tar shellcheck

.PHONY: deploy-local test deps venv image bench clean

deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: deps $(VENV)/.installed

image: venv
	$(PY) -m watchme.testhost build

deploy-local: image
	$(PY) -m watchme.testhost start --local >/dev/null
	$(VENV)/bin/watchme deploy -y
	@echo; echo "Test host ready. Reach it with:"; echo "  $$($(PY) -m watchme.testhost ssh)"

test: image
	$(PY) -m pytest

bench: image
	$(PY) bench/noop_deploy.py

clean:
	-$(PY) -m watchme.testhost stop watchme-local
	rm -rf .testhost
