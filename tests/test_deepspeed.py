"""The recipe's strategy, DeepSpeed ZeRO-2 with the optimizer offloaded to the CPU, against DDP on 2 CPU processes.

``configs/internvl.yaml`` trains with Lightning's DeepSpeedStrategy (stage 2, ``offload_optimizer``) and
DeepSpeedCPUAdam. Here that strategy runs on CPU processes (DeepSpeed's CPU accelerator, gloo;
:class:`tests.deepspeed_cpu.CPUDeepSpeedStrategy`) next to DDP with the same seed, data and model: the rollouts,
the gradients the optimizer applies, the clipping, the weights, the checkpoint and its export must agree. What is
under test is :mod:`grpo_lightning.accumulation` (one gradient reduction over the micro-batches of a step: each
process has 8 sequences, in micro-batches of 3, 3 and 2; ``max_grad_norm`` handed to DeepSpeed), with Lightning's
strategy and DeepSpeed's engine.

DeepSpeed compiles two C++ extensions on first use (its shared-memory collectives on CPU, and DeepSpeedCPUAdam):
1.5 to 6 minutes on 2 cores, depending on what else runs. They are built once into ``<venv>/torch_extensions``
(``$TORCH_EXTENSIONS_DIR`` when set), so later runs load them; ``make clean`` removes them with the venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo_demo
from tests.helpers import ROOT
from tests.tolerances import F32_RTOL

pytestmark = pytest.mark.slow

#: Small enough that the first step is clipped (its gradient norm is about 1.6; checked below).
MAX_GRAD_NORM = 0.5


def train(assets, data_kwargs, out: Path, strategy: str, options: list[str]) -> Path:
    """2 steps on 2 CPU processes (``python -m tests.deepspeed_cpu``); returns ``out``, where the run wrote."""
    args = [sys.executable, "-m", "tests.deepspeed_cpu", "--strategy", strategy, "--out", str(out), *options]
    args += ["--model", str(grpo_demo.internvl_path(assets))]
    args += ["--train-file", data_kwargs["train_file"], "--train-image-dir", data_kwargs["train_image_dir"]]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    if sys.prefix != sys.base_prefix:
        # DeepSpeed's C++ extensions, next to the torch and DeepSpeed they are compiled against (the default,
        # ~/.cache/torch_extensions, is shared by every virtual environment of the user)
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def rollouts(out: Path) -> list[list[dict]]:
    """Per rank, per step: the prompt ids and the completions sampled."""
    return [[json.loads(line) for line in (out / f"rollouts.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]


def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"weights.step{step}.pt", weights_only=True)


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.flatten() for value in state.values()])


def applied_gradient(out: Path, step: int, num_params: int) -> torch.Tensor:
    """The gradient the optimizer applied at ``step``: DDP's rank 0 holds all of it, ZeRO-2's ranks a part each."""
    parts = [torch.load(path, weights_only=True) for path in sorted(out.glob(f"gradients.step{step}.rank*.pt"))]
    if len(parts[0]) == num_params:  # DDP: every rank holds the whole (averaged) gradient
        torch.testing.assert_close(parts[1], parts[0], rtol=0, atol=0)
        return parts[0]
    gradient = torch.cat(parts)
    assert len(parts[0]) == len(parts[1]) and len(gradient) >= num_params, [len(part) for part in parts]
    assert not gradient[num_params:].any(), "DeepSpeed's padding after the last parameter holds no gradient"
    return gradient[:num_params]


@pytest.fixture(scope="module")
def sgd_runs(assets, data_kwargs, tmp_path_factory) -> dict[tuple[str, float | None], Path]:
    """DDP and DeepSpeed, without clipping and with ``max_grad_norm``: 2 steps of plain SGD (lr 1) each."""
    root = tmp_path_factory.mktemp("sgd")
    runs = {}
    for max_grad_norm in (None, MAX_GRAD_NORM):
        for strategy in ("ddp", "deepspeed"):
            options = ["--optimizer", "sgd", "--lr", "1.0"]
            if max_grad_norm is not None:
                options += ["--max-grad-norm", str(max_grad_norm)]
            out = root / f"{strategy}-{max_grad_norm}"
            runs[strategy, max_grad_norm] = train(assets, data_kwargs, out, strategy, options)
    return runs


@pytest.mark.parametrize("max_grad_norm", [None, MAX_GRAD_NORM], ids=["no clipping", "max_grad_norm"])
def test_zero2_offload_samples_and_applies_the_same_gradients_as_ddp(sgd_runs, max_grad_norm):
    ddp, deepspeed = sgd_runs["ddp", max_grad_norm], sgd_runs["deepspeed", max_grad_norm]
    ddp_rollouts = rollouts(ddp)
    assert [len(steps) for steps in ddp_rollouts] == [2, 2]
    for rank0, rank1 in zip(*ddp_rollouts, strict=True):
        assert len(rank0["ids"]) == len(rank1["ids"]) == 2 and not set(rank0["ids"]) & set(rank1["ids"])
        assert len(rank0["completions"]) == len(rank1["completions"]) == 8  # micro-batches of 3, 3 and 2
    # DeepSpeed's prompts and completions are DDP's, rank by rank, at both steps (the second step samples from the
    # weights after the first, so this also says that those agree)
    assert rollouts(deepspeed) == ddp_rollouts

    initial = weights(ddp, 0)
    torch.testing.assert_close(weights(deepspeed, 0), initial, rtol=0, atol=0)
    num_params = len(flat(initial))
    # Clipping scales the gradient by max_grad_norm / norm. DeepSpeed adds the parameters' squared norms in float64
    # (Python floats); torch's clip_grad_norm_ (DDP, through Lightning) in float32, which misses the norm by up to
    # ~1e-5 relative here, so the clipped gradients agree to that (DeepSpeed's clipping is checked exactly below).
    rtol = F32_RTOL if max_grad_norm is None else 2e-5
    for step in (1, 2):
        gradient = applied_gradient(ddp, step, num_params)
        assert gradient.abs().max() > 1e-3, "a step with no gradient compares nothing"
        torch.testing.assert_close(applied_gradient(deepspeed, step, num_params), gradient, rtol=rtol, atol=1e-7)
        torch.testing.assert_close(weights(deepspeed, step), weights(ddp, step), rtol=F32_RTOL, atol=1e-6)
    # SGD with lr 1: the model's weights moved by the recorded gradient (up to float32 rounding of the weights), so
    # the gradient recorded is the one applied, and DeepSpeed's updated partitions reached the model
    for run in (ddp, deepspeed):
        moved = flat(weights(run, 0)) - flat(weights(run, 1))
        torch.testing.assert_close(moved, applied_gradient(run, 1, num_params), rtol=F32_RTOL, atol=2e-7)


def test_deepspeed_clips_the_gradient_norm_to_max_grad_norm(sgd_runs):
    num_params = len(flat(weights(sgd_runs["ddp", None], 0)))
    # The first step of every run starts from the same weights and rollout: the unclipped runs give its gradient.
    unclipped = applied_gradient(sgd_runs["deepspeed", None], 1, num_params).double()
    norm = unclipped.norm()
    assert norm > 2 * MAX_GRAD_NORM, f"max_grad_norm={MAX_GRAD_NORM} must clip; the gradient norm is {norm}"
    expected = unclipped * (MAX_GRAD_NORM / (norm + 1e-6))  # clip_grad_norm_'s formula, in float64
    clipped = applied_gradient(sgd_runs["deepspeed", MAX_GRAD_NORM], 1, num_params).double()
    torch.testing.assert_close(clipped, expected, rtol=0, atol=1e-8)
    assert float(clipped.norm()) == pytest.approx(MAX_GRAD_NORM, rel=1e-6)
    # DDP's clipping, for comparison: torch's float32 norm (see above)
    ddp_clipped = applied_gradient(sgd_runs["ddp", MAX_GRAD_NORM], 1, num_params).double()
    assert float(ddp_clipped.norm()) == pytest.approx(MAX_GRAD_NORM, rel=2e-5)


def test_the_recipes_optimizer_matches_adamw_and_its_checkpoint_resumes_and_exports(assets, data_kwargs, tmp_path):
    """DeepSpeedCPUAdam, the recipe's optimizer, under ZeRO-2 offload: AdamW's weights under DDP, a checkpoint
    folder that resumes to the same run, and an export whose weights are the trained ones."""
    from transformers import AutoModelForImageTextToText

    adam = ["--lr", "1e-3", "--max-grad-norm", "1.0"]
    ddp = train(assets, data_kwargs, tmp_path / "ddp", "ddp", ["--optimizer", "adamw", *adam])
    cpu_adam = ["--optimizer", "cpu_adam", *adam]
    deepspeed = train(assets, data_kwargs, tmp_path / "deepspeed", "deepspeed", [*cpu_adam, "--checkpoint-every", "1"])
    assert rollouts(deepspeed) == rollouts(ddp)
    for step in (1, 2):
        moved = (flat(weights(ddp, step)) - flat(weights(ddp, step - 1))).abs().max()
        assert moved > 1e-4, "Adam moves every weight with a gradient by about lr"
        torch.testing.assert_close(weights(deepspeed, step), weights(ddp, step), rtol=F32_RTOL, atol=1e-6)

    checkpoints = deepspeed / "checkpoints"
    assert (checkpoints / "step=2.ckpt").is_dir(), "DeepSpeed writes a folder"
    assert os.readlink(checkpoints / "last.ckpt") == "step=2.ckpt"

    # resumed from step 1: the same second step (optimizer state, RNG and data position restored)
    step1 = str(checkpoints / "step=1.ckpt")
    resumed = train(assets, data_kwargs, tmp_path / "resumed", "deepspeed", [*cpu_adam, "--ckpt-path", step1])
    assert [steps[-1] for steps in rollouts(resumed)] == [steps[-1] for steps in rollouts(deepspeed)]
    torch.testing.assert_close(weights(resumed, 2), weights(deepspeed, 2), rtol=0, atol=0)

    exported = tmp_path / "export"
    command = [sys.executable, "-m", "grpo_lightning.export", str(checkpoints / "last.ckpt"), str(exported)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    model = AutoModelForImageTextToText.from_pretrained(exported)
    torch.testing.assert_close(dict(model.named_parameters()), weights(deepspeed, 2), rtol=0, atol=0)
