"""Advantage estimators for outcome rewards: one advantage per completion from the rewards of its group or batch.

``loss.advantage_estimator`` picks one of :data:`ADVANTAGE_ESTIMATORS`; each is a pure function of the prompt-major
rewards viewed as (P, G), with the ``loss.scale_rewards`` modes it accepts declared when it registers (the config
refuses the others, :class:`~grpo_lightning.config.LossConfig`):

* ``grpo`` (default): :func:`~grpo_lightning.algorithms.compute_group_advantages`, reward minus the group mean,
  scaled by ``scale_rewards`` (GRPO, Dr. GRPO);
* ``rloo``: reward minus the mean of the other rewards of its group (Ahmadian et al. 2024, "Back to Basics",
  arXiv 2402.14740; TRL's ``RLOOTrainer``), whitened over the batch with ``scale_rewards: batch`` as TRL's
  ``normalize_advantages`` does;
* ``reinforce_pp``: REINFORCE++ (Hu et al. 2025, arXiv 2501.03262; verl ``reinforce_plus_plus``): the rewards
  whitened over the whole batch, no per-prompt baseline; ``reinforce_pp_baseline`` (verl
  ``reinforce_plus_plus_baseline``) subtracts the group mean first;
* ``grpo_passk``: Pass@k training (Chen et al. 2025, arXiv 2503.19595; verl ``grpo_passk``): only the best
  completion of a group gets an advantage, the best reward minus the second best.

Every estimator takes a NaN reward as no reward (a completion no reward function scored): it is left out of every
mean, std and ranking, and its advantage is 0. Whatever needs the whole batch (``scale_rewards: batch``, which the
REINFORCE++ estimators require) is given every process's rewards by the caller, as for GRPO's batch std.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo_lightning.algorithms import (
    ADVANTAGE_SCALERS,
    _constant_groups,
    _grouped,
    _unbiased_std,
    compute_group_advantages,
)
from grpo_lightning.registry import Registry

__all__ = ["ADVANTAGE_ESTIMATORS", "AdvantageEstimation", "compute_advantages"]

# (grouped rewards (P, G) with NaN for no reward, scale_rewards, eps) -> advantages (P, G), NaN where no reward
AdvantageEstimator = Callable[[Tensor, str, float], Tensor]


@dataclass(frozen=True)
class AdvantageEstimation:
    """A registered ``advantage_estimator``: its function, and the ``scale_rewards`` modes it is defined with."""

    estimate: AdvantageEstimator
    scalings: tuple[str, ...]


#: ``loss.advantage_estimator``: how :func:`compute_advantages` turns rewards into advantages.
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimation] = Registry("advantage_estimator")


def _grpo(grouped: Tensor, scale_rewards: str, eps: float) -> Tensor:
    return compute_group_advantages(grouped.reshape(-1), grouped.shape[1], scale_rewards, eps).view_as(grouped)


ADVANTAGE_ESTIMATORS.register("grpo", AdvantageEstimation(_grpo, tuple(ADVANTAGE_SCALERS.names())))


def _without_reward_zero(advantages: Tensor, grouped: Tensor) -> Tensor:
    return advantages.masked_fill(grouped.isnan(), 0.0)


def _whitened(values: Tensor, eps: float) -> Tensor:
    """``(x - mean(x)) / sqrt(var(x) + eps**2)`` over every non-NaN value (unbiased var): verl's ``masked_whiten``
    with one weight per completion (its ``1e-8`` is ``eps**2`` at the default ``eps=1e-4``); exactly 0 for equal
    values."""
    whitened = (values - values.nanmean()) / (_unbiased_std(values).square() + eps**2).sqrt()
    return whitened.masked_fill(_constant_groups(values.reshape(1, -1)), 0.0)


def _rloo(grouped: Tensor, scale_rewards: str, eps: float) -> Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 6): ``A_i = r_i - 1/(k-1) sum_{j != i} r_j`` over the k rewards of the group
    (0 when k < 2, as TRL); with ``scale_rewards: batch``, ``(A - mean(A)) / (std(A) + eps)`` over the batch (TRL's
    ``normalize_advantages``). A ``group`` std would only rescale GRPO's advantages by G/(G-1), so it is refused."""
    given = ~grouped.isnan()
    count = given.sum(dim=1, keepdim=True)
    others = (grouped.nansum(dim=1, keepdim=True) - grouped) / (count - 1).clamp_min(1)
    advantages = torch.where(count > 1, grouped - others, torch.zeros_like(grouped))
    advantages = advantages.masked_fill(_constant_groups(grouped), 0.0)  # exactly, also for a single reward
    if scale_rewards == "batch":  # over the completions with a reward only
        advantages = torch.where(given, advantages, torch.nan)
        advantages = (advantages - advantages.nanmean()) / (_unbiased_std(advantages) + eps)
    return _without_reward_zero(advantages, grouped)


