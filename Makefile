# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# The torch to install when .venv has none (a torch already installed there is kept).
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Without a screen, run napari under a virtual one.
ifeq ($(DISPLAY),)
ifneq ($(shell command -v xvfb-run 2>/dev/null),)
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"
endif
endif

.PHONY: install demo demo-headless test test-slow bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[testing]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
ifeq ($(DISPLAY),)
	@echo "No screen (DISPLAY is unset): the headless demo. For napari on a virtual screen: xvfb-run -a make demo"
	$(VENV)/bin/napari-wsl-al demo --headless
else
	$(VENV)/bin/napari-wsl-al demo
endif

demo-headless: $(STAMP)
	$(VENV)/bin/napari-wsl-al demo --headless

test: $(STAMP)
	$(XVFB) $(PY) -m pytest

test-slow: $(STAMP)
	$(XVFB) $(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_io.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
