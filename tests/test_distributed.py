"""Several processes: the demo under DDP on 2 CPU processes (gloo), as a user would launch it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from scripts.tb_scalars import read_scalars
from tests.helpers import fit_on_two_processes


@pytest.mark.slow
def test_the_demo_runs_on_two_processes_with_whole_groups_reduced_metrics_and_one_checkpoint(
    assets, data_kwargs, tmp_path
):
    ids_file = tmp_path / "ids"
    # batch-scaled advantages gather every process's rewards: this runs that collective for real (the values are
    # checked against one process in test_module.py)
    fit_on_two_processes(
        assets,
        data_kwargs,
        tmp_path,
        reward="tests.helpers:rank_reward",
        num_generations=4,
        max_steps=2,
        options=("--model.loss.scale_rewards", "batch"),
        env={"GRPO_TEST_G": "4", "GRPO_TEST_IDS": str(ids_file)},
    )

    per_rank = [[json.loads(line) for line in Path(f"{ids_file}.rank{r}").read_text().splitlines()] for r in (0, 1)]
    assert [len(steps) for steps in per_rank] == [2, 2]
    for rank0, rank1 in zip(*per_rank, strict=True):
        assert len(rank0) == len(rank1) == 2, "each process takes batch_size / world_size = 2 whole prompts"
        assert not set(rank0) & set(rank1), "the two processes must see different prompts"

    # Every process starts from the same seed; each must still sample with random numbers of its own (with one
    # stream for all, the tiny model gives both processes the very same completions for their different prompts).
    completions = [Path(f"{ids_file}.completions{r}").read_text().splitlines() for r in (0, 1)]
    assert all(rank0 != rank1 for rank0, rank1 in zip(*completions, strict=True))

    scalars = read_scalars(tmp_path / "logs")
    # rank 0 scores 0.0 and rank 1 scores 1.0: the logged reward is their mean only if it was reduced.
    assert [value for _, value in scalars["train/reward"]] == [0.5, 0.5]
    # written once, by rank 0: the end-of-training step checkpoint and the last.ckpt link to it
    checkpoints = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "logs").rglob("*.ckpt"))
    assert checkpoints == ["logs/demo/version_0/checkpoints/last.ckpt", "logs/demo/version_0/checkpoints/step=2.ckpt"]
    assert len(list((tmp_path / "logs").rglob("events.out.tfevents.*"))) == 1


def sigterm_reward(completions, solution, **kwargs):
    """Scores by length; the first process sends itself SIGTERM on call ``$GRPO_TEST_SIGTERM_AT`` (a step), as a
    scheduler's preemption."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sigterm_reward.calls = getattr(sigterm_reward, "calls", 0) + 1
    if rank == 0 and sigterm_reward.calls == int(os.environ.get("GRPO_TEST_SIGTERM_AT", "0")):
        os.kill(os.getpid(), signal.SIGTERM)
    return [len(text) / 10 for text in completions]


@pytest.mark.slow
def test_two_processes_stopped_by_sigterm_exit_non_zero_and_resume_from_the_last_periodic_checkpoint(
    assets, data_kwargs, tmp_path
):
    """With two processes no checkpoint is written on the way out (saving is collective); the job still ends as
    killed (not 0), and --ckpt_path last resumes from the step-2 checkpoint to the end."""
    checkpoint_every_2 = (
        "{trainer: {callbacks: [{class_path: grpo_lightning.callbacks.StepCheckpoint, "
        "init_args: {every_n_train_steps: 2, save_last: link}}]}}"
    )
    common = dict(reward="tests.test_distributed:sigterm_reward", num_generations=2, max_steps=5)
    stopped = fit_on_two_processes(
        assets,
        data_kwargs,
        tmp_path,
        options=("--config", checkpoint_every_2),
        env={"GRPO_TEST_SIGTERM_AT": "3"},
        status=143,
        **common,
    )
    assert "Stopped by SIGTERM." in stopped.stderr
    last = tmp_path / "logs" / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    fit_on_two_processes(
        assets, data_kwargs, tmp_path, options=("--config", checkpoint_every_2, "--ckpt_path", "last"), **common
    )
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert [step for step, _ in read_scalars(tmp_path / "logs")["train/reward"]] == [0, 1, 2, 3, 4]
