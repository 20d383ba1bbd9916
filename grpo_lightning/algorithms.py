"""The GRPO objective as pure tensor functions: advantages, clipped surrogate, KL, loss aggregation, the loss.

Nothing here knows about Lightning or transformers; every function takes tensors and returns tensors (``grpo_loss``
also the typed ``LossConfig``, read for its numbers and names), so each formula can be checked on CPU against a plain
loop (``tests/test_algorithms.py``).

The objective (GRPO, DeepSeekMath, Shao et al. 2024, eq. 3) for a prompt q with G sampled completions
o_1..o_G, all sharing the outcome advantage A_i of their sequence, is

    J(theta) = 1/G sum_i 1/|o_i| sum_t [ min(ratio_it * A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_i)
                                         - beta * KL_it ]
    ratio_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)

and the trainer minimises ``pg_loss + beta * approx_kl`` per token, where

* :func:`compute_group_advantages` gives A_i = (r_i - mean(r_group)) / (std + eps); the divisor is the group
  std (GRPO), the batch std, or nothing (Dr. GRPO, Liu et al. 2025);
* :func:`clipped_surrogate` gives the per-token ``pg_loss`` (PPO clip; eps_high > eps_low is the DAPO
  clip-higher of Yu et al. 2025; ``delta`` the two-sided clip of INTELLECT-2); its ratio is per token (GRPO), per
  sequence (GSPO, Zheng et al. 2025) or GSPO-token's (:data:`IMPORTANCE_SAMPLING_LEVELS`); ``dual_clip`` bounds
  a negative-advantage token's loss (dual-clip PPO, Ye et al. 2020). It is the ``ppo`` entry of
  :data:`POLICY_LOSSES` (``loss.policy_loss``), beside CISPO, SAPO and GMPO (:mod:`grpo_lightning.policy_losses`);
* :func:`kl_estimate` gives ``approx_kl``, by default the k3 estimator of KL(pi_theta || pi_ref) (:func:`kl_k3`,
  Schulman 2020, "Approximating KL divergence"; the others of :data:`KL_ESTIMATORS` on request);
  ``loss.kl_in_reward`` takes beta times each completion's summed KL from its reward instead
  (:func:`sequence_kl_penalty`);
* :func:`aggregate_loss` reduces the (B, T) per-token loss to a scalar. The variants differ only in the
  normaliser, which each declares when it registers (:data:`LOSS_AGGREGATORS`): ``grpo`` (mean over sequences
  of each sequence's token mean, as in the equation above), ``bnpo`` (token mean over this process's batch),
  ``dapo`` (token mean over the global batch, DAPO eq. 8) and ``dr_grpo`` (divide by sequences x
  max_completion_length, a constant, so long answers are not down-weighted);
* :func:`grpo_loss` puts them together: the scalar to backpropagate for one (micro-)batch, and the statistics
  of the step (KL, clipped-token fractions, entropy) next to the formula they describe; with ``loss.entropy_coef``
  it subtracts an entropy bonus, whose coefficient :func:`adaptive_entropy_coef` and :func:`gated_entropy_coef`
  adapt with ``loss.adaptive_entropy`` (Skywork-OR1, TRL).

Helpers for the surrounding step: :func:`selective_log_softmax` and :func:`entropy_from_logits` read per-token
log-probs and entropies off (B, T, V) logits without materialising a (B, T, V) log-softmax at once (the step itself
never makes whole logits: ``adapters.chunked_head.head_logps`` runs the head a chunk of positions at a time, and its
tests check it against these two);
:func:`completion_mask` and :func:`is_truncated` turn generated ids into the mask the losses take;
:func:`drop_truncated` leaves truncated completions out of it (DAPO), and :func:`entropy_quantile_threshold` with
:func:`high_entropy_mask` keep the policy term on the batch's highest-entropy tokens (Wang et al. 2025).

Simplified, on purpose:

* outcome rewards only: one scalar reward per completion, its advantage broadcast to every token (no
  process supervision, no value function, no GAE);
* the importance-sampling correction for a separate generation engine is weights the caller computes
  (``grpo_loss``'s ``importance_weights``), and the entropy bonus's coefficient a number the caller keeps;
* distributed statistics are the caller's job: ``batch`` reward scaling uses the std of the rewards it is given,
  and a loss whose normaliser is ``"global_tokens"`` (``dapo``) is given the global token count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from grpo_lightning.policy_losses import cispo_loss, gmpo_loss, sapo_loss
from grpo_lightning.registry import Registry

if TYPE_CHECKING:
    from grpo_lightning.config import LossConfig

__all__ = [
    "ADVANTAGE_SCALERS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATORS",
    "POLICY_LOSSES",
    "BatchTotals",
    "LossAggregation",
    "LossNormaliser",
    "adaptive_entropy_coef",
    "aggregate_loss",
    "clipped_surrogate",
    "completion_mask",
    "compute_group_advantages",
    "drop_truncated",
    "entropy_from_logits",
    "entropy_quantile_threshold",
    "gated_entropy_coef",
    "gold_nll",
    "group_reward_std",
    "grpo_loss",
    "high_entropy_mask",
    "importance_ratio",
    "is_truncated",
    "kl_estimate",
    "kl_k3",
    "loss_normaliser",
    "selective_log_softmax",
    "sequence_kl_penalty",
    "sft_coef_at",
]

#: What a loss variant divides the summed token losses by: the number of sequences after a mean over each one's
#: tokens, the completion tokens of this process's batch, those of the global batch (every process, every
#: accumulation step: the caller reduces the count), or the generation budget (sequences x max length).
LossNormaliser = Literal["sequences", "process_tokens", "global_tokens", "budget"]

# (centred (P, G), grouped rewards (P, G), eps) -> advantages (P, G)
AdvantageScaler = Callable[[Tensor, Tensor, float], Tensor]
# (masked per-token loss (B, T), mask (B, T) bool, num_sequences, num_tokens, max_completion_length) -> scalar
LossAggregator = Callable[[Tensor, Tensor, int, float | Tensor, int | None], Tensor]
# (logps (B, T), ref_logps (B, T)) -> per-token KL estimate (B, T)
KLEstimator = Callable[[Tensor, Tensor], Tensor]
# (logps (B, T), old_logps (B, T), mask (B, T)) -> log importance ratio (B, T)
ImportanceRatio = Callable[[Tensor, Tensor, Tensor], Tensor]
# (logps (B, T), old_logps (B, T), advantages (B,), mask (B, T), config) -> (per-token policy loss (B, T), statistics)
PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, "LossConfig"], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class LossAggregation:
    """A registered ``loss_type``: its reduction, and the normaliser it needs from the caller."""

    reduce: LossAggregator
    normaliser: LossNormaliser


#: ``loss.scale_rewards``: how :func:`compute_group_advantages` scales the centred rewards.
ADVANTAGE_SCALERS: Registry[AdvantageScaler] = Registry("scale_rewards")
#: ``loss.loss_type``: how :func:`aggregate_loss` reduces the per-token loss, and what it normalises by.
LOSS_AGGREGATORS: Registry[LossAggregation] = Registry("loss_type")
#: ``loss.importance_sampling_level``: how :func:`clipped_surrogate` forms the importance ratio.
IMPORTANCE_SAMPLING_LEVELS: Registry[ImportanceRatio] = Registry("importance_sampling_level")
#: ``loss.policy_loss``: the per-token policy term that :func:`grpo_loss` aggregates (``ppo``, ``cispo``, ``sapo``,
#: ``gmpo``).
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy_loss")


# --------------------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------------------


def _grouped(rewards: Tensor, num_generations: int) -> Tensor:
    """Check the layout and view prompt-major rewards (P * G,) as (P, G), in a floating dtype."""
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive int, got {num_generations!r}")
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D of shape (num_prompts * num_generations,), got shape {tuple(rewards.shape)}; "
            "flatten the per-completion rewards prompt-major (the G completions of prompt 0 first)"
        )
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, which is not a multiple of num_generations={num_generations}; "
            "every prompt needs exactly num_generations completions"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return rewards.view(-1, num_generations)


def _unbiased_std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased (Bessel-corrected) std of the values that are not NaN (no reward); 0 where fewer than two of them,
    instead of torch's NaN."""
    if dim is None:
        x, dim = x.reshape(-1), 0
        shape: tuple[int, ...] = ()
    else:
        shape = x.shape[:dim] + x.shape[dim + 1 :]
    given = ~x.isnan()
    count = given.sum(dim=dim, keepdim=True)
    mean = x.nansum(dim=dim, keepdim=True) / count.clamp_min(1)
    squares = torch.where(given, x - mean, 0.0).square().sum(dim=dim, keepdim=True)
    std = (squares / (count - 1).clamp_min(1)).sqrt()
    return torch.where(count > 1, std, 0.0).reshape(shape)


