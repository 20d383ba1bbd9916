"""The reference sync under the recipe's strategy, DeepSpeed ZeRO-2 with CPU offload, on 2 CPU processes
(``tests/deepspeed_ref_sync.py``): each process mixes its policy into its reference at the sync steps only, and the
processes' references stay equal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo_demo
from tests.deepspeed_ref_sync import ALPHA, STEPS, SYNC_EVERY
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_zero2_processes_mix_the_policy_into_the_reference_at_the_sync_steps(assets, data_kwargs, tmp_path):
    args = [sys.executable, "-m", "tests.deepspeed_ref_sync", "--out", str(tmp_path)]
    args += ["--model", str(grpo_demo.internvl_path(assets))]
    args += ["--train-file", data_kwargs["train_file"], "--train-image-dir", data_kwargs["train_image_dir"]]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    if sys.prefix != sys.base_prefix:  # DeepSpeed's compiled extensions, as tests/test_deepspeed.py keeps them
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]

    def load(what: str, rank: int, step: int) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / f"{what}.rank{rank}.step{step}.pt", weights_only=True)

    for rank in (0, 1):
        expected = {name: value.double() for name, value in load("reference", rank, 0).items()}
        for step in range(1, STEPS + 1):
            policy = load("policy", rank, step)
            if step % SYNC_EVERY == 0:
                expected = {name: ALPHA * policy[name].double() + (1 - ALPHA) * expected[name] for name in expected}
            reference = load("reference", rank, step)
            for name, value in reference.items():
                torch.testing.assert_close(value.double(), expected[name], rtol=1e-6, atol=1e-7, msg=name)
        moved = sum(
            float((load("reference", rank, STEPS)[n] - load("reference", rank, 0)[n]).abs().sum()) for n in expected
        )
        assert moved > 0
    for step in range(STEPS + 1):
        zero, one = load("reference", 0, step), load("reference", 1, step)
        assert all(torch.equal(zero[name], one[name]) for name in zero)
