"""The engines' mismatch, as math: how far the sampling engine's log-probs are from the policy's, the importance
weights and masks that correct for it, and the statistics that measure it (pure tensor functions).

A rollout sampled by another engine (vLLM's kernels, its dtype) comes from a distribution slightly different from
the policy's own, even with the same weights. The correction weights each completion token's policy loss by the
ratio ``rho = pi_old(token) / pi_engine(token)`` of the policy that the update is relative to over the engine that
sampled the token, bounded so that a rare token cannot dominate the step (Yao et al. 2025, "Your efficient RL
framework secretly brings you off-policy RL training"). :data:`IMPORTANCE_SAMPLING_MODES` holds the four ways TRL's
``vllm_importance_sampling_mode`` bounds it (``trl/trainer/grpo_trainer.py``, ``_generate_and_score_completions``),
each between ``C_min`` (``vllm.importance_sampling_min``, None: no lower bound) and ``C`` (``vllm.
importance_sampling_cap``):

* ``token_truncate``: ``clamp(rho_t, C_min, C)`` per token (TIS);
* ``token_mask``: ``rho_t`` where ``C_min <= rho_t <= C``, else 0 (masked importance sampling; with ``C_min``, the
  two-sided mask of IcePop);
* ``sequence_truncate``: ``clamp(rho_seq, C_min, C)`` for every token of the sequence, where ``rho_seq =
  exp(sum_t log rho_t)`` is the ratio of the whole sequence's probabilities (a sum, not a mean, as TRL's);
* ``sequence_mask``: ``rho_seq`` where ``C_min <= rho_seq <= C``, else 0, for every token of the sequence.

:func:`off_policy_sequence_mask` is DeepSeek-V3.2's off-policy sequence masking (arXiv 2512.02556, eq. 9; TRL's
``off_policy_mask_threshold``, ``GRPOTrainer.get_off_policy_mask``). :func:`mismatch_sums` and :func:`mismatch_metrics`
are the mismatch statistics ms-swift logs (``_compute_rollout_offpolicy_metrics`` in
``swift/rlhf_trainers/grpo_trainer.py``; its "Training-Inference-Mismatch" page).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo_lightning.registry import Registry

#: |log rho| beyond which chi2 and ESS clamp the log-ratio, as ms-swift's ``SAFETY_BOUND``: exp(2 * 20) is far from
#: overflowing, and a token that far off dominates the statistics anyway.
LOG_RATIO_BOUND = 20.0


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


# --------------------------------------------------------------------------------------------------------------
# Importance weights, by vllm.importance_sampling_mode
# --------------------------------------------------------------------------------------------------------------

#: The signature of a mode's weights: ``(old_logps, engine_logps, mask, cap, minimum) -> (N, C) weights``, 0 on
#: padding, with no gradient.
ImportanceWeights = Callable[[Tensor, Tensor, Tensor, float, float | None], Tensor]


@dataclass(frozen=True)
class CorrectionMode:
    """A ``vllm.importance_sampling_mode``: its weights, and whether it masks (sets weights to 0) or truncates."""

    weights: ImportanceWeights
    masks: bool


#: ``vllm.importance_sampling_mode``: how the engines' mismatch correction bounds the importance ratio.
IMPORTANCE_SAMPLING_MODES: Registry[CorrectionMode] = Registry("model.vllm.importance_sampling_mode")


def _log_ratio(old_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> Tensor:
    """(N, C) ``log rho = logp_old - logp_engine`` on the completion tokens, 0 on padding (which may hold -inf)."""
    return (old_logps.detach() - engine_logps.detach()).masked_fill(~mask.bool(), 0.0)


def _check_bounds(cap: float, minimum: float | None) -> None:
    if not cap > 0:
        raise ValueError(f"cap must be positive, not {cap}")
    if minimum is not None and not 0 < minimum < cap:
        raise ValueError(f"minimum must be in (0, cap={cap}), not {minimum}")


def _kept(ratio: Tensor, cap: float, minimum: float | None) -> Tensor:
    """Where ``minimum <= ratio <= cap`` (TRL masks what is strictly outside the bounds)."""
    inside = ratio <= cap
    return inside if minimum is None else inside & (ratio >= minimum)


def truncated_importance_weights(
    old_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float, minimum: float | None = None
) -> Tensor:
    """``token_truncate``: per-token weights ``clamp(exp(old_logps - engine_logps), minimum, cap)``, 0 on padding; no
    gradient flows through them.

    Args:
        old_logps: (N, C) log-probs of the sampled tokens under the policy before the update (the old policy).
        engine_logps: (N, C) their log-probs under the engine that sampled them.
        mask: (N, C) 1 for completion tokens, 0 for padding.
        cap: C > 0, the most any token's weight can be.
        minimum: the least any token's weight can be, in (0, C) (None: no lower bound).

    Returns:
        (N, C) weights in the log-probs' dtype, to multiply each token's loss with.
    """
    _check_bounds(cap, minimum)
    log_ratio = _log_ratio(old_logps, engine_logps, mask)
    return torch.clamp(log_ratio.exp(), min=minimum, max=cap) * mask.to(log_ratio.dtype)


def masked_importance_weights(
    old_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float, minimum: float | None = None
) -> Tensor:
    """``token_mask``: per-token weights ``rho_t = exp(old_logps - engine_logps)`` where ``minimum <= rho_t <= cap``,
    0 elsewhere and on padding; no gradient. Arguments as :func:`truncated_importance_weights`."""
    _check_bounds(cap, minimum)
    log_ratio = _log_ratio(old_logps, engine_logps, mask)
    ratio = log_ratio.exp()
    return torch.where(_kept(ratio, cap, minimum), ratio, 0.0) * mask.to(log_ratio.dtype)


def _sequence_ratio(old_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> Tensor:
    """(N, 1) ``rho_seq = exp(sum_t log rho_t)`` over each sequence's completion tokens."""
    return _log_ratio(old_logps, engine_logps, mask).sum(dim=-1, keepdim=True).exp()