def _constant_groups(grouped: Tensor) -> Tensor:
    """(P, G) -> (P, 1) bool: groups whose rewards, NaN (no reward) left out, are all equal or none (no signal)."""
    given = ~grouped.isnan()
    low = torch.where(given, grouped, torch.inf).amin(dim=1, keepdim=True)
    high = torch.where(given, grouped, -torch.inf).amax(dim=1, keepdim=True)
    return (low == high) | ~given.any(dim=1, keepdim=True)


@ADVANTAGE_SCALERS.register("group")
def _scale_by_group_std(centred: Tensor, grouped: Tensor, eps: float) -> Tensor:
    """GRPO (DeepSeekMath, Shao et al. 2024, sec. 4.1.2): divide by the std of the prompt's own group."""
    return centred / (_unbiased_std(grouped, dim=1).unsqueeze(1) + eps)


@ADVANTAGE_SCALERS.register("batch")
def _scale_by_batch_std(centred: Tensor, grouped: Tensor, eps: float) -> Tensor:
    """Divide by the std of every reward given: one scale for all prompts, so easy prompts are not blown up."""
    return centred / (_unbiased_std(grouped) + eps)


@ADVANTAGE_SCALERS.register("none")
def _no_scaling(centred: Tensor, grouped: Tensor, eps: float) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, sec. 3.2): the std division biases towards too easy/hard questions, drop it."""
    return centred


def compute_group_advantages(
    rewards: Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> Tensor:
    """Group-relative advantages of GRPO (DeepSeekMath, Shao et al. 2024, sec. 4.1.2).

    ``advantages = rewards - mean(rewards of the same prompt)``, then divided according to ``scale_rewards``:

    * ``"group"``: by ``std(group) + eps`` (GRPO);
    * ``"batch"``: by ``std(all rewards given) + eps``; under data parallelism pass the gathered rewards if the
      std should be global;
    * ``"none"``: no division (Dr. GRPO, Liu et al. 2025).

    The std is the unbiased one (Bessel's correction, torch's default, as TRL uses), defined as 0 for a single
    value, so ``num_generations=1`` gives zero advantages instead of NaN. A group whose rewards are all equal
    gets advantages of exactly 0.0 in every mode (set explicitly: the float mean of equal values need not equal
    the value). A NaN reward is no reward (a completion no reward function scored,
    :func:`grpo_lightning.rewards.mark_unscored`): it is left out of its group's mean and std and of the batch's
    std, and its advantage is 0, as in TRL.

    Args:
        rewards: (num_prompts * G,) one reward per completion, prompt-major: the G completions of prompt 0
            first, then those of prompt 1, ...
        num_generations: G, completions per prompt.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (see above).
        eps: added to the std before dividing.

    Returns:
        (num_prompts * G,) advantages, same layout and floating dtype as ``rewards`` (integer rewards become the
        default float dtype).

    Raises:
        ValueError: rewards is not 1-D, its length is not a multiple of ``num_generations``, or
            ``scale_rewards`` is unknown.
    """
    scale = ADVANTAGE_SCALERS[scale_rewards]
    grouped = _grouped(rewards, num_generations)
    centred = grouped - grouped.nanmean(dim=1, keepdim=True)
    advantages = scale(centred, grouped, eps)
    # Exactly zero, also when eps=0 would make it 0/0; and zero, not NaN, without a reward.
    advantages = advantages.masked_fill(_constant_groups(grouped) | grouped.isnan(), 0.0)
    return advantages.reshape(-1)


def group_reward_std(rewards: Tensor, num_generations: int) -> Tensor:
    """Unbiased std of each prompt's group of rewards, for logging how many groups carry no signal.

    Same std as :func:`compute_group_advantages` (0 for ``num_generations=1``), and exactly 0.0 for a group
    whose rewards are all equal, so ``(group_reward_std(r, G) == 0).float().mean()`` is the fraction of prompts
    that contribute no gradient.

    Args:
        rewards: (num_prompts * G,) prompt-major rewards.
        num_generations: G, completions per prompt.

    Returns:
        (num_prompts,) std per group.

    Raises:
        ValueError: rewards is not 1-D or its length is not a multiple of ``num_generations``.
    """
    grouped = _grouped(rewards, num_generations)
    std = _unbiased_std(grouped, dim=1)
    return std.masked_fill(_constant_groups(grouped).squeeze(1), 0.0)


# --------------------------------------------------------------------------------------------------------------
# Per-token policy loss and KL
# --------------------------------------------------------------------------------------------------------------


@IMPORTANCE_SAMPLING_LEVELS.register("token")
def _token_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor) -> Tensor:
    """PPO / GRPO: one ratio per token, ``log r_it = logp_it - old_logp_it``."""
    return logps - old_logps


def _sequence_mean_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor) -> Tensor:
    """(B, 1) ``log s_i = 1/|o_i| sum_t (logp_it - old_logp_it)`` over the sequence's masked tokens (0 if none)."""
    keep = mask != 0
    # where(), not a product: padding may hold anything, and a -inf log-prob there would turn 0 * inf into NaN
    log_ratio = torch.where(keep, logps - old_logps, torch.zeros_like(logps))
    return log_ratio.sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1)


