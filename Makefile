# The two commands a newcomer types: `make demo` and `make test`.
# Both create .venv at the repo root and install interp into it first.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# CPU machines get the CPU build of torch 2.13.0 (pip finds it without pulling
# CUDA wheels where a local copy exists; elsewhere set TORCH_INDEX to the CPU
# index of your choice). Machines with CUDA get pip's default (GPU) build.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_MODEL  ?= qwen2.5-coder-1.5b-instruct
DEMO_OUT    ?= reports/demo
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing pip's default torch build"; \
		$(PY) -m pip install -q "torch>=2.4"; \
	else \
		echo "no CUDA: installing the CPU build $(TORCH_SPEC)"; \
		$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: setup
	$(VENV)/bin/interp demo $(DEMO_MODEL) --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