def sequence_truncated_importance_weights(
    old_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float, minimum: float | None = None
) -> Tensor:
    """``sequence_truncate``: ``clamp(rho_seq, minimum, cap)`` on every completion token of the sequence, 0 on padding;
    no gradient. Arguments as :func:`truncated_importance_weights`."""
    _check_bounds(cap, minimum)
    ratio = _sequence_ratio(old_logps, engine_logps, mask)
    return torch.clamp(ratio, min=minimum, max=cap) * mask.to(ratio.dtype)


def sequence_masked_importance_weights(
    old_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float, minimum: float | None = None
) -> Tensor:
    """``sequence_mask``: ``rho_seq`` on every completion token of a sequence with ``minimum <= rho_seq <= cap``, 0 on
    the other sequences and on padding; no gradient. Arguments as :func:`truncated_importance_weights`."""
    _check_bounds(cap, minimum)
    ratio = _sequence_ratio(old_logps, engine_logps, mask)
    return torch.where(_kept(ratio, cap, minimum), ratio, 0.0) * mask.to(ratio.dtype)


IMPORTANCE_SAMPLING_MODES.register("token_truncate", CorrectionMode(truncated_importance_weights, masks=False))
IMPORTANCE_SAMPLING_MODES.register("token_mask", CorrectionMode(masked_importance_weights, masks=True))
IMPORTANCE_SAMPLING_MODES.register(
    "sequence_truncate", CorrectionMode(sequence_truncated_importance_weights, masks=False)
)
IMPORTANCE_SAMPLING_MODES.register("sequence_mask", CorrectionMode(sequence_masked_importance_weights, masks=True))


# --------------------------------------------------------------------------------------------------------------
# Off-policy sequence masking (DeepSeek-V3.2)
# --------------------------------------------------------------------------------------------------------------


def off_policy_sequence_mask(
    advantages: Tensor, logps: Tensor, engine_logps: Tensor, mask: Tensor, threshold: float
) -> Tensor:
    """The sequences the policy term keeps: those with ``A_i >= 0`` or ``KL_i <= threshold``, where ``KL_i`` is the
    mean of ``logp_engine - logp`` over the sequence's tokens (DeepSeek-V3.2, arXiv 2512.02556, eq. 9; TRL's
    ``get_off_policy_mask``: a sequence with a negative advantage that the policy has moved far from is left out).

    Args:
        advantages: (N,) one advantage per sequence.
        logps: (N, C) the current policy's log-probs (used detached).
        engine_logps: (N, C) the engine's log-probs of the sampled tokens.
        mask: (N, C) 1 for the tokens that count, 0 for padding.
        threshold: delta >= 0.

    Returns:
        (N,) bool, True for a sequence that keeps its policy term.
    """
    weights = mask.to(logps.dtype)
    difference = torch.where(mask.bool(), engine_logps.detach().to(logps.dtype) - logps.detach(), 0.0)
    mean_kl = difference.sum(-1) / weights.sum(-1).clamp(min=1)
    return (advantages.to(mean_kl.device) >= 0) | (mean_kl <= threshold)