@IMPORTANCE_SAMPLING_LEVELS.register("sequence")
def _sequence_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor) -> Tensor:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071, eq. 7): ``s_i = (pi(o_i) / pi_old(o_i)) ** (1 / |o_i|)``, the
    length-normalised sequence ratio, given to every token of the sequence; its gradient reaches every token through
    the mean, ``d s_i / d logp_it = s_i / |o_i|``."""
    return _sequence_mean_log_ratio(logps, old_logps, mask).expand_as(logps)


@IMPORTANCE_SAMPLING_LEVELS.register("sequence_token")
def _sequence_token_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor) -> Tensor:
    """GSPO-token (Zheng et al. 2025, eq. 13): ``s_it = sg[s_i] * pi(o_it) / sg[pi(o_it)]``: the value of ``s_i``
    on every token, with the gradient of token t's own log-prob only, ``d s_it / d logp_it = s_i``."""
    sequence = _sequence_mean_log_ratio(logps, old_logps, mask).detach()
    return sequence + (logps - logps.detach())


def clipped_surrogate(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    *,
    delta: float | None = None,
    dual_clip: float | None = None,
    importance_sampling_level: str = "token",
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate loss as used by GRPO (DeepSeekMath, Shao et al. 2024, eq. 3).

    ``pg_loss = -min(ratio * A, clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)``, the ratio formed by the
    registered ``importance_sampling_level`` (:data:`IMPORTANCE_SAMPLING_LEVELS`: ``token`` for GRPO, ``sequence``
    for GSPO, ``sequence_token`` for GSPO-token; each level's function says how). A sequence ratio is clipped per
    sequence and its loss given to each of the sequence's tokens: reduced with ``loss_type="grpo"`` that is the GSPO
    objective, and the token-sum reductions weigh each sequence by its length, as TRL's sequence level does with
    them. The clip masks are per token at every level, so that they add up over micro-batches like the other token
    statistics (TRL counts a sequence-level clip once per sequence).

    ``epsilon_high > epsilon_low`` is DAPO's clip-higher (Yu et al. 2025, sec. 3.1). ``delta`` is the two-sided clip
    of INTELLECT-2 (arXiv 2505.07291; TRL's ``delta``): the unclipped term uses ``min(ratio, delta)``, so a
    negative-advantage token whose ratio has grown past ``delta`` stops contributing a gradient. ``old_logps`` and
    ``advantages`` are constants of the update (detached here); with one step per rollout pass
    ``old_logps = logps.detach()``: every ratio is 1, the gradient the plain policy gradient at every level.

    ``dual_clip`` is dual-clip PPO's ``c`` (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    Reinforcement Learning", arXiv 1912.09729, eq. 4; verl's ``clip_ratio_c``, default 3.0; EasyR1's
    ``clip_ratio_dual``): a negative-advantage token's loss is ``min(max(-A * ratio, -A * clip(ratio)), -c * A)``,
    bounded by ``-c * A``, so a token whose ratio grew past ``c`` stops contributing a gradient (its loss the constant
    bound). It does the job of ``delta`` in another way; the two are not combined.

    Args:
        logps, old_logps: (B, T) log-probs of the sampled tokens under the current policy and the sampling one.
        advantages: (B,) one advantage per sequence, broadcast over its tokens.
        epsilon_low, epsilon_high: the clip range ``[1 - epsilon_low, 1 + epsilon_high]`` (``epsilon_high`` None:
            ``epsilon_low``).
        delta: bound of the unclipped ratio of negative-advantage tokens, above ``1 + epsilon_high``; None: off.
        dual_clip: dual-clip PPO's bound ``c > 1`` of negative-advantage tokens' loss; None: off.
        mask: (B, T) the tokens a sequence ratio averages over; None: every token.

    Returns:
        ``(per_token_loss, clipped)``: the (B, T) loss (unmasked, for :func:`aggregate_loss`) and (B, T) bool masks
        of the tokens whose gradient a clip removes: ``clip_low`` (``ratio < 1 - epsilon_low``, ``A < 0``),
        ``clip_high`` (``ratio > 1 + epsilon_high``, ``A > 0``) and, with ``delta``, ``clip_delta`` (``ratio >
        delta``, ``A < 0``); with ``dual_clip``, ``clip_ratio/dual`` (the dual bound is active: ``A < 0`` and
        ``max(-A * ratio, -A * clip(ratio)) > -c * A``).

    Raises ValueError on mismatched shapes, a negative clip range, ``delta <= 1 + epsilon_high``, ``dual_clip <= 1``
    or with ``delta``, an unknown level.
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    _check_clip_ranges(epsilon_low, epsilon_high, delta, dual_clip)
    log_ratio, advantages = _log_ratio(logps, old_logps, advantages, mask, importance_sampling_level)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    unclipped_ratio = ratio if delta is None else torch.clamp(ratio, max=delta)
    # -min(a, b) == max(-a, -b): the pessimistic (lower) bound of the surrogate objective.
    pg_loss = torch.maximum(-unclipped_ratio * advantages, -clipped_ratio * advantages)
    clipped = {
        "clip_low": (ratio < 1.0 - epsilon_low) & (advantages < 0),
        "clip_high": (ratio > 1.0 + epsilon_high) & (advantages > 0),
    }
    if delta is not None:
        clipped["clip_delta"] = (ratio > delta) & (advantages < 0)
    if dual_clip is not None:
        bound = -dual_clip * advantages
        negative = advantages < 0
        clipped["clip_ratio/dual"] = negative & (pg_loss > bound)
        pg_loss = torch.where(negative, torch.minimum(pg_loss, bound), pg_loss)
    return pg_loss, clipped


def _check_clip_ranges(epsilon_low: float, epsilon_high: float, delta: float | None, dual_clip: float | None) -> None:
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got epsilon_low={epsilon_low}, epsilon_high={epsilon_high}")
    if delta is not None and not delta > 1.0 + epsilon_high:
        raise ValueError(f"delta must be above 1 + epsilon_high = {1.0 + epsilon_high}, got {delta}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be above 1 (dual-clip PPO's c), got {dual_clip}")
    if dual_clip is not None and delta is not None:
        raise ValueError("dual_clip and delta both bound negative-advantage tokens; give one of them")


def _log_ratio(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor | None, importance_sampling_level: str
) -> tuple[Tensor, Tensor]:
    """The (B, T) log importance ratio of the registered level and the (B, 1) detached advantages, shapes checked."""
    log_ratio_of = IMPORTANCE_SAMPLING_LEVELS[importance_sampling_level]
    mask = _check_surrogate_shapes(logps, old_logps, advantages, mask)
    return log_ratio_of(logps, old_logps.detach(), mask), advantages.detach().unsqueeze(1)


@POLICY_LOSSES.register("ppo")
def _ppo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, config: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (:func:`clipped_surrogate`), with the config's clip ranges, ``delta``, ``dual_clip``
    and importance-sampling level."""
    return clipped_surrogate(
        logps, old_logps, advantages, config.epsilon_low, config.epsilon_high, delta=config.delta,
        dual_clip=config.dual_clip, importance_sampling_level=config.importance_sampling_level, mask=mask,
    )  # fmt: skip


@POLICY_LOSSES.register("cispo")
def _cispo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, config: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (:func:`~grpo_lightning.policy_losses.cispo_loss`) on the ratio of the configured level, its weight
    capped at ``cispo_max_weight``."""
    log_ratio, advantages = _log_ratio(logps, old_logps, advantages, mask, config.importance_sampling_level)
    return cispo_loss(logps, log_ratio, advantages, config.cispo_max_weight)


@POLICY_LOSSES.register("sapo")
def _sapo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, config: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (:func:`~grpo_lightning.policy_losses.sapo_loss`) on the ratio of the configured level."""
    log_ratio, advantages = _log_ratio(logps, old_logps, advantages, mask, config.importance_sampling_level)
    return sapo_loss(log_ratio, advantages, config.sapo_temperature_pos, config.sapo_temperature_neg)


@POLICY_LOSSES.register("gmpo")
def _gmpo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, config: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (:func:`~grpo_lightning.policy_losses.gmpo_loss`) on the token ratios (it forms its own sequence
    ratio), clipped in log space to ``[-epsilon_low, epsilon_high]``."""
    epsilon_high = config.epsilon_low if config.epsilon_high is None else config.epsilon_high
    log_ratio, advantages = _log_ratio(logps, old_logps, advantages, mask, "token")
    mask = torch.ones_like(logps, dtype=torch.bool) if mask is None else mask
    return gmpo_loss(log_ratio, advantages, mask, config.epsilon_low, epsilon_high)


def _check_surrogate_shapes(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor | None) -> Tensor:
    """The mask of :func:`clipped_surrogate` (all ones when None), once the shapes are checked."""
    if logps.dim() != 2 or logps.shape != old_logps.shape:
        raise ValueError(
            f"logps and old_logps must both be (B, T), got {tuple(logps.shape)} and {tuple(old_logps.shape)}"
        )
    if advantages.shape != logps.shape[:1]:
        raise ValueError(
            f"advantages must be (B,) = ({logps.shape[0]},), one per sequence, got {tuple(advantages.shape)}"
        )
    if mask is None:
        return torch.ones_like(logps, dtype=torch.bool)
    if mask.shape != logps.shape:
        raise ValueError(f"mask must be (B, T) like logps, got {tuple(mask.shape)} and {tuple(logps.shape)}")
    return mask


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref) (Schulman 2020, "Approximating KL divergence").

    ``approx_kl = exp(ref_logps - logps) - (ref_logps - logps) - 1``: unbiased for tokens sampled from
    pi_theta, non-negative, 0 where the log-probs agree; the form used in GRPO (DeepSeekMath eq. 4). Computed
    with ``expm1`` so it stays non-negative in float32 when the log-probs are close.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy.
        ref_logps: (B, T) log-probs of the same tokens under the frozen reference policy.

    Returns:
        (B, T) approx_kl per token (unmasked).

    Raises:
        ValueError: shapes differ.
    """
    _check_same_shape(logps, ref_logps)
    log_ratio = ref_logps - logps
    # expm1(x) >= x holds after rounding too; exp(x) - x - 1 can round to a small negative number.
    return (torch.expm1(log_ratio) - log_ratio).clamp_min(0.0)


def _check_same_shape(logps: Tensor, ref_logps: Tensor) -> None:
    if logps.shape != ref_logps.shape:
        raise ValueError(
            f"logps and ref_logps must have the same shape, got {tuple(logps.shape)} and {tuple(ref_logps.shape)}"
        )


#: ``loss.kl_estimator``: the per-token estimate of KL(pi_theta || pi_ref), ``(logps, ref_logps) -> (B, T)``, as
#: Schulman's "Approximating KL divergence" (2020) names them and verl's ``kl_penalty`` offers them
#: (``verl/trainer/ppo/core_algos.py``: ``kl``/``k1``, ``mse``/``k2``, ``low_var_kl``/``k3``, ``abs``, ``k3+``).
KL_ESTIMATORS: Registry[KLEstimator] = Registry("kl_estimator")
KL_ESTIMATORS.register("k3", kl_k3)


@KL_ESTIMATORS.register("k1")
def _kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = ``logps - ref_logps`` (Schulman 2020; verl ``kl``): unbiased, high variance, negative on some tokens."""
    return logps - ref_logps


@KL_ESTIMATORS.register("k2")
def _kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 = ``(logps - ref_logps) ** 2 / 2`` (Schulman 2020; verl ``mse``): biased, low variance, non-negative; its
    gradient ``logps - ref_logps`` is, in expectation, the gradient of KL(pi_theta || pi_ref)."""
    return 0.5 * (logps - ref_logps).square()


@KL_ESTIMATORS.register("abs")
def _kl_abs(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """``|logps - ref_logps|`` (verl ``abs``): not an estimator of the KL, a penalty on the log-ratio's size."""
    return (logps - ref_logps).abs()


@KL_ESTIMATORS.register("k3+")
def _kl_k3_straight_through(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3's value with k2's gradient (verl ``k3+``: ``k2 - sg[k2] + sg[k3]``, a straight-through estimator): k3 is
    an unbiased estimate of the KL's value, k2's gradient an unbiased estimate of its gradient."""
    k2 = _kl_k2(logps, ref_logps)
    return k2 - k2.detach() + kl_k3(logps, ref_logps).detach()


def kl_estimate(logps: Tensor, ref_logps: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) by the registered ``estimator`` (:data:`KL_ESTIMATORS`).

    ``k3`` is :func:`kl_k3`, clamped at 0 after ``expm1`` as it always was here; verl also clamps the log-ratio to
    [-20, 20] and k3 to [-10, 10], which this does not (a token that far from the reference is not clipped away).

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy.
        ref_logps: (B, T) log-probs of the same tokens under the frozen reference policy.
        estimator: ``k1``, ``k2``, ``k3``, ``abs`` or ``k3+`` (each function's docstring gives its formula).

    Returns:
        (B, T) per token (unmasked).

    Raises:
        ValueError: shapes differ. ConfigError: an unknown estimator.
    """
    _check_same_shape(logps, ref_logps)
    return KL_ESTIMATORS[estimator](logps, ref_logps)


def importance_ratio(
    logps: Tensor, old_logps: Tensor, mask: Tensor, importance_sampling_level: str = "token"
) -> Tensor:
    """(B, T) the importance ratio ``pi_theta / pi_old`` of each token at the registered level
    (:data:`IMPORTANCE_SAMPLING_LEVELS`), with its gradient through ``logps`` (``old_logps`` detached): what
    ``loss.kl_bias_correction`` weighs the KL estimate by.

    The tokens were drawn from the sampling policy pi_old, so a per-token KL estimate k averaged over them estimates
    the KL of pi_old to the reference; at the ``token`` level, weighed by ``pi_theta / pi_old`` it estimates
    KL(pi_theta || pi_ref) without that bias (DeepSeek-V3.2, arXiv 2512.02556, "unbiased KL estimate"; TRL's
    ``use_bias_correction_kl``, which multiplies its k3 by the same ``coef_1``, at its importance-sampling level).
    The ``sequence`` levels weigh every token by the sequence's geometric-mean ratio instead, as TRL does: not an
    importance weight of the token, so not unbiased. At one optimizer step per rollout the ratio is 1 in value, but
    its gradient is not 0: at the token level each token's KL term gains ``k * grad log pi_theta``; at a sequence
    level each token's k multiplies the gradient of its sequence's mean log-prob.
    """
    _check_same_shape(logps, old_logps)
    return torch.exp(IMPORTANCE_SAMPLING_LEVELS[importance_sampling_level](logps, old_logps.detach(), mask))


def sequence_kl_penalty(logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: str = "k3") -> Tensor:
    """Each completion's KL to the reference, the sum of the per-token estimate over its tokens, without gradient:
    what ``loss.kl_in_reward`` weighs by beta and subtracts from the reward (verl ``use_kl_in_reward``, whose
    ``apply_kl_penalty`` puts ``beta * kl_penalty`` on every response token and so sums it over the response).

    Args:
        logps: (B, T) the sampling policy's log-probs of the sampled tokens.
        ref_logps: (B, T) the reference's.
        mask: (B, T) the completion tokens.
        estimator: as :func:`kl_estimate`.

    Returns:
        (B,) the summed estimate, detached.
    """
    with torch.no_grad():
        per_token = kl_estimate(logps.detach(), ref_logps.detach(), estimator)
        return torch.where(mask != 0, per_token, torch.zeros_like(per_token)).sum(dim=1)


# --------------------------------------------------------------------------------------------------------------
# Loss aggregation
# --------------------------------------------------------------------------------------------------------------


def _at_least_one(x: float | Tensor) -> float | Tensor:
    return x.clamp_min(1) if isinstance(x, Tensor) else max(x, 1)


def _sequence_mean_loss(
    masked_loss: Tensor, mask: Tensor, num_sequences: int, num_tokens: float | Tensor, max_completion_length: int | None
) -> Tensor:
    """Mean over sequences of each sequence's token mean (DeepSeekMath, Shao et al. 2024, eq. 3).

    Every sequence weighs the same whatever its length, so each token of a long sequence weighs less (the
    length bias Dr. GRPO points out).
    """
    lengths = mask.sum(dim=1).clamp_min(1)
    return (masked_loss.sum(dim=1) / lengths).sum() / num_sequences


def _token_mean_loss(
    masked_loss: Tensor, mask: Tensor, num_sequences: int, num_tokens: float | Tensor, max_completion_length: int | None
) -> Tensor:
    """Token mean: ``sum(loss * mask) / num_tokens``, every token weighs the same.

    ``bnpo`` divides by the completion-token count of the batch this process optimises in one step (all its
    micro-batches), so the loss does not depend on how that batch was split. ``dapo`` (Yu et al. 2025, sec. 3.3,
    eq. 8) divides by the count of the global batch (all processes, all gradient-accumulation steps), so every
    token of the optimizer step weighs the same across processes.
    """
    return masked_loss.sum() / _at_least_one(num_tokens)


def _budget_loss(
    masked_loss: Tensor, mask: Tensor, num_sequences: int, num_tokens: float | Tensor, max_completion_length: int | None
) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, sec. 3.2): ``sum(loss * mask) / (num_sequences * max_completion_length)``.

    A constant normaliser, so neither the sequence length nor the batch's token count rescales the gradient.
    """
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length >= 1, got {max_completion_length!r}")
    return masked_loss.sum() / (num_sequences * max_completion_length)


LOSS_AGGREGATORS.register("grpo", LossAggregation(_sequence_mean_loss, "sequences"))
LOSS_AGGREGATORS.register("bnpo", LossAggregation(_token_mean_loss, "process_tokens"))
LOSS_AGGREGATORS.register("dr_grpo", LossAggregation(_budget_loss, "budget"))
LOSS_AGGREGATORS.register("dapo", LossAggregation(_token_mean_loss, "global_tokens"))


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: str,
    *,
    num_sequences: int | None = None,
    num_tokens: float | Tensor | None = None,
    max_completion_length: int | None = None,
) -> Tensor:
    """Reduce a (B, T) per-token loss to the scalar to backpropagate, with the normaliser of ``loss_type``.

    With ``L = sum_t loss * mask`` per sequence:

    * ``"grpo"``: ``sum_i (L_i / max(|o_i|, 1)) / num_sequences`` (DeepSeekMath, Shao et al. 2024);
    * ``"bnpo"``: ``sum_i L_i / max(num_tokens, 1)``, num_tokens = completion tokens of this process's batch;
    * ``"dapo"``: same formula, num_tokens = completion tokens of the global batch, all processes and all
      accumulation steps (DAPO, Yu et al. 2025);
    * ``"dr_grpo"``: ``sum_i L_i / (num_sequences * max_completion_length)`` (Dr. GRPO, Liu et al. 2025).

    Micro-batching: the normalisers are totals over the whole batch, so when a batch is processed in
    micro-batches, passing the same ``num_sequences`` / ``num_tokens`` to every call makes the micro-batch losses
    sum to the loss of the whole batch (and their gradients to its gradient). The defaults compute them from the
    tensors given, i.e. treat them as the whole batch. The function divides by exactly what it is given: any
    averaging the framework adds on top (DDP averages gradients over processes; Lightning's automatic
    optimisation divides by ``accumulate_grad_batches``) is for the caller to compensate in the normaliser.

    Masked tokens contribute nothing, even if their loss is inf or NaN; a sequence whose mask is all zero
    contributes 0 (but still counts in ``num_sequences``).

    Args:
        per_token_loss: (B, T) loss per token, e.g. ``pg_loss + beta * approx_kl``.
        mask: (B, T) 1 for completion tokens that count, 0 for padding (bool, int or float 0/1).
        loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"``.
        num_sequences: sequences in the whole batch (``grpo``, ``dr_grpo``); default B.
        num_tokens: completion tokens in the whole batch (``bnpo``, ``dapo``); default ``mask.sum()``. A tensor
            (e.g. an all-reduced count) is accepted.
        max_completion_length: generation budget in tokens, required by ``dr_grpo``.

    Returns:
        Scalar loss, in the dtype of ``per_token_loss``.

    Raises:
        ValueError: unknown ``loss_type``, mismatched shapes, ``num_sequences < 1``, or ``dr_grpo`` without
            ``max_completion_length``.
    """
    aggregate = LOSS_AGGREGATORS[loss_type].reduce
    if per_token_loss.dim() != 2 or mask.shape != per_token_loss.shape:
        raise ValueError(
            f"per_token_loss and mask must both be (B, T), got {tuple(per_token_loss.shape)} and {tuple(mask.shape)}"
        )
    if num_sequences is None:
        num_sequences = per_token_loss.shape[0]
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    mask = mask != 0
    if num_tokens is None:
        num_tokens = mask.sum()
    # where(), not loss * mask: padding positions may hold inf/NaN (0 * inf = NaN).
    masked_loss = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss))
    return aggregate(masked_loss, mask.to(per_token_loss.dtype), num_sequences, num_tokens, max_completion_length)


def loss_normaliser(loss_type: str) -> LossNormaliser:
    """What ``loss_type`` divides by (:data:`LossNormaliser`): a caller reduces a count across processes only when
    the variant needs it (``"global_tokens"``).

    Raises:
        ValueError: unknown ``loss_type``.
    """
    return LOSS_AGGREGATORS[loss_type].normaliser


# --------------------------------------------------------------------------------------------------------------
# The GRPO loss and its statistics
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchTotals:
    """Counts of the whole batch that a micro-batch's loss and statistics are divided by (None: computed from the
    tensors given, as if they were the whole batch). Given the whole batch's, micro-batch losses and statistics add
    up to the whole batch's, and the gradient does not depend on the micro-batch size (:func:`aggregate_loss`).

    Args:
        num_sequences: sequences in the whole batch (``grpo``, ``dr_grpo``).
        num_tokens: completion tokens in the whole batch (``bnpo``; for ``dapo`` the global batch's, which the caller
            reduces across processes).
        max_completion_length: the generation budget in tokens (``dr_grpo``).
        stats_num_tokens: divisor of the statistics' token sums (None: ``max(mask.sum(), 1)``, token means).
    """

    num_sequences: int | None = None
    num_tokens: float | Tensor | None = None
    max_completion_length: int | None = None
    stats_num_tokens: float | Tensor | None = None


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    config: LossConfig,
    *,
    ref_logps: Tensor | None = None,
    entropy: Tensor | None = None,
    policy_mask: Tensor | None = None,
    importance_weights: Tensor | None = None,
    totals: BatchTotals = BatchTotals(),  # noqa: B008 (frozen)
    entropy_coef: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss of a batch or micro-batch, and its token statistics (DeepSeekMath, Shao et al. 2024, eq. 3).

    ``per_token_loss = pg_loss + beta * approx_kl - entropy_coef * entropy`` (``pg_loss`` the registered
    ``config.policy_loss``, :data:`POLICY_LOSSES`: by default ``ppo``, :func:`clipped_surrogate` with the config's clip
    ranges, ``delta``, ``dual_clip`` and ``importance_sampling_level``; :func:`kl_estimate` with ``kl_estimator``,
    ``k3`` by default, times :func:`importance_ratio` with ``kl_bias_correction``; with ``kl_in_reward`` the KL is in
    the advantages instead and has no term here), reduced by
    :func:`aggregate_loss` with the normaliser of ``config.loss_type`` and the counts of ``totals``. The options come
    as the typed ``LossConfig``, whole: an option of the objective is a field there and its use here.

    The entropy term is verl's entropy bonus (``verl/workers/actor/dp_actor.py``: ``entropy_agg = agg_loss(entropy,
    response_mask, loss_agg_mode)``, then ``policy_loss -= entropy_agg * entropy_coeff``): the same aggregation as the
    policy loss, which, being linear, may take it per token. It counts every token of ``mask``, as verl's
    ``response_mask``, not only those of ``policy_mask`` (TRL's bonus counts only those, and takes their token mean
    whatever the ``loss_type``). With ``entropy_coef`` 0 there is no term: the loss is the same to the bit.

    ``mask`` leaves tokens out of everything: the loss, its normaliser and the statistics (truncated completions
    left out by ``mask_truncated_completions``, :func:`drop_truncated`, still count in ``num_sequences``, not in
    ``num_tokens``, as in TRL). ``policy_mask`` and ``importance_weights`` act on the policy term only
    (:func:`_policy_tokens_only`, :func:`_importance_weighted`): the KL term, the normaliser and the statistics count
    every token of ``mask``, unweighted.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy.
        old_logps: (B, T) the same under the policy that sampled them; None: ``logps`` detached (ratio 1).
        advantages: (B,) one advantage per sequence.
        mask: (B, T) 1 for completion tokens that count, 0 for padding (bool, int or float 0/1).
        config: the objective's options.
        ref_logps: (B, T) the same under the frozen reference; needed when ``config.beta > 0`` (None: no KL term).
        entropy: (B, T) the policy's entropy per token, for the statistics and the entropy term, which needs it with
            its gradient (None: left out; then ``entropy_coef`` must be 0).
        policy_mask, importance_weights: (B, T) (None: every token of ``mask``; weight 1); totals: :class:`BatchTotals`.
        entropy_coef: the entropy term's weight (None: ``config.entropy_coef``; an adaptive one is the caller's).

    Returns ``(loss, stats)``: the scalar to backpropagate, and detached token means of the policy loss's statistics
    (``ppo``: ``clip_low``, ``clip_high``, ``clip_delta`` with ``delta``, ``clip_ratio/dual`` with ``dual_clip``;
    ``cispo``: ``clip_ratio/cispo``; ``sapo``: ``sapo/gate``; ``gmpo``: ``clip_ratio/gmpo``), ``kl`` (with
    ``ref_logps``), ``entropy`` (with ``entropy``), and ``loss``. Raises
    ValueError on mismatched shapes, ``beta > 0`` without ``ref_logps``, or what the functions it calls refuse.
    """
    if config.beta > 0 and ref_logps is None:
        raise ValueError(f"beta={config.beta} weighs a KL term, which needs ref_logps; pass them, or set beta=0")
    entropy_coef = config.entropy_coef if entropy_coef is None else entropy_coef
    if entropy_coef and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} weighs an entropy term, which needs entropy; pass it")
    old_logps = logps.detach() if old_logps is None else old_logps
    pg_loss, observed = POLICY_LOSSES[config.policy_loss](logps, old_logps, advantages, mask, config)
    per_token_loss = pg_loss = _importance_weighted(_policy_tokens_only(pg_loss, policy_mask), importance_weights)
    if ref_logps is not None:
        approx_kl = kl_estimate(logps, ref_logps, config.kl_estimator)
        if config.kl_bias_correction:
            approx_kl = approx_kl * importance_ratio(logps, old_logps, mask, config.importance_sampling_level)
        observed["kl"] = approx_kl
        if not config.kl_in_reward:  # else beta * KL was taken from the rewards, before the advantages
            per_token_loss = pg_loss + config.beta * approx_kl
    if entropy is not None:
        observed["entropy"] = entropy
        if entropy_coef:
            per_token_loss = per_token_loss - entropy_coef * entropy.to(per_token_loss.dtype)
    loss = aggregate_loss(
        per_token_loss, mask, config.loss_type, num_sequences=totals.num_sequences, num_tokens=totals.num_tokens,
        max_completion_length=totals.max_completion_length,
    )  # fmt: skip
    stats = {"loss": loss.detach(), **_token_means(observed, mask, totals.stats_num_tokens, logps.dtype)}
    return loss, stats


