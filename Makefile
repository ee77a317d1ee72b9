# Two entry points: `make lab` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: lab test test-fast bench install clean

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
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] \
	  || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will be skipped"
	touch $@

install: $(VENV)/.lab

lab: $(VENV)/.lab
	$(PY) -m jupyter lab notebooks/01-quickstart.ipynb

test: $(VENV)/.test
	$(PY) -m pytest -q

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow and not browser"

bench: $(VENV)/.test
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