# --------------------------------------------------------------------------------------------------------------
# Mismatch statistics (ms-swift's rollout-correction metrics)
# --------------------------------------------------------------------------------------------------------------

#: The entries of :func:`mismatch_sums`, in order.
MISMATCH_SUMS = ("tokens", "log_ratio", "ratio", "ratio_squared", "sequences", "sequence_ppl_ratio")


def mismatch_sums(policy_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> Tensor:
    """The sums the mismatch statistics are made of, float64 (:data:`MISMATCH_SUMS`): summed over micro-batches and
    processes, :func:`mismatch_metrics` turns them into the statistics of the whole batch.

    With ``w_t = exp(logp_policy - logp_engine)`` over the completion tokens (``mask``), the log-ratio clamped to
    +-:data:`LOG_RATIO_BOUND` in ``w``: the token count N, ``sum log w_t``, ``sum w_t``, ``sum w_t^2``, the number of
    sequences with a token, and ``sum_i exp(mean_t(logp_engine) - mean_t(logp_policy))`` over them (each sequence's
    perplexity under the policy over its perplexity under the engine).

    Args:
        policy_logps: (N, C) the sampling policy's log-probs of the sampled tokens (the trainer's).
        engine_logps: (N, C) the engine's log-probs of them.
        mask: (N, C) 1 for completion tokens, 0 for padding.

    Returns:
        A (6,) float64 tensor.
    """
    keep = mask.bool()
    log_ratio = torch.where(keep, policy_logps.detach().double() - engine_logps.detach().double(), 0.0)
    ratio = torch.where(keep, log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp(), 0.0)
    lengths = keep.sum(-1).double()
    has_tokens = lengths > 0
    sequence_ppl_ratio = torch.exp(-log_ratio.sum(-1) / lengths.clamp(min=1))[has_tokens]
    return torch.stack(
        [
            lengths.sum(),
            log_ratio.sum(),
            ratio.sum(),
            ratio.square().sum(),
            has_tokens.double().sum(),
            sequence_ppl_ratio.sum(),
        ]
    )


def mismatch_metrics(sums: Tensor) -> dict[str, Tensor]:
    """The engines' mismatch over the tokens of :func:`mismatch_sums` (float64 scalars):

    * ``kl``: ``mean_t(logp_engine - logp_policy)``, the direct estimate of KL(pi_engine || pi_policy) from tokens the
      engine sampled (ms-swift's ``kl``);
    * ``chi2``: ``mean_t(w_t^2) - 1``, the chi-squared divergence chi2(pi_policy || pi_engine) (``chi2_token``);
    * ``ess``: ``(sum w_t)^2 / (N sum w_t^2)``, the effective sample size of the raw ratios as a share of N, in
      (0, 1] (ms-swift's ``1 / E[(w / E[w])^2]``, which it takes over its bounded correction weights);
    * ``ppl_ratio``: the mean over sequences of ``PPL_policy / PPL_engine``, with ``PPL = exp(-mean_t logp)`` over the
      sequence (``ppl_ratio``).

    With no token: 0, 0, 1 and 1, the values of two equal engines.
    """
    tokens, log_ratio, ratio, ratio_squared, sequences, sequence_ppl_ratio = sums.unbind()
    if float(tokens) == 0:
        zero, one = torch.zeros_like(tokens), torch.ones_like(tokens)
        return {"kl": zero, "chi2": zero, "ess": one, "ppl_ratio": one}
    return {
        "kl": -log_ratio / tokens,
        "chi2": ratio_squared / tokens - 1,
        "ess": ratio.square() / (tokens * ratio_squared),
        "ppl_ratio": sequence_ppl_ratio / sequences.clamp(min=1),
    }


__all__ = [
    "IMPORTANCE_SAMPLING_MODES",
    "MISMATCH_SUMS",
    "CorrectionMode",
    "engine_logp_gap",
    "masked_importance_weights",
    "mismatch_metrics",
    "mismatch_sums",
    "off_policy_sequence_mask",
    "sequence_masked_importance_weights",
    "sequence_truncated_importance_weights",
    "truncated_importance_weights",
]
