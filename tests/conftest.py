"""Shared fixtures: the offline demo assets, built once per test run. Nothing here touches the network.

What the test files share besides fixtures is in ``tests/helpers.py``."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# the shared builders' assertions report their values as the test files' own do
pytest.register_assert_rewrite("tests.helpers")

import grpo_demo  # noqa: E402
from tests.helpers import ENGINE_PYTHON, QWEN2_5_VL_SUBDIR  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls run far slower with 2 OpenMP threads on a loaded 2-core box; one thread, then restore.

    Use in a test module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """Tiny InternVL (random, and after the format-only cold start) and Qwen2-VL checkpoints and a synthetic ViVQA-X
    dataset: the `make demo` assets."""
    root = tmp_path_factory.mktemp("demo-assets")
    grpo_demo.build_demo_assets(root, seed=0, num_train=64, num_val=16)
    # not part of the demo: the third supported family, for the tests that run every family
    grpo_demo.build_tiny_qwen2vl(root / QWEN2_5_VL_SUBDIR, seed=0, family="qwen2_5_vl")
    return root


@pytest.fixture(scope="session")
def data_kwargs(assets) -> dict[str, str]:
    """ViVQAXDataModule paths for the synthetic dataset."""
    return {
        "train_file": str(grpo_demo.split_json_path(assets, "train")),
        "val_file": str(grpo_demo.split_json_path(assets, "val")),
        "train_image_dir": str(grpo_demo.image_dir(assets, "train")),
        "val_image_dir": str(grpo_demo.image_dir(assets, "val")),
    }


@pytest.fixture(scope="module")
def engine_python() -> Path:
    """The vLLM engine environment's python; without it a test is skipped, or fails under CI (whose ``make test``
    creates it)."""
    if not ENGINE_PYTHON.is_file():
        message = f"no vLLM engine environment at {ENGINE_PYTHON.parent.parent}: run `make vllm-env`"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI's `make test` creates it)")
        pytest.skip(message)
    return ENGINE_PYTHON
