"""What a training step logs: its metrics (``train/*``) and, now and then, a table of sampled completions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from grpo_lightning.algorithms import group_reward_std, is_truncated
from grpo_lightning.rollout import Rollout

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
    zero_std = group_reward_std(rewards, module.sampling.num_generations) == 0
    metrics = {
        "train/loss": stats["loss"],
        "train/reward": rewards.mean(),
        "train/reward_std": rewards.std() if len(rewards) > 1 else torch.zeros(()),
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


def trained_tokens(rollout: Rollout, device: torch.device) -> Tensor:
    """Prompt and completion tokens of every sequence, as one pass of the policy update processes them."""
    prompt_lengths = rollout.prompts.attention_mask.sum(-1)[rollout.prompt_index.to(device)]
    return prompt_lengths.sum() + rollout.completion_mask.sum()


def log_completions(module: GRPOModule, rollout: Rollout, rewards: Tensor, per_func: Tensor) -> None:
    """A few sampled completions with their rewards, as a Markdown table in the logger's text panel."""
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
            logger.log_text(key="train/completions", columns=["markdown"], data=[[text]], step=module.global_step)
        elif hasattr(experiment, "add_text"):
            experiment.add_text("train/completions", text, global_step=module.global_step)


def _nanstd(values: Tensor) -> Tensor:
    values = values[~torch.isnan(values)]
    return values.std() if values.numel() > 1 else torch.zeros((), dtype=values.dtype)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
