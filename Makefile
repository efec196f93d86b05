# Deskgate set-up. Two commands do everything on a fresh Debian 12 machine:
#   make run    install what is missing, initialise ./data once, serve on http://127.0.0.1:8080
#   make test   install what the tests need, then lint, type-check and run the whole suite
# Installing Debian packages needs root; everything else does not.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= data
HOST   ?= 127.0.0.1
PORT   ?= 8080

# The gateway, its local demo desktop, and the RDP bridge (FreeRDP 3's client, installed by
# freerdp3 below, inside a private Xvnc);
# PyICU (Unicode look-alike user names) is built against Debian's ICU: python3-dev g++ pkg-config libicu-dev.
RUN_PACKAGES  := python3-venv python3-dev g++ pkg-config libicu-dev tigervnc-standalone-server tigervnc-tools openbox xterm x11-utils \
                 xdotool fonts-dejavu-core
# Real parts the tests drive: a browser, clipboard tools, OCR to read text off screenshots,
# a plain TCP relay as the benchmark's baseline, real RDP servers (xrdp, FreeRDP's shadow
# server on Xvfb) with what they need, and sshd for hosts in network namespaces. Services that
# packages would start at installation (xrdp, ssh) are not started: the tests start their own.
TEST_PACKAGES := chromium xclip socat tesseract-ocr xrdp xorgxrdp freerdp2-shadow-x11 winpr-utils \
                 xvfb twm xfonts-base openssl \
                 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
                 qemu-utils busybox-static cpio libvirt-dev pkg-config \
                 openssh-server iproute2

.PHONY: run test lint typecheck pytest bench browser-deps oidc-mock system-packages test-packages freerdp3 clean

# Installing stays quiet (its full output goes to $(VENV)/install.log, shown when it fails), so
# the last thing printed before the server starts is the first admin's name and password.
run: system-packages $(VENV)/.run browser-deps
	@if [ -f $(DATA)/deskgate.toml ]; then \
	  echo; echo "Deskgate is set up in $(DATA)/ (its first admin's password was shown when it was" \
	    "created; set a new one with: $(BIN)/deskgate --config $(DATA)/deskgate.toml user passwd NAME)"; \
	else \
	  $(BIN)/deskgate init --data $(DATA) --host $(HOST) --port $(PORT) || exit 1; \
	fi
	@exec $(BIN)/deskgate --config $(DATA)/deskgate.toml serve

test: system-packages test-packages $(VENV)/.test browser-deps oidc-mock lint typecheck pytest

lint:
	$(BIN)/ruff check gateway tests bench

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest

bench: $(VENV)/.test browser-deps
	$(BIN)/python bench/relay.py

# Debian packages: installed only when missing; needs root (or run the printed apt-get line).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! command -v npm >/dev/null 2>&1; then missing="$$missing npm"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Run as root first: apt-get update && apt-get install -y --no-install-recommends$$missing"; \
	    exit 1; \
	  fi; \
	  echo "Installing Debian packages:$$missing ..."; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq -o=Dpkg::Use-Pty=0 --no-install-recommends $$missing >/dev/null \
	    || exit 1; \
	fi
endef

system-packages:
	$(call apt_install,$(RUN_PACKAGES))
	@$(MAKE) --no-print-directory freerdp3

# FreeRDP 3 (freerdp3-x11) for the RDP bridge: Debian 13 has it; Debian 12 has it in its own
# backports, which this adds as an apt source (only what is asked for comes from there).
BACKPORTS_LIST := /etc/apt/sources.list.d/deskgate-bookworm-backports.list
freerdp3:
	@if ! dpkg -s freerdp3-x11 >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Run as root first: make freerdp3 (FreeRDP 3; on Debian 12 from bookworm-backports)"; \
	    exit 1; \
	  fi; \
	  target=""; \
	  if [ "$$(. /etc/os-release && echo "$$VERSION_CODENAME")" = bookworm ]; then \
	    echo "deb http://deb.debian.org/debian bookworm-backports main" > $(BACKPORTS_LIST); \
	    target="-t bookworm-backports"; \
	  fi; \
	  echo "Installing FreeRDP 3 (freerdp3-x11) ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq -o=Dpkg::Use-Pty=0 --no-install-recommends $$target freerdp3-x11 >/dev/null \
	    || exit 1; \
	fi

test-packages:
	$(call apt_install,$(TEST_PACKAGES))

# pip -q still lets build back-ends print warnings: keep them in a log, show it on failure.
quietly = $(1) >>$(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; echo "failed: $(1)"; exit 1; }

$(VENV)/bin/python:
	@echo "Creating the Python environment in $(VENV)/ ..."
	@$(PYTHON) -m venv $(VENV)
	@$(call quietly,$(BIN)/pip install -q --disable-pip-version-check --upgrade pip)

$(VENV)/.run: pyproject.toml | $(VENV)/bin/python
	@echo "Installing Deskgate's Python packages (log: $(VENV)/install.log) ..."
	@$(call quietly,$(BIN)/pip install -q --disable-pip-version-check -e .)
	@touch $@

$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	@echo "Installing Deskgate's Python packages with the test tools (log: $(VENV)/install.log) ..."
	@$(call quietly,$(BIN)/pip install -q --disable-pip-version-check -e '.[test]')
	@touch $@ $(VENV)/.run

# The browser-side libraries (noVNC; Chart.js for the usage page) come from npm at set-up time,
# pinned by package-lock.json; they are never committed. npm ci installs everything in the lock.
browser-deps: node_modules/.deskgate-installed
node_modules/.deskgate-installed: package.json package-lock.json
	@echo "Installing noVNC and Chart.js from npm ..."
	@npm ci --no-audit --no-fund --loglevel=error --silent
	@touch $@

# The tests' OpenID Connect provider runs as its own process from its own virtualenv: it is a
# test peer, not a dependency. Its 0.4 releases need Python >= 3.12; 0.3.4 runs on 3.11.
OIDC_VENV := .venv-oidc
oidc-mock: $(OIDC_VENV)/bin/oidc-provider-mock
$(OIDC_VENV)/bin/oidc-provider-mock:
	@py=""; for c in $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3 python3.13 python3.12; do \
	  if "$$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then py=$$c; break; fi; \
	done; \
	if [ -n "$$py" ]; then \
	  "$$py" -m venv $(OIDC_VENV) && $(OIDC_VENV)/bin/pip install -q 'oidc-provider-mock>=0.4,<0.5'; \
	else \
	  $(PYTHON) -m venv $(OIDC_VENV) && $(OIDC_VENV)/bin/pip install -q 'oidc-provider-mock==0.3.4'; \
	fi

clean:
	rm -rf $(VENV) $(OIDC_VENV) node_modules
