"""Policy terms other than PPO's clipped surrogate, as pure tensor functions: CISPO, SAPO and GMPO.

Each takes the log importance ratio that :func:`grpo_lightning.algorithms.grpo_loss` formed (at the configured
``importance_sampling_level``) and returns the (B, T) per-token policy loss with its (B, T) statistics, so that the
loss aggregation (``loss.loss_type``) stays one separate choice: the policy loss says what each token contributes, the
aggregation what the token contributions are divided by, and any pair of the two is the same two steps (a choice
that would need a third step, such as GMPO's sequence mean under a token-sum aggregation, is refused by the config).
They are registered, beside ``ppo``, in :data:`grpo_lightning.algorithms.POLICY_LOSSES`; the option is
``loss.policy_loss``.

Shapes: ``log_ratio``, ``logps``, ``mask`` (B, T); ``advantages`` (B, 1), one per sequence, constant (detached by the
caller). The returned losses are unmasked; masked positions are left out by the aggregation and the statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cispo_loss", "gmpo_loss", "sapo_loss"]


def cispo_loss(
    logps: Tensor, log_ratio: Tensor, advantages: Tensor, max_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4; TRL's ``loss_type="cispo"``): REINFORCE with a capped,
    stop-gradient importance weight, ``pg_loss = -sg(min(ratio, max_weight)) * A * logp``.

    The weight is bounded above only, by an absolute cap, as TRL does (``clamp(coef_1, max=epsilon_high)``, its
    ``epsilon_high`` documented as ScaleRL's epsilon_max, recommended 5.0). Unlike PPO's clip, no token loses its
    gradient: a capped token still moves, with weight ``max_weight``. The gradient is ``-w * A`` per token.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy (the term's gradient goes through them).
        log_ratio: (B, T) log importance ratio (used detached).
        advantages: (B, 1).
        max_weight: the cap of the importance weight.

    Returns:
        ``(pg_loss, stats)``: the (B, T) loss and ``clip_ratio/cispo``, (B, T) bool, tokens whose weight was capped
        (any advantage sign: the weight is capped for both; TRL counts the positive-advantage ones only).
    """
    ratio = torch.exp(log_ratio.detach())
    weight = torch.clamp(ratio, max=max_weight)
    return -weight * advantages * logps, {"clip_ratio/cispo": ratio > max_weight}


def sapo_loss(
    log_ratio: Tensor, advantages: Tensor, temperature_pos: float, temperature_neg: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025, arXiv 2511.20347; TRL's ``loss_type="sapo"``): a
    smooth gate instead of the hard clip, ``pg_loss = -f(ratio) * A`` with ``f(r) = (4 / tau) * sigmoid(tau * (r -
    1))``, ``tau = temperature_pos`` where ``A > 0`` and ``temperature_neg`` elsewhere (TRL's ``torch.where(advantages
    > 0, ...)``).

    ``f'(r) = 4 s (1 - s)`` with ``s = sigmoid(tau (r - 1))``: 1 on-policy (the plain policy gradient at ratio 1), and
    decaying smoothly as the ratio leaves 1, faster for the larger temperature (the paper takes ``temperature_neg >
    temperature_pos``: negative updates are the less stable ones).

    Args:
        log_ratio: (B, T) log importance ratio.
        advantages: (B, 1).
        temperature_pos, temperature_neg: tau for positive and for the other advantages (> 0).

    Returns:
        ``(pg_loss, stats)``: the (B, T) loss and ``sapo/gate``, the (B, T) gradient gate ``4 s (1 - s)`` in (0, 1],
        the factor by which SAPO scales each token's plain policy gradient ``-A * ratio``.
    """
    positive = advantages > 0
    tau = torch.where(positive, advantages.new_full((), temperature_pos), advantages.new_full((), temperature_neg))
    soft = torch.sigmoid(tau * (torch.exp(log_ratio) - 1.0))
    pg_loss = -(soft * 4.0 / tau) * advantages
    return pg_loss, {"sapo/gate": (4.0 * soft * (1.0 - soft)).detach()}


def gmpo_loss(
    log_ratio: Tensor, advantages: Tensor, mask: Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (Geometric-Mean Policy Optimization, Zhao et al. 2025, arXiv 2507.20673; verl's ``loss_mode:
    geo_mean``): per sequence, ``-A * exp(mean_t clip'(log r_t))``, the geometric mean of the token ratios, each clipped
    in log space to ``[-epsilon_low, epsilon_high]`` on the pessimistic side only (as verl: ``sgn(A) * min(sgn(A) log r,
    sgn(A) clamp(log r))``, so a positive advantage caps the ratio above, a negative one below).

    The clip range is a log range: the paper widens PPO's to ``(-0.4, 0.4)`` (ratios ``e^-0.4 .. e^0.4``); set
    ``epsilon_low`` and ``epsilon_high`` for it. The sequence loss is given to each of the sequence's tokens, so that
    ``loss_type: grpo`` (the mean of each sequence's token mean) is the paper's mean over sequences; a sequence with
    no token gets ``-A`` there (ratio 1), which the aggregation leaves out.

    Args:
        log_ratio: (B, T) per-token log importance ratio.
        advantages: (B, 1).
        mask: (B, T) the tokens of each sequence.
        epsilon_low, epsilon_high: the log-space clip range.

    Returns:
        ``(pg_loss, stats)``: the (B, T) loss (each row its sequence's) and ``clip_ratio/gmpo``, (B, T) bool, the
        tokens whose clip is active (removing their gradient): ``log r > epsilon_high`` with ``A > 0``, ``log r <
        -epsilon_low`` with ``A < 0``.
    """
    keep = mask != 0
    # where(), not a product: padding may hold anything (a -inf log-prob would make 0 * inf a NaN)
    log_ratio = torch.where(keep, log_ratio, torch.zeros_like(log_ratio))
    sign = torch.sign(advantages)
    clamped = torch.clamp(log_ratio, -epsilon_low, epsilon_high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clamped)
    log_mean = pessimistic.sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1)
    sequence_loss = -advantages * torch.exp(log_mean)
    clipped = ((log_ratio > epsilon_high) & (advantages > 0)) | ((log_ratio < -epsilon_low) & (advantages < 0))
    return sequence_loss.expand_as(log_ratio), {"clip_ratio/gmpo": clipped}
