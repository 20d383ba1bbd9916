"""Several processes: the demo under DDP on 2 CPU processes (gloo), as a user would launch it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from grpo_lightning.advantages import compute_advantages
from scripts.tb_scalars import read_scalars
from tests.helpers import COMPOSED_UPDATE, LOSS_COMBINATIONS, fit_on_two_processes


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


def rank_major_rollouts(log_dir: Path) -> list[list[dict]]:
    """Each step's rollout records (``<log_dir>/rollouts/step=N.jsonl``, in step order), rank 0's first."""
    files = sorted((log_dir / "rollouts").glob("step=*.jsonl"), key=lambda path: int(path.stem.split("=")[1]))
    steps = [[json.loads(line) for line in path.read_text().splitlines()] for path in files]
    return [sorted(records, key=lambda record: (record["rank"], record["group"])) for records in steps]


def fit_with_loss_options(
    assets, data_kwargs, tmp_path: Path, combination: str, reward: str
) -> tuple[list[dict], Path]:
    """2 rollouts (4 optimizer steps) of :data:`LOSS_COMBINATIONS` entry ``combination`` with :data:`COMPOSED_UPDATE`
    on 2 processes, 2 prompts of G=4 each, rewarded by ``reward``, their rollouts written each step; returns each
    rank's final state (:class:`~tests.helpers.SaveFinalWeights`) and the log folder. Asserts the entry's metrics
    were logged at both steps."""
    entry = LOSS_COMBINATIONS[combination]
    overlay = {
        "trainer": {"callbacks": [{"class_path": "tests.helpers.SaveFinalWeights"}], "enable_checkpointing": False},
        "model": {"loss": {**COMPOSED_UPDATE, **entry.options}, "logging": {"rollouts_every_n_steps": 1}},
    }
    options_file = tmp_path / "loss-options.yaml"
    options_file.write_text(json.dumps(overlay), encoding="utf-8")
    saved = tmp_path / "weights"
    env = {"GRPO_TEST_G": "4", "GRPO_TEST_IDS": str(tmp_path / "ids"), "GRPO_TEST_WEIGHTS": str(saved)}
    fit_on_two_processes(
        assets, data_kwargs, tmp_path, reward=reward, num_generations=4, max_steps=4,
        options=("--config", str(options_file)), env=env,
    )  # fmt: skip
    log_dir = tmp_path / "logs" / "demo" / "version_0"
    scalars = read_scalars(log_dir)
    for tag in entry.metrics:
        assert [step for step, _ in scalars[tag]] == [0, 1], tag
    return [torch.load(f"{saved}.rank{rank}", weights_only=True) for rank in (0, 1)], log_dir


@pytest.mark.slow
def test_ppo_dual_clip_reinforce_pp_and_adaptive_entropy_on_two_processes_agree_across_them(
    assets, data_kwargs, tmp_path
):
    """The ppo, dual-clip, abs-KL, REINFORCE++ and adaptive-entropy combination, 2 optimizer steps a rollout in
    micro-batches, on 2 processes: both end with the same weights and the same adaptive coefficient and last entropy
    (the mean over every process's tokens; each process's own differ), and REINFORCE++ whitened the global batch:
    rank 0 scores 0.0 and rank 1 scores 1.0, so each process alone would have whitened its rewards to 0."""
    (rank0, rank1), log_dir = fit_with_loss_options(
        assets, data_kwargs, tmp_path, "ppo-dual_clip-abs-reinforce_pp-adaptive_entropy", "tests.helpers:rank_reward"
    )
    assert torch.equal(rank0["params"], rank1["params"])
    assert rank0["entropy"] == rank1["entropy"]
    assert rank0["entropy"]["entropy_coef"] == pytest.approx(0.02 + 4 * 0.01, abs=1e-12)
    assert 0.0 < rank0["entropy"]["last_entropy"] < 50.0
    steps = rank_major_rollouts(log_dir)
    assert len(steps) == 2
    for records in steps:
        assert [record["rank"] for record in records] == [0, 0, 1, 1]
        rewards = torch.tensor([c["reward"] for record in records for c in record["completions"]])
        assert rewards.tolist() == [0.0] * 8 + [1.0] * 8
        advantages = [c["advantage"] for record in records for c in record["completions"]]
        expected = compute_advantages(rewards, 4, "reinforce_pp", "batch")
        assert advantages == pytest.approx(expected.tolist(), rel=1e-5) and expected[0] < 0 < expected[-1]


@pytest.mark.slow
def test_cispo_kl_in_reward_and_reinforce_pp_baseline_on_two_processes_agree_across_them(assets, data_kwargs, tmp_path):
    """The cispo, k1-KL-in-reward and REINFORCE++-baseline combination on 2 processes, rewarded by length: both end
    with the same weights, and each step's advantages are whitened over both processes together (mean 0, std 1 over
    the 16 completions), not each process's alone (rank 0's 8 have another std)."""
    (rank0, rank1), log_dir = fit_with_loss_options(
        assets, data_kwargs, tmp_path, "cispo-k1-kl_in_reward-reinforce_pp_baseline", "tests.helpers:characters_reward"
    )
    assert torch.equal(rank0["params"], rank1["params"])
    steps = rank_major_rollouts(log_dir)
    assert len(steps) == 2
    for records in steps:
        advantages = torch.tensor([c["advantage"] for record in records for c in record["completions"]])
        assert len(advantages) == 16
        assert advantages.mean().item() == pytest.approx(0.0, abs=1e-5)
        assert advantages.std().item() == pytest.approx(1.0, rel=1e-2)
        assert abs(advantages[:8].std().item() - 1.0) > 1e-2, advantages.tolist()


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
