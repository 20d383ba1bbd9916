# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ASSETS := assets/demo
# The vLLM rollout engine's own environment (model.rollout_engine: vllm); the suite tests the engine in it.
VLLM_VENV := .venv-vllm

.PHONY: demo test lint clean vllm-env

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(VLLM_VENV)/.installed: scripts/vllm_env.sh
	PYTHON=$(PYTHON) bash scripts/vllm_env.sh $(VLLM_VENV)

vllm-env: $(VLLM_VENV)/.installed

# rebuilt when the demo's code changes (its models' shapes, say)
$(ASSETS)/.complete: $(wildcard grpo_demo/*.py) | $(VENV)/.installed
	$(PY) -m grpo_demo --out $(ASSETS) --force

demo: $(VENV)/.installed $(ASSETS)/.complete
	$(PY) -m grpo_lightning fit --config configs/demo.yaml

test: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(ASSETS) lightning_logs
