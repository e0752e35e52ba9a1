# Set-up and entry points. `make demo` trains R2VPO on CartPole-v1; `make test` runs the checks (.ci/run).
# Both create .venv on first use, installing a CPU build of PyTorch before anything can pull a CUDA one.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= tests,mujoco,benchmark,zoo,optuna,ray

.PHONY: install demo test lint

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" || \
		$(PY) -m pip install -q "torch>=2.3,<2.15" --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sb3_r2vpo.train

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest
