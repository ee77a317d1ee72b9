# Two entry points: `make lab` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: lab test test-fast bench install clean chromium

# torch first, as the small CPU wheel, when the environment has none: a bare `torch`
# requirement would otherwise pull a several-GB CUDA build.
$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0 \
	  || $(PIP) torch --index-url https://download.pytorch.org/whl/cpu
	touch $@

$(VENV)/.lab: $(VENV)/.base pyproject.toml
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.lab
	$(PIP) -e ".[test]"
	touch $@

# The browser tests drive Debian's chromium (playwright cannot download a browser offline).
# Checked on every `make test`; installed with apt-get as root (or password-less sudo). Where it
# is still missing the browser tests FAIL as root, in CI or with PRUNELAB_REQUIRE_BROWSER=1 (.ci/run),
# and are skipped loudly otherwise.
CHROMIUM ?= /usr/bin/chromium
APT      := DEBIAN_FRONTEND=noninteractive apt-get
chromium:
	@[ -x "$(CHROMIUM)" ] || { \
	  if [ "$$(id -u)" = 0 ]; then $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; \
	  elif sudo -n true 2>/dev/null; then sudo $(APT) update -qq && sudo $(APT) install -y -qq chromium >/dev/null; \
	  fi; \
	  [ -x "$(CHROMIUM)" ] || echo "WARNING: $(CHROMIUM) is missing and could not be installed: browser tests will fail (root/CI/PRUNELAB_REQUIRE_BROWSER=1) or be skipped."; }

install: $(VENV)/.lab

# As root (containers), JupyterLab refuses to start without --allow-root.
lab: $(VENV)/.lab
	$(PY) -m jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/01-quickstart.ipynb

test: $(VENV)/.test chromium
	PRUNELAB_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow and not browser"

bench: $(VENV)/.test chromium
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
