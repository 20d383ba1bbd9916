"""What a training step logs: its metrics (``train/*``) and, now and then, a table of sampled completions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from grpo_lightning.algorithms import group_reward_std, is_truncated
from grpo_lightning.rewards import combine_rewards, mark_unscored
from grpo_lightning.rollout import Rollout, ScoredRollout

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule


def log_train_step(
    module: GRPOModule,
    rollout: Rollout,
    rewards: Tensor,
    per_func: Tensor,
    stats: dict[str, Tensor],
    seconds: dict[str, float],
) -> None:
    """Log a training step's loss statistics, rewards, completion lengths, tokens and stage times."""
    lengths = rollout.completion_mask.sum(-1).float()
    truncated = is_truncated(rollout.completion_ids, module.adapter.eos_token_ids(module.model)).float()
    # over the completions some reward scored, as the advantages and dynamic sampling see the groups
    zero_std = group_reward_std(mark_unscored(rewards, per_func), module.sampling.num_generations) == 0
    shown = rewards  # the reward as a user reads it: the weighted sum, also where training normalises each function
    if module.rewards.aggregation != "sum_then_normalize":
        shown = combine_rewards(per_func, module.reward_weights).float()
    metrics = {
        "train/loss": stats["loss"],
        "train/reward": shown.mean(),
        "train/reward_std": shown.std() if len(shown) > 1 else torch.zeros(()),
        "train/frac_reward_zero_std": zero_std.float().mean(),
        "train/clip_ratio/low": stats["clip_low"],
        "train/clip_ratio/high": stats["clip_high"],
        "train/entropy": stats["entropy"],
        "train/completion_length/mean": lengths.mean(),
        "train/completion_length/max": lengths.max(),
        "train/truncated_fraction": truncated.mean(),
        "train/learning_rate": torch.tensor(module.optimizers().param_groups[0]["lr"]),
        "train/step_time": torch.tensor(sum(seconds.values())),
        "train/tokens/completion": rollout.completion_mask.sum().float(),
        "train/tokens/trained": trained_tokens(rollout, module.device).float(),
    }
    metrics.update({f"train/time/{stage}": torch.tensor(value) for stage, value in seconds.items()})
    with_kl = module.loss.beta > 0
    if with_kl:
        metrics["train/kl"] = stats["kl"]
    if "clip_delta" in stats:  # loss.delta: negative-advantage tokens whose ratio passed delta
        metrics["train/clip_ratio/delta"] = stats["clip_delta"]
    if "entropy_threshold" in stats:  # loss.top_entropy_quantile: the batch's threshold, the share of tokens above it
        metrics["train/top_entropy/threshold"] = stats["entropy_threshold"]
        metrics["train/top_entropy/kept_fraction"] = stats["high_entropy_fraction"]
    if "engine_logp_diff" in stats:  # a rollout engine of its own (vllm): its log-probs' gap to the policy's
        metrics["train/engine/logp_diff"] = stats["engine_logp_diff"]
    for f, (name, _) in enumerate(module.reward_funcs):
        column = per_func[:, f]
        if not torch.isnan(column).all():
            metrics[f"train/rewards/{name}"] = torch.nanmean(column).float()
            metrics[f"train/rewards_std/{name}"] = _nanstd(column).float()
    metrics = {k: v.detach().float().to(module.device) for k, v in metrics.items()}
    size = len(rewards)
    module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=size, sync_dist=True)
    module.log("reward", metrics["train/reward"], prog_bar=True, logger=False, batch_size=size)
    if with_kl:
        module.log("kl", metrics["train/kl"], prog_bar=True, logger=False, batch_size=size)


_SHORTFALLS = "_dynamic_sampling_shortfalls"


def log_dynamic_sampling(
    module: GRPOModule, step: int, sampled: list[ScoredRollout], chosen: list[tuple[int, int]]
) -> None:
    """Log what dynamic sampling did in step ``step``, and warn (at the 1st, 2nd, 4th, ... such step) when the step
    had to train groups without a reward spread because its rounds ran out.

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
    metrics = {k: torch.tensor(v, dtype=torch.float32, device=module.device) for k, v in metrics.items()}
    module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(chosen), sync_dist=True)
    counts = torch.tensor([float(filled), float(len(chosen))], device=module.device)
    filled_everywhere, trained_everywhere = (int(v) for v in module.trainer.strategy.reduce(counts, reduce_op="sum"))
    if filled_everywhere == 0:
        return
    # steps that came up short so far in this process (not saved: a resumed run counts afresh)
    shortfalls = module.__dict__.get(_SHORTFALLS, 0) + 1
    module.__dict__[_SHORTFALLS] = shortfalls
    if shortfalls & (shortfalls - 1) == 0:  # 1, 2, 4, 8, ...
        sampling = module.sampling
        rank_zero_warn(
            f"Dynamic sampling, step {step}: only {trained_everywhere - filled_everywhere} of "
            f"{trained_everywhere} groups had rewards with a spread (std above {sampling.min_group_reward_std}) "
            f"after {len(sampled) - 1} extra rounds of sampling (sampling.max_refill_rounds: "
            f"{sampling.max_refill_rounds}; fewer when the epoch's prompts ran out); the step trains them and "
            f"{filled_everywhere} groups of equal rewards (advantage 0) in place of the missing ones. This is the "
            f"{_ordinal(shortfalls)} such step; it is reported again at the 2nd, 4th, 8th, ... Often, it means most "
            "prompts are too easy or too hard for the model: raise sampling.max_refill_rounds, or look at the "
            "rewards and the data (logging.rollouts_every_n_steps writes the rollouts for the report)."
        )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def trained_tokens(rollout: Rollout, device: torch.device) -> Tensor:
    """Prompt and completion tokens of every sequence, as one pass of the policy update processes them."""
    prompt_lengths = rollout.prompts.attention_mask.sum(-1)[rollout.prompt_index.to(device)]
    return prompt_lengths.sum() + rollout.completion_mask.sum()


def log_completions(module: GRPOModule, step: int, rollout: Rollout, rewards: Tensor, per_func: Tensor) -> None:
    """A few sampled completions with their rewards, as a Markdown table in the logger's text panel, at ``step``:
    the optimizer steps before this training step, as the step's rollout file is numbered. That is also the step of
    the same step's scalars when ``loss.num_iterations`` is 1; with more, Lightning's scalars count training steps,
    and ``step`` is ``num_iterations`` times theirs."""
    if not module.trainer.is_global_zero:
        return
    names = [name for name, _ in module.reward_funcs]
    header = "| prompt | completion | reward | " + " | ".join(names) + " |\n|" + "---|" * (3 + len(names)) + "\n"
    rows = []
    for j in range(min(module.logging.num_completions, len(rollout.completions))):
        prompt = rollout.prompts.texts[int(rollout.prompt_index[j])]
        cells = [_md(prompt[-200:]), _md(rollout.completions[j]), f"{float(rewards[j]):.3f}"]
        cells += [f"{float(per_func[j, f]):.3f}" for f in range(len(names))]
        rows.append("| " + " | ".join(cells) + " |")
    text = header + "\n".join(rows)
    for logger in module.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(logger, "log_text"):
            logger.log_text(key="train/completions", columns=["markdown"], data=[[text]], step=step)
        elif hasattr(experiment, "add_text"):
            experiment.add_text("train/completions", text, global_step=step)


def _nanstd(values: Tensor) -> Tensor:
    values = values[~torch.isnan(values)]
    return values.std() if values.numel() > 1 else torch.zeros((), dtype=values.dtype)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