def _group_mean_baseline(grouped: Tensor) -> Tensor:
    """The group's mean of the rewards given, 0 for a group of fewer than two (verl's baseline for a lone response)."""
    count = (~grouped.isnan()).sum(dim=1, keepdim=True)
    mean = grouped.nansum(dim=1, keepdim=True) / count.clamp_min(1)
    return torch.where(count > 1, mean, torch.zeros_like(mean))


def _reinforce_pp(grouped: Tensor, scale_rewards: str, eps: float) -> Tensor:
    """REINFORCE++ (Hu et al. 2025, sec. 3; verl ``compute_reinforce_plus_plus_outcome_advantage`` with ``gamma=1``
    and an outcome reward): the return of every token is the reward, whitened over the batch."""
    return _without_reward_zero(_whitened(grouped, eps), grouped)


def _reinforce_pp_baseline(grouped: Tensor, scale_rewards: str, eps: float) -> Tensor:
    """REINFORCE++-baseline (Hu et al. 2025; verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``): the
    reward minus its group's mean (0 for a group of one; exactly 0 for a group of equal rewards), whitened over the
    batch."""
    centred = grouped - _group_mean_baseline(grouped)
    equal = _constant_groups(grouped) & ((~grouped.isnan()).sum(dim=1, keepdim=True) > 1)
    centred = torch.where(equal, torch.zeros_like(grouped), centred)
    return _without_reward_zero(_whitened(torch.where(grouped.isnan(), torch.nan, centred), eps), grouped)


def _grpo_passk(grouped: Tensor, scale_rewards: str, eps: float) -> Tensor:
    """Pass@k (verl ``compute_grpo_passk_outcome_advantage``, after Chen et al. 2025, arXiv 2503.19595): the first
    completion with the group's highest reward gets ``r_max - r_second_max`` (0 on a tie at the top), divided by
    ``std(group) + eps`` with ``scale_rewards: group`` (verl's ``norm_adv_by_std_in_grpo``); every other completion
    gets 0. A group with fewer than two rewards gets 0 (verl raises)."""
    given = ~grouped.isnan()
    ranked = torch.where(given, grouped, -torch.inf)
    top = ranked.topk(min(2, grouped.shape[1]), dim=1, sorted=True).values
    gap = top[:, :1] - top[:, -1:]
    if scale_rewards == "group":
        gap = gap / (_unbiased_std(grouped, dim=1).unsqueeze(1) + eps)
    best = torch.zeros_like(grouped, dtype=torch.bool).scatter_(1, ranked.argmax(dim=1, keepdim=True), True)
    enough = given.sum(dim=1, keepdim=True) > 1
    return torch.where(best & enough, gap.expand_as(grouped), torch.zeros_like(grouped))


ADVANTAGE_ESTIMATORS.register("rloo", AdvantageEstimation(_rloo, ("none", "batch")))
ADVANTAGE_ESTIMATORS.register("reinforce_pp", AdvantageEstimation(_reinforce_pp, ("batch",)))
ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline", AdvantageEstimation(_reinforce_pp_baseline, ("batch",)))
ADVANTAGE_ESTIMATORS.register("grpo_passk", AdvantageEstimation(_grpo_passk, ("group", "none")))


def compute_advantages(
    rewards: Tensor, num_generations: int, estimator: str = "grpo", scale_rewards: str = "group", eps: float = 1e-4
) -> Tensor:
    """One advantage per completion by the registered ``estimator`` (:data:`ADVANTAGE_ESTIMATORS`).

    ``grpo`` is :func:`~grpo_lightning.algorithms.compute_group_advantages` itself, unchanged. The batch, for the
    estimators that look at it, is the ``rewards`` given: under data parallelism pass every process's rewards.

    Args:
        rewards: (num_prompts * G,) one reward per completion, prompt-major; NaN for no reward.
        num_generations: G, completions per prompt.
        estimator: ``grpo``, ``rloo``, ``reinforce_pp``, ``reinforce_pp_baseline`` or ``grpo_passk``.
        scale_rewards: ``group``, ``batch`` or ``none``, among those ``estimator`` accepts.
        eps: added to a std before dividing (``reinforce_pp``: its square, added to the variance).

    Returns:
        (num_prompts * G,) advantages in the layout and floating dtype of ``rewards``; 0 where no reward.

    Raises:
        ValueError: rewards of the wrong layout, or a ``scale_rewards`` the estimator is not defined with.
        ConfigError: an unknown estimator or scaling.
    """
    entry = ADVANTAGE_ESTIMATORS[estimator]
    ADVANTAGE_SCALERS.check(scale_rewards)
    if scale_rewards not in entry.scalings:
        accepted = ", ".join(entry.scalings)
        raise ValueError(f"advantage_estimator {estimator!r} takes scale_rewards {accepted}, not {scale_rewards!r}")
    grouped = _grouped(rewards, num_generations)
    return entry.estimate(grouped, scale_rewards, eps).reshape(-1)
