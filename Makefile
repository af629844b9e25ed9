# `make test` is the README's test command; `make demo` its main job. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	# the triton extra lets the tests run the Triton scan's kernels on CPU (its interpreter)
	$(PY) -m pip install -e ".[test,triton]"
	touch $(PY)

.PHONY: setup test demo
setup: $(PY)

test: $(PY)
	$(PY) -m pytest -q

# Passive OpenMP waiting keeps training fast when other processes share the cores (spinning threads
# slowed CPU steps several-fold under contention in our measurements).
demo: $(PY)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m modeling_videomamba.demo
