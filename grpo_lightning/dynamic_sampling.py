"""Dynamic sampling (DAPO, Yu et al. 2025, sec. 3.2): train only on the groups whose rewards differ.

A group whose G completions all get the same reward has advantage 0 for every completion: it adds no policy
gradient, only dilutes the batch (and its KL term). Dynamic sampling leaves such groups out and samples further
prompts until the step has as many groups with a spread as it has prompts. These are the decisions and the
warning; the rollout stage runs the rounds (``RolloutStage.sample_until_informative``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from grpo_lightning.algorithms import group_reward_std
from grpo_lightning.errors import ConfigError

if TYPE_CHECKING:
    from grpo_lightning.config import SamplingConfig


def informative_groups(rewards: Tensor, num_generations: int, min_std: float = 0.0) -> Tensor:
    """Which groups carry a learning signal: the std of their rewards is above ``min_std``.

    The std is :func:`grpo_lightning.algorithms.group_reward_std`'s (unbiased; exactly 0 for equal rewards), so
    ``min_std=0`` leaves out exactly the groups of equal rewards, whose advantages are all 0. A NaN reward is no
    reward (a completion no reward function scored, :func:`grpo_lightning.rewards.mark_unscored`): the spread is that
    of the others, so a group with fewer than two rewards is not informative.

    Args:
        rewards: (P * G,) prompt-major rewards.
        num_generations: G, completions per prompt.
        min_std: the spread a group must exceed.

    Returns:
        (P,) bool.
    """
    return group_reward_std(rewards, num_generations) > min_std


def choose_groups(informative: Sequence[bool], quota: int) -> tuple[list[int], int]:
    """The groups a step trains, out of those sampled (in the order drawn): the first ``quota`` informative ones.

    When fewer than ``quota`` are informative (the step ran out of rounds or of data), the first groups without a
    spread make up the rest, so that the step trains ``quota`` groups as it would without dynamic sampling: their
    advantages are 0, and every process of a data-parallel run keeps the same batch size (the loss normalisers and
    the collectives of the update stay those of a plain step).

    Args:
        informative: one flag per sampled group, in the order drawn.
        quota: how many groups the step trains (at most ``len(informative)``).

    Returns:
        The indices of the chosen groups in the order drawn, and how many of them are not informative.
    """
    if quota > len(informative):
        raise ValueError(f"cannot choose {quota} groups out of {len(informative)}.")
    with_spread = [i for i, flag in enumerate(informative) if flag][:quota]
    without = [i for i, flag in enumerate(informative) if not flag][: quota - len(with_spread)]
    return sorted(with_spread + without), len(without)


def check_validation_schedule(trainer: Any) -> None:
    """Refuse validation at the end of an epoch, which dynamic sampling would silently stop.

    Refills take the epoch's batches from the loader the loop reads, so the loop's last batch of the epoch never
    comes and Lightning's epoch-end validation (``val_check_interval`` a fraction, ``check_val_every_n_epoch`` set:
    its default) would not run, nor what follows it (a checkpoint or early stop on a validation metric). Validation
    every N steps counts the loop's own steps and works.

    Raises:
        ConfigError: the trainer validates by epoch and the data has a validation split.
    """
    if trainer.check_val_every_n_epoch is None or not isinstance(trainer.val_check_interval, float):
        return
    if trainer.limit_val_batches == 0:
        return
    splits = getattr(trainer.datamodule, "splits", None)
    if isinstance(splits, dict) and getattr(splits.get("val"), "file", None) is None:
        return  # no validation data
    raise ConfigError(
        "sampling.dynamic_sampling takes further batches of the epoch within a step, so validation at the end of an "
        "epoch would never run; validate every N steps instead: trainer.val_check_interval: N (an integer) with "
        "trainer.check_val_every_n_epoch: null (as the shipped configs do), or set data.val_file: null."
    )


class ShortfallWarnings:
    """Warns, at the 1st, 2nd, 4th, 8th, ... step of a run that came up short, that dynamic sampling had to train
    groups without a reward spread because its rounds ran out (counted in this process; not saved: a resumed run
    counts afresh).

    Args:
        sampling: the sampling options the message names.
    """

    def __init__(self, sampling: SamplingConfig) -> None:
        self.sampling = sampling
        self.count = 0

    def observe(self, step: int, filled: int, trained: int, extra_rounds: int) -> None:
        """Step ``step`` trained ``trained`` groups (every process), ``filled`` of them without a spread, after
        ``extra_rounds`` refills."""
        if filled == 0:
            return
        self.count += 1
        if self.count & (self.count - 1):  # not a power of two
            return
        sampling = self.sampling
        rank_zero_warn(
            f"Dynamic sampling, step {step}: only {trained - filled} of {trained} groups had rewards with a spread "
            f"(std above {sampling.min_group_reward_std}) after {extra_rounds} extra rounds of sampling "
            f"(sampling.max_refill_rounds: {sampling.max_refill_rounds}; fewer when the epoch's prompts ran out); the "
            f"step trains them and {filled} groups of equal rewards (advantage 0) in place of the missing ones. This "
            f"is the {_ordinal(self.count)} such step; it is reported again at the 2nd, 4th, 8th, ... Often, it means "
            "most prompts are too easy or too hard for the model: raise sampling.max_refill_rounds, or look at the "
            "rewards and the data (logging.rollouts_every_n_steps writes the rollouts for the report)."
        )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


__all__ = ["ShortfallWarnings", "check_validation_schedule", "choose_groups", "informative_groups"]
