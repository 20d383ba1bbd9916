# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ASSETS := assets/demo

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(ASSETS)/.complete: | $(VENV)/.installed
	$(PY) -m grpo_demo --out $(ASSETS)

demo: $(VENV)/.installed $(ASSETS)/.complete
	$(PY) -m grpo_lightning fit --config configs/demo.yaml

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(ASSETS) lightning_logs
