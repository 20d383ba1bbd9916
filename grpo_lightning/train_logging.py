"""What a training step logs: its metrics (``train/*``) and, now and then, a table of sampled completions.

The functions here take the values they log (tensors, numbers, texts) and return the metrics or the table; the
LightningModule hands the metrics to its loggers, and :func:`log_completions` the table to each logger in the way
that logger shows one (a W&B table, TensorBoard text, an MLflow file): the only place that tells loggers apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from grpo_lightning.algorithms import group_reward_std
from grpo_lightning.rewards import mark_unscored
from grpo_lightning.rollout import Rollout, ScoredRollout, TrainedGroups

#: The update's statistics (``PolicyUpdate.optimize``) and the names they are logged under; a statistic not named
#: here is logged as ``train/<name>``, so that a loss option's own statistic needs no edit here.
STAT_METRICS = {
    "loss": "train/loss",
    "clip_low": "train/clip_ratio/low",
    "clip_high": "train/clip_ratio/high",
    "clip_delta": "train/clip_ratio/delta",  # loss.delta: negative-advantage tokens whose ratio passed delta
    "entropy": "train/entropy",
    "kl": "train/kl",  # loss.beta > 0
    "entropy_threshold": "train/top_entropy/threshold",  # loss.top_entropy_quantile: the batch's threshold,
    "high_entropy_fraction": "train/top_entropy/kept_fraction",  # and the share of tokens above it
    "engine_logp_diff": "train/engine/logp_diff",  # a rollout engine of its own (vllm): its log-probs' gap,
    "engine_kl": "train/engine/kl",  # and its mismatch with the policy (engines.correction.mismatch_metrics)
    "engine_chi2": "train/engine/chi2",
    "engine_ess": "train/engine/ess",
    "engine_ppl_ratio": "train/engine/ppl_ratio",
    "engine_masked_fraction": "train/engine/masked_fraction",  # vllm.importance_sampling_mode *_mask
    "engine_off_policy_masked_fraction": "train/engine/off_policy_masked_fraction",  # vllm.off_policy_mask_threshold
    "sft/nll": "train/sft/nll",  # loss.sft_coef: the gold completions' token-mean NLL,
    "sft_coef": "train/sft_coef",  # and the coefficient of the step's first optimizer step
}


def step_metrics(
    trained: TrainedGroups,
    shown_rewards: Tensor,
    stats: dict[str, Tensor],
    seconds: dict[str, float],
    *,
    truncated: Tensor,
    num_generations: int,
    learning_rate: float,
    reward_names: Sequence[str],
    device: torch.device,
) -> dict[str, Tensor]:
    """A training step's metrics: the update's statistics, rewards, completion lengths, tokens and stage times.

    Args:
        trained: the groups the step trained.
        shown_rewards: (N,) their rewards as a user reads them (the weighted sum of the scores).
        stats: the update's statistics (:data:`STAT_METRICS`).
        seconds: each stage's wall time.
        truncated: (N,) bool, the completions without EOS.
        num_generations: G.
        learning_rate: the optimizer's learning rate after the step.
        reward_names: the reward functions' names, in the column order of ``trained.per_func``.
        device: where the metrics go (the module's device, for the reduction across processes).
    """
    rollout, rewards, per_func = trained.rollout, trained.rewards, trained.per_func
    lengths = rollout.completion_mask.sum(-1).float()
    # over the completions some reward scored, as the advantages and dynamic sampling see the groups
    zero_std = group_reward_std(mark_unscored(rewards, per_func), num_generations) == 0
    metrics = {
        "train/reward": shown_rewards.mean(),
        "train/reward_std": shown_rewards.std() if len(shown_rewards) > 1 else torch.zeros(()),
        "train/frac_reward_zero_std": zero_std.float().mean(),
        "train/completion_length/mean": lengths.mean(),
        "train/completion_length/max": lengths.max(),
        "train/truncated_fraction": truncated.float().mean(),
        "train/learning_rate": torch.tensor(learning_rate),
        "train/step_time": torch.tensor(sum(seconds.values())),
        "train/tokens/completion": rollout.completion_mask.sum().float(),
        "train/tokens/trained": trained_tokens(rollout, device).float(),
    }
    metrics.update({f"train/time/{stage}": torch.tensor(value) for stage, value in seconds.items()})
    for name, value in stats.items():
        tag = STAT_METRICS.get(name, f"train/{name}")
        if tag in metrics:
            raise ValueError(f"the update's statistic {name!r} would be logged as {tag}, which the step logs already")
        metrics[tag] = value
    for f, name in enumerate(reward_names):
        column = per_func[:, f]
        if not torch.isnan(column).all():
            metrics[f"train/rewards/{name}"] = torch.nanmean(column).float()
            metrics[f"train/rewards_std/{name}"] = _nanstd(column).float()
    return {k: v.detach().float().to(device) for k, v in metrics.items()}


def dynamic_sampling_metrics(
    sampled: list[ScoredRollout], chosen: list[tuple[int, int]], device: torch.device
) -> dict[str, Tensor]:
    """What dynamic sampling did in a step.

    ``train/dynamic_sampling/dropped_fraction``: the sampled groups (all rounds) without a spread;
    ``extra_rounds``: the batches sampled after the step's own; ``filled_fraction``: the trained groups without a
    spread. Every process samples as many groups in as many rounds, so the mean over processes is the global value.
    """
    flags = [round_.informative for round_ in sampled]
    sampled_groups = sum(len(f) for f in flags)
    filled = sum(not bool(flags[r][p]) for r, p in chosen)
    metrics = {
        "train/dynamic_sampling/dropped_fraction": 1.0 - sum(int(f.sum()) for f in flags) / sampled_groups,
        "train/dynamic_sampling/extra_rounds": float(len(sampled) - 1),
        "train/dynamic_sampling/filled_fraction": filled / len(chosen),
    }
    return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in metrics.items()}


def trained_tokens(rollout: Rollout, device: torch.device) -> Tensor:
    """Prompt and completion tokens of every sequence, as one pass of the policy update processes them."""
    prompt_lengths = rollout.prompts.attention_mask.sum(-1)[rollout.prompt_index.to(device)]
    return prompt_lengths.sum() + rollout.completion_mask.sum()


@dataclass(frozen=True)
class CompletionsTable:
    """Sampled completions with their prompts, rewards and scores, one row each: what a logger shows as a table.

    Attributes:
        columns: ``prompt``, ``completion``, ``reward``, then one column per reward function.
        rows: per completion, the end of its prompt, its text, its reward and each function's score (NaN: unscored).
    """

    columns: list[str]
    rows: list[list[str | float]]

    def markdown(self) -> str:
        """The table as Markdown, for a logger that shows text (TensorBoard's text panel, an MLflow text file)."""
        header = "| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns) + "\n"
        lines = ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in self.rows]
        return header + "\n".join(lines)


def completions_table(
    rollout: Rollout, rewards: Tensor, per_func: Tensor, reward_names: Sequence[str], count: int
) -> CompletionsTable:
    """The first ``count`` sampled completions with their prompts (the last 200 characters), rewards and scores."""
    names = list(reward_names)
    rows: list[list[str | float]] = []
    for j in range(min(count, len(rollout.completions))):
        prompt = rollout.prompts.texts[int(rollout.prompt_index[j])]
        scores = [float(per_func[j, f]) for f in range(len(names))]
        rows.append([prompt[-200:], rollout.completions[j], float(rewards[j]), *scores])
    return CompletionsTable(columns=["prompt", "completion", "reward", *names], rows=rows)


def log_completions(loggers: Sequence[Any], key: str, table: CompletionsTable, step: int) -> None:
    """``table`` in each logger under ``key`` at ``step``; the one place where the loggers' ways of showing it differ.

    A logger with tables (W&B: ``log_table``) gets a table of the cells themselves, its rewards as numbers to sort
    by; TensorBoard (its writer's ``add_text``) the Markdown text in its text panel; MLflow (its client's
    ``log_text``) the Markdown as the run's file ``<key>/step=N.md``. Other loggers are left out.

    A step's completions are logged at the optimizer steps before the step, as its rollout file is numbered. That is
    also the step of the same step's scalars when ``loss.num_iterations`` is 1; with more, Lightning's scalars count
    training steps, and the table's step is ``num_iterations`` times theirs.
    """
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(logger, "log_table"):
            logger.log_table(key=key, columns=table.columns, data=table.rows, step=step)
        elif hasattr(experiment, "add_text"):
            experiment.add_text(key, table.markdown(), global_step=step)
        elif hasattr(experiment, "log_text") and getattr(logger, "run_id", None) is not None:
            experiment.log_text(logger.run_id, table.markdown(), f"{key}/step={step}.md")


def _nanstd(values: Tensor) -> Tensor:
    values = values[~torch.isnan(values)]
    return values.std() if values.numel() > 1 else torch.zeros((), dtype=values.dtype)


def _md_cell(cell: str | float) -> str:
    if isinstance(cell, float):
        return f"{cell:.3f}"
    return cell.replace("|", "\\|").replace("\n", "<br>")


__all__ = [
    "STAT_METRICS",
    "CompletionsTable",
    "completions_table",
    "dynamic_sampling_metrics",
    "log_completions",
    "step_metrics",
    "trained_tokens",
]