def _policy_tokens_only(pg_loss: Tensor, policy_mask: Tensor | None) -> Tensor:
    """The policy term on the tokens of ``policy_mask`` only, 0 elsewhere: ``top_entropy_quantile``'s tokens
    (:func:`high_entropy_mask`, Wang et al. 2025), as TRL's ``top_entropy_quantile`` masks its policy loss."""
    if policy_mask is None:
        return pg_loss
    if policy_mask.shape != pg_loss.shape:
        raise ValueError(
            f"policy_mask must be (B, T) like the mask, got {tuple(policy_mask.shape)} and {tuple(pg_loss.shape)}"
        )
    return torch.where(policy_mask != 0, pg_loss, torch.zeros_like(pg_loss))


def _importance_weighted(pg_loss: Tensor, importance_weights: Tensor | None) -> Tensor:
    """The policy term times each token's importance weight, used detached: the truncated importance-sampling
    correction of a rollout another engine sampled (:func:`~grpo_lightning.engines.correction.
    truncated_importance_weights`), TRL's ``vllm_importance_sampling_mode="token_truncate"``, which weights the policy
    loss after its entropy mask and then adds ``beta * per_token_kl``."""
    if importance_weights is None:
        return pg_loss
    if importance_weights.shape != pg_loss.shape:
        raise ValueError(
            f"importance_weights must be (B, T) like the mask, got {tuple(importance_weights.shape)} and "
            f"{tuple(pg_loss.shape)}"
        )
    return pg_loss * importance_weights.detach().to(pg_loss.dtype)


