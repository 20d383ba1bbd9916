# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ASSETS := assets/demo
# The vLLM rollout engine's own environment (model.rollout_engine: vllm); the suite tests the engine in it.
VLLM_VENV := .venv-vllm

.PHONY: demo test lint clean vllm-env screenshots

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

# The files whose results depend on the order floating-point sums run in run a second time on the CPU's plainest
# kernels (no AVX2 or AVX-512) and one thread, so that the suite holds on a CPU with other vector units or cores.
# Left out of that pass: the bf16 attention tests. PyTorch's bf16 CPU attention picks its kernel by the CPU's own
# features, not by ATEN_CPU_CAPABILITY, so on an AVX-512 CPU forced to the default kernels it stops with "pack_vnni2
# is only supported when avx512 is supported" (a CPU without AVX-512 takes another kernel); the first pass runs them.
NUMERIC_TESTS := tests/test_chunked_logps.py tests/test_shared_encoding.py tests/test_algorithms.py \
	tests/test_prefix_cache.py tests/test_deepspeed.py tests/test_reward_aggregation.py \
	tests/test_policy_losses.py tests/test_kl_and_advantages.py tests/test_entropy_control.py \
	tests/test_gold_supervision.py tests/test_async_rollouts.py \
	tests/test_module.py::test_advantages_under_data_parallelism_equal_one_process_over_the_global_batch

test: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(PY) -m pytest
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -p no:cacheprovider \
		-k "not bfloat16_under_autocast" $(NUMERIC_TESTS)

# The README's pictures, docs/*.png, of the newest demo run (`make demo` makes one): the rollout browser, an evaluation
# report of its last checkpoint's predictions, and TensorBoard. Needs Debian's chromium.
screenshots: $(VENV)/.installed
	$(PY) scripts/screenshots.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(ASSETS) lightning_logs
