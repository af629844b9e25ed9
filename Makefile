# `make test` is the README's test command; `make demo` its main job. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_DEPS := $(VENV)/.test-dependencies

# The package and what the demo needs.
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .
	touch $(PY)

# What only the tests need, on top.
$(TEST_DEPS): $(PY)
	# the triton extra lets the tests run the Triton scan's kernels on CPU (its interpreter); bench brings
	# matplotlib for the benchmark plots' test
	$(PY) -m pip install -e ".[test,triton,bench]"
	# mamba-ssm and causal-conv1d from their sdists without the CUDA build, for their Python interfaces
	# and references: tests/test_cuda_path_contract.py runs our CUDA path's calls through them on CPU.
	# FORCE_BUILD skips setup.py's download of a prebuilt wheel from outside the registry; --no-deps
	# and --no-build-isolation keep pip from pulling their GPU-only dependencies and a CUDA torch.
	$(PY) -m pip install setuptools wheel packaging
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
		$(PY) -m pip install --no-deps --no-build-isolation mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
	touch $(TEST_DEPS)

# The folder benchmarks/gpu_check.py installs from on a GPU machine without internet (see
# benchmarks/README.md): the two kernel packages' sdists (built there for its GPU) and PyAV for
# Python 3.12 (the one package the tests need that the lent H200 image lacks). About 35 MB.
gpu-packages: $(PY)
	mkdir -p gpu_packages
	MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE $(PY) -m pip download --no-deps --no-binary :all: \
		--no-build-isolation -d gpu_packages mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
	$(PY) -m pip download --no-deps --only-binary :all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d gpu_packages "av>=12"

.PHONY: setup test demo gpu-packages
setup: $(TEST_DEPS)

test: $(TEST_DEPS)
	$(PY) -m pytest -q

# Passive OpenMP waiting keeps training fast when other processes share the cores (spinning threads
# slowed CPU steps several-fold under contention in our measurements).
demo: $(PY)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m modeling_videomamba.demo