def _token_means(
    values: dict[str, Tensor], mask: Tensor, num_tokens: float | Tensor | None, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Each (B, T) value summed over the masked tokens, divided by ``num_tokens`` (default ``max(mask.sum(), 1)``)."""
    keep = mask != 0
    if num_tokens is None:
        num_tokens = keep.to(dtype).sum().clamp_min(1)
    means = {}
    for name, value in values.items():
        if value.shape != mask.shape:
            raise ValueError(f"{name} must be (B, T) like the mask, got {tuple(value.shape)} and {tuple(mask.shape)}")
        # where(), not value * mask: padding may hold inf/NaN (the product would be NaN).
        means[name] = torch.where(keep, value.detach().to(dtype), 0.0).sum() / num_tokens
    return means


def adaptive_entropy_coef(
    coef: float, entropy: float, target: float, coef_min: float, coef_max: float, delta: float
) -> float:
    """The entropy coefficient after an optimizer step of adaptive entropy control (Skywork-OR1, He et al. 2025, arXiv
    2505.22312, sec. 3.2; TRL's ``use_adaptive_entropy``, ``trl/trainer/grpo_trainer.py``, ``_compute_loss``).

    ``coef + delta`` (at most ``coef_max``) when the step's mean token entropy is at or below ``target``, else
    ``coef - delta`` (at least ``coef_min``), as TRL: ``entropy <= target`` moves it up.

    Args:
        coef: the coefficient before the step.
        entropy: the step's mean entropy per completion token, over every process.
        target: ``loss.entropy_target``.
        coef_min, coef_max, delta: ``loss.entropy_coef_min``, ``loss.entropy_coef_max``, ``loss.entropy_coef_delta``.
    """
    if entropy <= target:
        return min(coef + delta, coef_max)
    return max(coef - delta, coef_min)


def gated_entropy_coef(coef: float, last_entropy: float, target: float) -> float:
    """The coefficient a step applies under adaptive entropy control: ``coef`` while the last step's mean entropy is
    at or below ``target``, else 0 (Skywork-OR1's ``alpha_k = c_k * 1[e_k <= target]``; TRL applies its coefficient
    only then, and starts from an entropy of +inf: no bonus before the first measurement)."""
    return coef if last_entropy <= target else 0.0


# --------------------------------------------------------------------------------------------------------------
# Supervision from the gold solution
# --------------------------------------------------------------------------------------------------------------


def sft_coef_at(coef: float, decay_steps: int | None, step: int) -> float:
    """The gold-supervision weight at optimizer step ``step`` (0-based): ``coef``, or with ``decay_steps`` its linear
    decay to 0, ``coef * max(0, 1 - step / decay_steps)`` (0 from step ``decay_steps`` on)."""
    if decay_steps is None:
        return coef
    return coef * max(0.0, 1.0 - step / decay_steps)


def gold_nll(logps: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> Tensor:
    """The negative log-likelihood of gold completions, a token mean: ``-sum(logps over mask) / num_tokens``.

    Args:
        logps: (B, T) the policy's log-probs of the gold tokens.
        mask: (B, T) the gold tokens (EOS included), 0 on padding.
        num_tokens: the divisor (None: ``max(mask.sum(), 1)``); given the whole batch's count, the micro-batches'
            values add up to the whole batch's.
    """
    _check_same_shape(logps, mask)
    keep = mask != 0
    if num_tokens is None:
        num_tokens = keep.sum().clamp_min(1).to(logps.dtype)
    return -torch.where(keep, logps, torch.zeros_like(logps)).sum() / num_tokens


# --------------------------------------------------------------------------------------------------------------
# Log-probs, entropy and masks from model outputs
# --------------------------------------------------------------------------------------------------------------

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """Log-probs of the chosen tokens, ``log_softmax(logits)[..., index]``, without a full (B, T, V) log-softmax.

    ``log_softmax(x)_i = x_i - logsumexp(x)``: gather the chosen logit and subtract the row's logsumexp, one row
    of the batch at a time so the temporary is (T, V), not (B, T, V). In float16/bfloat16 the logsumexp is not
    accurate enough, so each row's log-softmax is computed in float32 instead.

    Args:
        logits: (B, T, V) unnormalised scores.
        index: (B, T) token ids to read.

    Returns:
        (B, T) log-probs; float32 for half-precision logits, else the dtype of ``logits``.

    Raises:
        ValueError: ``index`` is not ``logits.shape[:-1]``.
    """
    if logits.dim() != 3 or index.shape != logits.shape[:-1]:
        raise ValueError(
            f"expected logits (B, T, V) and index (B, T), got {tuple(logits.shape)} and {tuple(index.shape)}"
        )
    index = index.long().unsqueeze(-1)
    rows = []
    if logits.dtype in _HALF_DTYPES:
        for row_logits, row_index in zip(logits, index, strict=True):
            row_logps = torch.log_softmax(row_logits.float(), dim=-1)
            rows.append(row_logps.gather(-1, row_index).squeeze(-1))
    else:
        for row_logits, row_index in zip(logits, index, strict=True):
            chosen = row_logits.gather(-1, row_index).squeeze(-1)
            rows.append(chosen - torch.logsumexp(row_logits, dim=-1))
    if not rows:
        out_dtype = torch.float32 if logits.dtype in _HALF_DTYPES else logits.dtype
        return logits.new_zeros(logits.shape[:-1], dtype=out_dtype)
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor, chunk_size: int = 128) -> Tensor:
    """Entropy of ``softmax(logits)`` per position, ``-sum_v p_v log p_v``, computed ``chunk_size`` rows at a time.

    Chunking over the B * T positions bounds the temporaries to (chunk_size, V). Half-precision logits are
    upcast to float32 per chunk. Vocabulary entries with ``-inf`` logits (p = 0) contribute 0, not NaN.

    Args:
        logits: (B, T, V) unnormalised scores.
        chunk_size: positions per chunk.

    Returns:
        (B, T) entropies in nats; float32 for half-precision logits, else the dtype of ``logits``.

    Raises:
        ValueError: ``chunk_size < 1`` or logits is not 3-D.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if logits.dim() != 3:
        raise ValueError(f"expected logits (B, T, V), got {tuple(logits.shape)}")
    out_dtype = torch.float32 if logits.dtype in _HALF_DTYPES else logits.dtype
    flat = logits.reshape(-1, logits.shape[-1])
    entropies = []
    for chunk in flat.split(chunk_size):
        logp = torch.log_softmax(chunk.to(out_dtype), dim=-1)
        # p * log p -> 0 as p -> 0; clamping -inf keeps 0 * -inf from becoming NaN (in forward and backward).
        logp_finite = logp.clamp_min(torch.finfo(out_dtype).min)
        entropies.append(-(logp.exp() * logp_finite).sum(dim=-1))
    if not entropies:
        return logits.new_zeros(logits.shape[:-1], dtype=out_dtype)
    return torch.cat(entropies).view(logits.shape[:-1])


def _is_eos(completion_ids: Tensor, eos_token_ids: int | Sequence[int]) -> Tensor:
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be (B, T), got {tuple(completion_ids.shape)}")
    ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    if not ids:
        raise ValueError("eos_token_ids is empty; give at least one end-of-sequence token id")
    return torch.isin(completion_ids, torch.tensor(ids, dtype=completion_ids.dtype, device=completion_ids.device))


def completion_mask(completion_ids: Tensor, eos_token_ids: int | Sequence[int]) -> Tensor:
    """Mask of the tokens that belong to each completion: up to and including its first EOS.

    Everything generated after the first EOS (more text, padding) is 0; a row without EOS (truncated at the
    generation budget) is all 1.

    Args:
        completion_ids: (B, T) generated token ids, prompt excluded.
        eos_token_ids: one id or several ids that end a completion (e.g. ``<|im_end|>`` and ``<|endoftext|>``).

    Returns:
        (B, T) int64 mask of 0/1, the convention of ``attention_mask``.

    Raises:
        ValueError: completion_ids is not 2-D, or eos_token_ids is empty.
    """
    is_eos = _is_eos(completion_ids, eos_token_ids).long()
    # A token is kept when no EOS comes strictly before it.
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


def is_truncated(completion_ids: Tensor, eos_token_ids: int | Sequence[int]) -> Tensor:
    """Which completions hit the length budget before emitting any EOS token.

    Args:
        completion_ids: (B, T) generated token ids, prompt excluded.
        eos_token_ids: one id or several ids that end a completion.

    Returns:
        (B,) bool, True where the row contains no EOS.

    Raises:
        ValueError: completion_ids is not 2-D, or eos_token_ids is empty.
    """
    return ~_is_eos(completion_ids, eos_token_ids).any(dim=1)


def drop_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """The loss mask without truncated completions (DAPO's overlong filtering, Yu et al. 2025, sec. 3.4).

    A completion cut at the length budget is not judged on an ending it never reached: its tokens leave the loss.
    Its reward still counts for its group's advantages (the caller computes those from every completion, as TRL's
    ``mask_truncated_completions`` does), and it still counts as a sequence for the ``grpo`` and ``dr_grpo``
    normalisers (see :func:`grpo_loss`).

    Args:
        mask: (B, T) loss mask (bool, int or float 0/1).
        truncated: (B,) bool, True for completions without EOS (:func:`is_truncated`).

    Returns:
        (B, T) the mask, same dtype, with the rows of truncated completions set to 0.

    Raises:
        ValueError: ``truncated`` is not (B,).
    """
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be (B,) = ({mask.shape[0]},), got {tuple(truncated.shape)}")
    return torch.where(truncated.bool().unsqueeze(1), torch.zeros_like(mask), mask)


def entropy_quantile_threshold(entropies: Tensor, top_quantile: float) -> Tensor:
    """The entropy above which the ``top_quantile`` fraction of tokens lies (Wang et al. 2025, "Beyond the 80/20
    Rule", arXiv 2506.01939; TRL's ``top_entropy_quantile``).

    The ``1 - top_quantile`` quantile of the values given, with linear interpolation between order statistics (the
    definition of ``torch.quantile`` and ``numpy.quantile``, computed here by a sort, with no size limit). Pass the
    entropies of every completion token of the batch, from every process, so that the threshold is the batch's.

    Args:
        entropies: (K,) entropies of the tokens that count.
        top_quantile: rho in [0, 1]: 1 keeps every token (the threshold is the smallest entropy), 0 only the highest.

    Returns:
        Scalar threshold in the dtype of ``entropies``; +inf when there are no values (no token is kept).

    Raises:
        ValueError: ``entropies`` is not 1-D, or ``top_quantile`` is outside [0, 1].
    """
    if entropies.dim() != 1:
        raise ValueError(f"entropies must be 1-D (the tokens that count), got shape {tuple(entropies.shape)}")
    if not 0.0 <= top_quantile <= 1.0:
        raise ValueError(f"top_quantile must be in [0, 1], got {top_quantile}")
    if entropies.numel() == 0:
        return entropies.new_tensor(float("inf"))
    ordered = entropies.sort().values
    position = (1.0 - top_quantile) * (ordered.numel() - 1)
    below = int(position)
    above = min(below + 1, ordered.numel() - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def high_entropy_mask(entropy: Tensor, mask: Tensor, threshold: float | Tensor) -> Tensor:
    """(B, T) bool: tokens of ``mask`` whose entropy is at least ``threshold`` (:func:`entropy_quantile_threshold`).

    Raises:
        ValueError: shapes differ.
    """
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy must be (B, T) like the mask, got {tuple(entropy.shape)} and {tuple(mask.shape)}")
    return (entropy >= threshold) & (mask != 0)
