# Set-up and entry points. `make demo` trains R2VPO on CartPole-v1; `make test` runs the checks (.ci/run).
# Both create .venv on first use. PyTorch comes first: on a machine without an NVIDIA GPU (no nvidia-smi) a CPU
# build from PyTorch's CPU index (on Linux, PyPI's torch is the CUDA build: ~20 CUDA packages, several GB); where
# that index cannot be reached, pip gives up within seconds (--timeout/--retries) and the default index is used.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= tests,mujoco,box2d,atari,benchmark,zoo,optuna,tensorboard,ray
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# How long pip may wait for the CPU index: per connection attempt (s), and the retries after the first.
TORCH_CPU_INDEX_TIMEOUT ?= 10
TORCH_CPU_INDEX_RETRIES ?= 1

.PHONY: install torch demo test lint check-extras

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(MAKE) --no-print-directory torch
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# PyTorch alone, CPU build first where there is no GPU (see the top of this file).
torch:
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "nvidia-smi found: $(TORCH) from the default index (a CUDA build)"; \
		$(PY) -m pip install -q "$(TORCH)"; \
	elif $(PY) -m pip install -q --timeout $(TORCH_CPU_INDEX_TIMEOUT) --retries $(TORCH_CPU_INDEX_RETRIES) \
			"$(TORCH)" --index-url $(TORCH_CPU_INDEX); then \
		echo "no GPU: torch $$($(PY) -c 'from importlib.metadata import version; print(version("torch"))')" \
			"(asked from the CPU index, or pip's own configured sources where it cannot be reached; +cpu: the CPU build)"; \
	else \
		echo "no GPU, and $(TORCH_CPU_INDEX) cannot be reached: $(TORCH) from the default index" \
			"(on Linux PyPI's build is the CUDA one; it runs on a CPU too)"; \
		$(PY) -m pip install -q "$(TORCH)"; \
	fi

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sb3_r2vpo.train

lint: $(STAMP)
	$(PY) -m ruff check .

# Each extra alone, in a fresh venv, from one built wheel, runs its own entry point (.ci/check_extras.sh).
check-extras: $(STAMP)
	PYTHON=$(PYTHON) BUILD_PYTHON=$(PY) .ci/check_extras.sh

# R2VPO_REQUIRE_EXTRAS: a test whose extra is missing fails instead of skipping (every extra is installed here).
test: lint
	R2VPO_REQUIRE_EXTRAS=1 $(PY) -m pytest
	$(MAKE) --no-print-directory check-extras

# Mutation testing of the method's modules (r2vpo/objective.py, mixin.py, r2vpo.py, replay.py) with mutmut, configured in
# pyproject.toml ([tool.mutmut]); slow (hours on 2 cores), so not part of `make test` or CI. MUTANTS narrows the run
# (make mutation MUTANTS='sb3_r2vpo.r2vpo.objective.*'), MUTATION_JOBS sets the workers. `mutmut results` lists the
# survivors, `mutmut show NAME` shows one; the working copy is mutants/.
MUTANTS ?=
MUTATION_JOBS ?= 1
.PHONY: mutation
mutation: $(STAMP)
	$(PY) -m pip install -q "mutmut>=3.8,<4"
	set -f; nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(VENV)/bin/mutmut export-cicd-stats

# A seeded random sample of the mutants of mixin.py and replay.py (thousands of mutants in all): the killed share
# with a Wilson 95% interval (dev/mutation_sample.py). MUTATION_SAMPLE mutants per module, MUTATION_SEED the sample.
MUTATION_SAMPLE ?= 30
MUTATION_SEED ?= 0
# Earlier samples to leave out (SEED:PER_MODULE ...), so that a new seed is a fresh estimate.
MUTATION_EXCLUDE ?=
.PHONY: mutation-sample
mutation-sample: $(STAMP)
	$(PY) -m pip install -q "mutmut>=3.8,<4"
	nice -n 10 $(PY) dev/mutation_sample.py --modules mixin replay --per-module $(MUTATION_SAMPLE) \
		--seed $(MUTATION_SEED) --jobs $(MUTATION_JOBS) --exclude $(MUTATION_EXCLUDE)
