"""The engines' mismatch, as math: how far the sampling engine's log-probs are from the policy's, and the truncated
importance-sampling weights that correct for it (pure tensor functions).

A rollout sampled by another engine (vLLM's kernels, its dtype) comes from a distribution slightly different from
the policy's own, even with the same weights. Truncated importance sampling (Yao et al. 2025, "Your efficient RL
framework secretly brings you off-policy RL training"; TRL's ``vllm_importance_sampling_correction``) weights each
completion token's loss by ``min(pi_old(token) / pi_engine(token), C)``, the ratio of the policy that the update is
relative to over the engine that sampled the token, capped at C so that a rare token cannot dominate the step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def engine_logp_gap(engine_logps: Tensor, policy_logps: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute difference of the two log-probs over the completion tokens (``mask`` 1), a scalar.

    Args:
        engine_logps: (N, C) log-probs of the sampled tokens under the engine that sampled them.
        policy_logps: (N, C) log-probs of the same tokens under the policy.
        mask: (N, C) 1 for completion tokens, 0 for padding.

    Returns:
        A 0-dim tensor in the log-probs' dtype; 0 when there is no token.
    """
    weights = mask.to(engine_logps.dtype)
    gap = (engine_logps - policy_logps).abs() * weights
    return gap.sum() / weights.sum().clamp(min=1)


def truncated_importance_weights(old_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Per-token weights ``min(exp(old_logps - engine_logps), cap)``, 0 on padding; no gradient flows through them.

    Args:
        old_logps: (N, C) log-probs of the sampled tokens under the policy before the update (the old policy).
        engine_logps: (N, C) their log-probs under the engine that sampled them.
        mask: (N, C) 1 for completion tokens, 0 for padding.
        cap: C > 0, the most any token's weight can be.

    Returns:
        (N, C) weights in the log-probs' dtype, to multiply each token's loss with.
    """
    if not cap > 0:
        raise ValueError(f"cap must be positive, not {cap}")
    log_ratio = (old_logps.detach() - engine_logps.detach()).masked_fill(~mask.bool(), 0.0)
    return torch.clamp(log_ratio.exp(), max=cap) * mask.to(log_ratio.dtype)


__all__ = ["engine_logp_gap", "truncated_importance_weights"]
