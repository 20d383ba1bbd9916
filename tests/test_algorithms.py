"""Tests of grpo_lightning.algorithms against plain float64 Python loops and hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_lightning.algorithms import (
    ADVANTAGE_SCALERS,
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_AGGREGATORS,
    BatchTotals,
    aggregate_loss,
    clipped_surrogate,
    completion_mask,
    compute_group_advantages,
    drop_truncated,
    entropy_from_logits,
    entropy_quantile_threshold,
    group_reward_std,
    grpo_loss,
    high_entropy_mask,
    is_truncated,
    kl_k3,
    loss_normaliser,
    selective_log_softmax,
)
from grpo_lightning.config import LossConfig

SCALE_MODES = ["group", "batch", "none"]
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
F64 = {"rtol": 1e-12, "atol": 1e-12}


def _grpo_loss(
    logps, old_logps, advantages, mask, loss_type="grpo", *, ref_logps=None, entropy=None, policy_mask=None,
    importance_weights=None, num_sequences=None, num_tokens=None, max_completion_length=None, stats_num_tokens=None,
    beta=0.0, **options,
):  # fmt: skip
    """:func:`grpo_loss` with its options given flat: the objective's as a ``LossConfig`` (``beta`` 0 unless given),
    the batch's counts as ``BatchTotals``."""
    config = LossConfig(loss_type=loss_type, beta=beta, **options)
    totals = BatchTotals(num_sequences, num_tokens, max_completion_length, stats_num_tokens)
    return grpo_loss(
        logps, old_logps, advantages, mask, config, ref_logps=ref_logps, entropy=entropy, policy_mask=policy_mask,
        importance_weights=importance_weights, totals=totals,
    )  # fmt: skip


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _padding_mask(batch: int, length: int, gen: torch.Generator, fully_padded_rows: int = 1) -> torch.Tensor:
    """(B, T) 0/1 mask with random lengths; the first ``fully_padded_rows`` rows are all padding."""
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[:fully_padded_rows] = 0
    return (torch.arange(length) < lengths[:, None]).long()


# ----------------------------------------------------------------------------------------------------------------
# Float64 loop references: Python floats and the math module, no torch expressions.
# ----------------------------------------------------------------------------------------------------------------


def _ref_std(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _ref_advantages(rewards: list[float], g: int, mode: str, eps: float) -> list[float]:
    batch_std = _ref_std(rewards)
    out = []
    for start in range(0, len(rewards), g):
        group = rewards[start : start + g]
        if all(r == group[0] for r in group):
            out.extend([0.0] * g)
            continue
        mean = sum(group) / g
        divisor = {"group": _ref_std(group) + eps, "batch": batch_std + eps, "none": 1.0}[mode]
        out.extend((r - mean) / divisor for r in group)
    return out


def _ref_surrogate(logps, old_logps, advantages, eps_low, eps_high):
    losses, low, high = [], [], []
    for row_logp, row_old, adv in zip(logps, old_logps, advantages, strict=True):
        loss_row, low_row, high_row = [], [], []
        for lp, olp in zip(row_logp, row_old, strict=True):
            ratio = math.exp(lp - olp)
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss_row.append(-min(ratio * adv, clipped * adv))
            low_row.append(ratio < 1 - eps_low and adv < 0)
            high_row.append(ratio > 1 + eps_high and adv > 0)
        losses.append(loss_row)
        low.append(low_row)
        high.append(high_row)
    return losses, low, high


def _ref_kl(logps, ref_logps):
    return [
        [math.exp(r - lp) - (r - lp) - 1 for lp, r in zip(row, ref_row, strict=True)]
        for row, ref_row in zip(logps, ref_logps, strict=True)
    ]


def _ref_aggregate(loss, mask, loss_type, num_sequences=None, num_tokens=None, max_completion_length=None):
    num_sequences = len(loss) if num_sequences is None else num_sequences
    token_sums, token_counts = [], []
    for row, mask_row in zip(loss, mask, strict=True):
        token_sums.append(sum(v for v, m in zip(row, mask_row, strict=True) if m))
        token_counts.append(sum(1 for m in mask_row if m))
    num_tokens = sum(token_counts) if num_tokens is None else num_tokens
    if loss_type == "grpo":
        return sum(s / max(c, 1) for s, c in zip(token_sums, token_counts, strict=True)) / num_sequences
    if loss_type in ("bnpo", "dapo"):
        return sum(token_sums) / max(num_tokens, 1)
    if loss_type == "dr_grpo":
        return sum(token_sums) / (num_sequences * max_completion_length)
    raise AssertionError(loss_type)


def _ref_grpo_loss(logps, old_logps, advantages, mask, loss_type, beta, ref_logps, entropy, eps_low, eps_high, **norms):
    """(loss, stats) of one batch: per-token surrogate plus beta * k3 KL, aggregated; statistics as token means."""
    pg_loss, low, high = _ref_surrogate(logps, old_logps, advantages, eps_low, eps_high)
    per_token = {"clip_low": low, "clip_high": high}
    loss = pg_loss
    if ref_logps is not None:
        per_token["kl"] = _ref_kl(logps, ref_logps)
        loss = [
            [v + beta * k for v, k in zip(*rows, strict=True)] for rows in zip(pg_loss, per_token["kl"], strict=True)
        ]
    if entropy is not None:
        per_token["entropy"] = entropy
    num_tokens = max(sum(1 for row in mask for m in row if m), 1)
    stats = {"loss": _ref_aggregate(loss, mask, loss_type, **norms)}
    for name, values in per_token.items():
        token_sum = 0.0
        for row, mask_row in zip(values, mask, strict=True):
            token_sum += sum(float(v) for v, m in zip(row, mask_row, strict=True) if m)
        stats[name] = token_sum / num_tokens
    return stats["loss"], stats


def _ref_log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def _ref_selective_log_softmax(logits, index):
    return [
        [_ref_log_softmax_row(vocab)[i] for vocab, i in zip(row, idx_row, strict=True)]
        for row, idx_row in zip(logits, index, strict=True)
    ]


def _ref_entropy(logits):
    out = []
    for row in logits:
        out_row = []
        for vocab in row:
            logp = _ref_log_softmax_row(vocab)
            out_row.append(-sum(math.exp(lp) * lp for lp in logp if lp != -math.inf))
        out.append(out_row)
    return out


def _ref_completion_mask(ids, eos_ids):
    out = []
    for row in ids:
        mask_row, seen_eos = [], False
        for token in row:
            mask_row.append(0 if seen_eos else 1)
            seen_eos = seen_eos or token in eos_ids
        out.append(mask_row)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------------------------


def test_registries_hold_the_documented_variants():
    assert ADVANTAGE_SCALERS.names() == tuple(SCALE_MODES)
    assert LOSS_AGGREGATORS.names() == tuple(LOSS_TYPES)


def test_unknown_scale_rewards_names_the_known_ones():
    with pytest.raises(ValueError, match=r"scale_rewards 'std'; known values are: group, batch, none\."):
        compute_group_advantages(torch.zeros(4), 2, scale_rewards="std")


def test_unknown_loss_type_names_the_known_ones():
    with pytest.raises(ValueError, match=r"loss_type 'ppo'; known values are: grpo, bnpo, dr_grpo, dapo\."):
        aggregate_loss(torch.zeros(2, 3), torch.ones(2, 3), "ppo")
    with pytest.raises(ValueError, match=r"loss_type 'ppo'; known values are: grpo, bnpo, dr_grpo, dapo\."):
        loss_normaliser("ppo")


def test_loss_variants_declare_their_normaliser():
    normalisers = {name: loss_normaliser(name) for name in LOSS_TYPES}
    assert normalisers == {
        "grpo": "sequences",
        "bnpo": "process_tokens",
        "dapo": "global_tokens",  # the only one that needs a count reduced across processes
        "dr_grpo": "budget",
    }
    # bnpo and dapo are one reduction, registered twice with different normalisers
    assert LOSS_AGGREGATORS["bnpo"].reduce is LOSS_AGGREGATORS["dapo"].reduce


# ----------------------------------------------------------------------------------------------------------------
# compute_group_advantages / group_reward_std
# ----------------------------------------------------------------------------------------------------------------

_A = 0.5 / (math.sqrt(0.5) + 1e-4)  # group [1, 0]: mean 0.5, unbiased std sqrt(0.5)
_B = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # all of [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("group", [_A, -_A, -_A, _A]),  # 0.70700..
        ("batch", [_B, -_B, -_B, _B]),  # 0.86587..
        ("none", [0.5, -0.5, -0.5, 0.5]),
    ],
)
def test_group_advantages_hand_computed(mode, expected):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    advantages = compute_group_advantages(rewards, num_generations=2, scale_rewards=mode)
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64), **F64)


def test_group_advantages_hand_computed_three_per_group():
    # Group [3, 0, 0]: mean 1, deviations [2, -1, -1], unbiased std sqrt(6 / 2) = sqrt(3).
    # Group [2, 2, 2]: constant, advantage 0.
    rewards = torch.tensor([3.0, 0.0, 0.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    s = math.sqrt(3) + 1e-4
    expected = torch.tensor([2 / s, -1 / s, -1 / s, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(compute_group_advantages(rewards, 3, "group"), expected, **F64)
    torch.testing.assert_close(
        group_reward_std(rewards, 3), torch.tensor([math.sqrt(3), 0.0], dtype=torch.float64), **F64
    )


@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize("num_generations", [1, 2, 4, 8])
@pytest.mark.parametrize("binary", [False, True], ids=["continuous", "binary"])
def test_group_advantages_match_loop_reference(mode, num_generations, binary):
    gen = _gen(num_generations * 10 + binary)
    num_prompts = 6
    if binary:
        rewards = torch.randint(0, 2, (num_prompts * num_generations,), generator=gen).double()
    else:
        rewards = torch.randn(num_prompts * num_generations, generator=gen, dtype=torch.float64)
        rewards[:num_generations] = 0.25  # one constant group among random ones
    expected = _ref_advantages(rewards.tolist(), num_generations, mode, 1e-4)
    advantages = compute_group_advantages(rewards, num_generations, mode)
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64), **F64)


@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize(
    ("value", "num_generations", "dtype"),
    [
        (0.1, 8, torch.float32),
        (1 / 3, 8, torch.float32),
        (0.7, 7, torch.float32),
        (0.1, 8, torch.float64),
        (0.3, 6, torch.bfloat16),
        (1.0, 4, torch.float32),
        (0.0, 4, torch.float32),
    ],
)
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_all_equal_group_gets_exactly_zero(mode, value, num_generations, dtype, eps):
    # Two constant groups next to one that varies, so the batch std is not zero either.
    rewards = torch.tensor(
        [value] * num_generations * 2 + [0.0, 1.0] * (num_generations // 2) + [0.5] * (num_generations % 2), dtype=dtype
    )
    advantages = compute_group_advantages(rewards, num_generations, mode, eps=eps)
    assert not advantages.isnan().any()
    assert torch.equal(advantages[: 2 * num_generations], torch.zeros(2 * num_generations, dtype=dtype))
    assert torch.equal(group_reward_std(rewards, num_generations)[:2], torch.zeros(2, dtype=dtype))
    # Only constant groups: every advantage is 0 (also the batch std is 0 here).
    constant = torch.full((num_generations * 3,), value, dtype=dtype)
    assert torch.equal(compute_group_advantages(constant, num_generations, mode, eps=eps), torch.zeros_like(constant))


def test_float_mean_of_equal_values_is_not_the_value():
    # Why the guarantee above is explicit: naive (r - mean) / (std + eps) gives ~7e-5 here, not 0.
    rewards = torch.full((8,), 0.1)
    naive = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    assert naive.abs().max() > 1e-5
    assert torch.equal(compute_group_advantages(rewards, 8), torch.zeros(8))
    # Same for the logged std: torch's std of these eight equal values is ~8e-9, not 0.
    assert rewards.std() > 0
    assert torch.equal(group_reward_std(rewards, 8), torch.zeros(1))


@pytest.mark.parametrize("mode", SCALE_MODES)
def test_one_generation_per_prompt_gives_zero_not_nan(mode):
    rewards = torch.tensor([0.3, 1.0, -2.0])
    assert torch.equal(compute_group_advantages(rewards, 1, mode), torch.zeros(3))
    assert torch.equal(group_reward_std(rewards, 1), torch.zeros(3))


def test_integer_rewards_become_float():
    advantages = compute_group_advantages(torch.tensor([1, 0, 0, 1]), 2, "none")
    assert advantages.dtype == torch.get_default_dtype()
    torch.testing.assert_close(advantages, torch.tensor([0.5, -0.5, -0.5, 0.5]), rtol=0, atol=0)


@pytest.mark.parametrize("num_generations", [1, 3, 4])
def test_group_reward_std_matches_loop_reference(num_generations):
    rewards = torch.randn(5 * num_generations, generator=_gen(7), dtype=torch.float64)
    values = rewards.tolist()
    expected = [_ref_std(values[i : i + num_generations]) for i in range(0, len(values), num_generations)]
    torch.testing.assert_close(
        group_reward_std(rewards, num_generations), torch.tensor(expected, dtype=torch.float64), **F64
    )


@pytest.mark.parametrize("fn", [compute_group_advantages, group_reward_std])
@pytest.mark.parametrize(
    ("rewards", "num_generations", "message"),
    [
        (torch.zeros(2, 4), 4, r"rewards must be 1-D.*\(2, 4\)"),
        (torch.zeros(7), 2, r"7 entries.*not a multiple of num_generations=2"),
        (torch.zeros(4), 0, r"num_generations must be a positive int"),
        (torch.zeros(4), 2.0, r"num_generations must be a positive int"),
    ],
)
def test_group_advantages_reject_bad_shapes(fn, rewards, num_generations, message):
    with pytest.raises(ValueError, match=message):
        fn(rewards, num_generations)


# ----------------------------------------------------------------------------------------------------------------
# clipped_surrogate
# ----------------------------------------------------------------------------------------------------------------


def test_clipped_surrogate_hand_computed_symmetric():
    # Same ratios [0.5, 2, 1.1] under A = -1 (row 0) and A = +1 (row 1), eps = 0.2, so clip(r) = [0.8, 1.2, 1.1].
    ratio = torch.tensor([[0.5, 2.0, 1.1], [0.5, 2.0, 1.1]], dtype=torch.float64)
    old_logps = torch.full_like(ratio, -1.0)
    logps = old_logps + ratio.log()
    advantages = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logps, old_logps, advantages, epsilon_low=0.2)
    low, high = clipped["clip_low"], clipped["clip_high"]
    expected = torch.tensor(
        [
            [0.8, 2.0, 1.1],  # A = -1: -min(-r, -clip(r)) = max(r, clip(r)); ratio 0.5 is clipped low
            [-0.5, -1.2, -1.1],  # A = +1: -min(r, clip(r)); ratio 2 is clipped high
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(loss, expected, **F64)
    # Ratio 2 with A < 0 and ratio 0.5 with A > 0 are outside the range but not clipped: min() keeps the
    # unclipped, more pessimistic term, so their gradient flows.
    assert low.tolist() == [[True, False, False], [False, False, False]]
    assert high.tolist() == [[False, False, False], [False, True, False]]


def test_clipped_surrogate_hand_computed_clip_higher():
    # DAPO clip-higher: eps_low 0.2, eps_high 0.28. Ratio 1.25 is inside, 1.3 is clipped to 1.28, 0.7 to 0.8.
    ratio = torch.tensor([[1.25, 1.3, 0.7]], dtype=torch.float64)
    logps = ratio.log()
    zeros = torch.zeros_like(logps)
    loss, clipped = clipped_surrogate(logps, zeros, torch.tensor([2.0], dtype=torch.float64), 0.2, 0.28)
    low, high = clipped["clip_low"], clipped["clip_high"]
    torch.testing.assert_close(loss, torch.tensor([[-2.5, -2.56, -1.4]], dtype=torch.float64), **F64)
    assert high.tolist() == [[False, True, False]]
    assert low.tolist() == [[False, False, False]]
    loss, clipped = clipped_surrogate(logps, zeros, torch.tensor([-2.0], dtype=torch.float64), 0.2, 0.28)
    low, high = clipped["clip_low"], clipped["clip_high"]
    torch.testing.assert_close(loss, torch.tensor([[2.5, 2.6, 1.6]], dtype=torch.float64), **F64)
    assert low.tolist() == [[False, False, True]]
    assert high.tolist() == [[False, False, False]]


@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, None), (0.2, 0.28), (0.1, 0.1), (0.0, 0.0)])
def test_clipped_surrogate_matches_loop_reference(eps_low, eps_high):
    gen = _gen(3)
    logps = -torch.rand(6, 9, generator=gen, dtype=torch.float64) * 3
    old_logps = logps + 0.4 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    advantages = torch.randn(6, generator=gen, dtype=torch.float64)
    advantages[0] = 0.0
    loss, clipped = clipped_surrogate(logps, old_logps, advantages, eps_low, eps_high)
    assert set(clipped) == {"clip_low", "clip_high"}
    low, high = clipped["clip_low"], clipped["clip_high"]
    ref_loss, ref_low, ref_high = _ref_surrogate(
        logps.tolist(), old_logps.tolist(), advantages.tolist(), eps_low, eps_low if eps_high is None else eps_high
    )
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=torch.float64), **F64)
    assert low.dtype == high.dtype == torch.bool
    assert low.tolist() == ref_low
    assert high.tolist() == ref_high
    assert low.any() and high.any()  # the random case does exercise both clips


def test_clipped_surrogate_ratio_one_is_plain_policy_gradient():
    logps = torch.randn(3, 4, generator=_gen(11), dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logps, logps.detach(), advantages)
    low, high = clipped["clip_low"], clipped["clip_high"]
    loss.sum().backward()
    torch.testing.assert_close(loss.detach(), -advantages[:, None].expand(3, 4), **F64)
    torch.testing.assert_close(logps.grad, -advantages[:, None].expand(3, 4), **F64)
    assert not low.any() and not high.any()


def test_clipped_tokens_get_no_gradient():
    ratio = torch.tensor([[0.5, 2.0, 1.1]], dtype=torch.float64)
    logps = ratio.log().requires_grad_(True)
    loss, _ = clipped_surrogate(logps, torch.zeros_like(ratio), torch.tensor([1.0], dtype=torch.float64))
    loss.sum().backward()
    # d(-r * A)/d logp = -r * A where unclipped; 0 where the clip is active (ratio 2 with A > 0).
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.5, 0.0, -1.1]], dtype=torch.float64), **F64)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_surrogate_and_aggregation(loss_type):
    gen = _gen(5)
    logps = (-torch.rand(4, 5, generator=gen, dtype=torch.float64) - 0.1).requires_grad_(True)
    # |log ratio| < 0.1 keeps every ratio inside [0.8, 1.2] and away from the clip boundaries.
    old_logps = logps.detach() + 0.1 * (2 * torch.rand(4, 5, generator=gen, dtype=torch.float64) - 1)
    advantages = torch.tensor([1.0, -0.7, 0.3, -2.0], dtype=torch.float64)
    mask = _padding_mask(4, 5, gen)
    ref_logps = logps.detach() - 0.3

    def objective(lp):
        pg_loss, _ = clipped_surrogate(lp, old_logps, advantages, 0.2, 0.28)
        return aggregate_loss(pg_loss + 0.04 * kl_k3(lp, ref_logps), mask, loss_type, max_completion_length=5)

    assert torch.autograd.gradcheck(objective, (logps,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("logps", "old_logps", "advantages", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), r"logps and old_logps must both be \(B, T\)"),
        (torch.zeros(3), torch.zeros(3), torch.zeros(3), r"logps and old_logps must both be \(B, T\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 1), r"advantages must be \(B,\) = \(2,\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), r"advantages must be \(B,\) = \(2,\)"),
    ],
)
def test_clipped_surrogate_rejects_bad_shapes(logps, old_logps, advantages, message):
    with pytest.raises(ValueError, match=message):
        clipped_surrogate(logps, old_logps, advantages)


def test_clipped_surrogate_rejects_negative_clip_range():
    with pytest.raises(ValueError, match="clip ranges must be >= 0"):
        clipped_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), epsilon_low=-0.1)


# ----------------------------------------------------------------------------------------------------------------
# kl_k3
# ----------------------------------------------------------------------------------------------------------------


def test_kl_k3_hand_computed():
    logps = torch.tensor([[-1.0, -1.0, -2.0, 0.0]], dtype=torch.float64)
    ref_logps = torch.tensor([[-1.0, -1.0 + math.log(2), -3.0, -0.5]], dtype=torch.float64)
    expected = torch.tensor(
        [[0.0, 1.0 - math.log(2), math.exp(-1.0), math.exp(-0.5) - 0.5]],  # 0, 0.30685.., 0.36788.., 0.10653..
        dtype=torch.float64,
    )
    torch.testing.assert_close(kl_k3(logps, ref_logps), expected, **F64)


def test_kl_k3_matches_loop_reference_and_is_non_negative():
    gen = _gen(13)
    logps = -3 * torch.rand(5, 7, generator=gen, dtype=torch.float64)
    ref_logps = logps + torch.randn(5, 7, generator=gen, dtype=torch.float64)
    kl = kl_k3(logps, ref_logps)
    torch.testing.assert_close(
        kl, torch.tensor(_ref_kl(logps.tolist(), ref_logps.tolist()), dtype=torch.float64), rtol=1e-10, atol=1e-14
    )
    assert (kl >= 0).all()
    assert torch.equal(kl_k3(logps, logps), torch.zeros_like(logps))


def test_kl_k3_non_negative_for_nearly_equal_float32():
    logps = -3 * torch.rand(64, 64, generator=_gen(17))
    ref_logps = logps + 1e-6 * torch.randn(64, 64, generator=_gen(18))
    kl = kl_k3(logps, ref_logps)
    assert (kl >= 0).all()
    torch.testing.assert_close(kl, torch.zeros_like(kl), rtol=0, atol=1e-10)


def test_kl_k3_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        kl_k3(torch.zeros(2, 3), torch.zeros(3, 2))


# ----------------------------------------------------------------------------------------------------------------
# aggregate_loss
# ----------------------------------------------------------------------------------------------------------------

_LOSS_2x3 = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
_MASK_2x3 = [[1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("grpo", {}, (1.5 + 4.0) / 2),  # token means 3/2 and 4/1, averaged over 2 sequences = 2.75
        ("grpo", {"num_sequences": 5}, (1.5 + 4.0) / 5),
        ("bnpo", {}, 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("bnpo", {"num_tokens": 14}, 0.5),
        ("dapo", {}, 7 / 3),
        ("dapo", {"num_tokens": 28.0}, 0.25),
        ("dr_grpo", {"max_completion_length": 3}, 7 / 6),  # 7 / (2 sequences * 3)
        ("dr_grpo", {"max_completion_length": 7, "num_sequences": 4}, 0.25),
    ],
)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float64])
def test_aggregate_loss_hand_computed(loss_type, kwargs, expected, mask_dtype):
    loss = torch.tensor(_LOSS_2x3, dtype=torch.float64)
    mask = torch.tensor(_MASK_2x3).to(mask_dtype)
    result = aggregate_loss(loss, mask, loss_type, **kwargs)
    assert result.shape == ()
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64), **F64)
    # Padding may hold anything (inf, NaN) without leaking into the loss.
    poisoned = loss.masked_fill(mask == 0, float("nan"))
    poisoned[1, 2] = float("inf")
    torch.testing.assert_close(aggregate_loss(poisoned, mask, loss_type, **kwargs), result, **F64)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("fully_padded_rows", [0, 2])
def test_aggregate_loss_matches_loop_reference(loss_type, fully_padded_rows):
    gen = _gen(21 + fully_padded_rows)
    loss = torch.randn(7, 11, generator=gen, dtype=torch.float64)
    mask = _padding_mask(7, 11, gen, fully_padded_rows)
    expected = _ref_aggregate(loss.tolist(), mask.tolist(), loss_type, max_completion_length=11)
    result = aggregate_loss(loss, mask, loss_type, max_completion_length=11)
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64), **F64)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_padding_contributes_zero(loss_type):
    loss = torch.randn(3, 4, generator=_gen(2))
    result = aggregate_loss(loss, torch.zeros(3, 4), loss_type, max_completion_length=4)
    assert torch.equal(result, torch.tensor(0.0))
    # A fully padded row adds nothing to the grpo sum but still counts as a sequence.
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    expected = _ref_aggregate(loss.tolist(), mask.tolist(), loss_type, max_completion_length=4)
    torch.testing.assert_close(
        aggregate_loss(loss, mask, loss_type, max_completion_length=4),
        torch.tensor(expected, dtype=torch.float32),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_sum_to_whole_batch_loss_and_gradient(loss_type):
    gen = _gen(31)
    per_token = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    mask = _padding_mask(6, 8, gen, fully_padded_rows=1)
    # Normalisers of the whole batch, passed to every micro-batch.
    totals = {"num_sequences": 6, "num_tokens": int(mask.sum()), "max_completion_length": 8}

    whole_input = per_token.clone().requires_grad_(True)
    whole = aggregate_loss(whole_input, mask, loss_type, max_completion_length=8)
    whole.backward()

    micro_input = per_token.clone().requires_grad_(True)
    micro_sum = torch.zeros((), dtype=torch.float64)
    for start in range(0, 6, 2):
        micro_loss = aggregate_loss(micro_input[start : start + 2], mask[start : start + 2], loss_type, **totals)
        micro_loss.backward()  # the trainer calls backward per micro-batch
        micro_sum = micro_sum + micro_loss.detach()

    torch.testing.assert_close(micro_sum, whole.detach(), **F64)
    torch.testing.assert_close(micro_input.grad, whole_input.grad, **F64)


def test_micro_batches_with_local_normalisers_do_not_sum_to_whole():
    # Guards the test above: with per-micro-batch defaults the sum is not the whole-batch loss.
    gen = _gen(31)
    per_token = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    mask = _padding_mask(6, 8, gen, fully_padded_rows=1)
    whole = aggregate_loss(per_token, mask, "bnpo")
    local = sum(aggregate_loss(per_token[s : s + 2], mask[s : s + 2], "bnpo") for s in range(0, 6, 2))
    assert not torch.allclose(local, whole)


def test_aggregate_loss_accepts_tensor_num_tokens():
    loss = torch.tensor(_LOSS_2x3)
    mask = torch.tensor(_MASK_2x3)
    result = aggregate_loss(loss, mask, "dapo", num_tokens=torch.tensor(14.0))
    torch.testing.assert_close(result, torch.tensor(0.5), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("loss", "mask", "loss_type", "kwargs", "message"),
    [
        (torch.zeros(2, 3), torch.ones(2, 3), "dr_grpo", {}, r"'dr_grpo' needs max_completion_length"),
        (torch.zeros(2, 3), torch.ones(2, 3), "dr_grpo", {"max_completion_length": 0}, r"max_completion_length >= 1"),
        (torch.zeros(2, 3), torch.ones(3, 2), "grpo", {}, r"must both be \(B, T\), got \(2, 3\) and \(3, 2\)"),
        (torch.zeros(6), torch.ones(6), "bnpo", {}, r"must both be \(B, T\)"),
        (torch.zeros(2, 3), torch.ones(2, 3), "grpo", {"num_sequences": 0}, r"num_sequences must be >= 1"),
    ],
)
def test_aggregate_loss_rejects_bad_input(loss, mask, loss_type, kwargs, message):
    with pytest.raises(ValueError, match=message):
        aggregate_loss(loss, mask, loss_type, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# grpo_loss
# ----------------------------------------------------------------------------------------------------------------


def _loss_inputs(gen, batch=6, length=9, dtype=torch.float64):
    """Log-probs (current, old, reference), advantages, a padding mask with one empty row, and entropies."""
    logps = -3 * torch.rand(batch, length, generator=gen, dtype=dtype)
    # |log ratio| up to 0.5: some ratios leave [1 - 0.2, 1 + 0.28] on both sides
    old_logps = logps + (torch.rand(batch, length, generator=gen, dtype=dtype) - 0.5)
    ref_logps = logps + 0.3 * torch.randn(batch, length, generator=gen, dtype=dtype)
    advantages = torch.randn(batch, generator=gen, dtype=dtype)
    mask = _padding_mask(batch, length, gen)
    entropy = 5 * torch.rand(batch, length, generator=gen, dtype=dtype)
    return logps, old_logps, ref_logps, advantages, mask, entropy


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("with_kl", [False, True], ids=["no_kl", "kl"])
@pytest.mark.parametrize("with_entropy", [False, True], ids=["no_entropy", "entropy"])
def test_grpo_loss_matches_loop_reference(loss_type, with_kl, with_entropy):
    logps, old_logps, ref_logps, advantages, mask, entropy = _loss_inputs(_gen(71))
    beta = 0.04 if with_kl else 0.0
    ref_logps = ref_logps if with_kl else None
    entropy = entropy if with_entropy else None
    loss, stats = _grpo_loss(
        logps, old_logps, advantages, mask, loss_type, ref_logps=ref_logps, beta=beta, entropy=entropy,
        epsilon_low=0.2, epsilon_high=0.28, max_completion_length=9,
    )  # fmt: skip
    as_lists = [None if t is None else t.tolist() for t in (logps, old_logps, advantages, mask, ref_logps, entropy)]
    lp, olp, adv, m, ref, ent = as_lists
    expected_loss, expected = _ref_grpo_loss(
        lp, olp, adv, m, loss_type, beta, ref, ent, 0.2, 0.28, max_completion_length=9
    )
    torch.testing.assert_close(loss, torch.tensor(expected_loss, dtype=torch.float64), **F64)
    expected_names = {"loss", "clip_low", "clip_high"} | ({"kl"} if with_kl else set())
    assert set(stats) == set(expected) == expected_names | ({"entropy"} if with_entropy else set())
    for name, value in expected.items():
        torch.testing.assert_close(stats[name], torch.tensor(value, dtype=torch.float64), **F64, msg=name)
    assert 0 < float(stats["clip_low"]) and 0 < float(stats["clip_high"]), "the inputs must exercise both clips"


def test_grpo_loss_without_old_logps_is_the_plain_policy_gradient():
    logps, _, _, advantages, mask, _ = _loss_inputs(_gen(73))
    logps.requires_grad_(True)
    loss, stats = _grpo_loss(logps, None, advantages, mask, "bnpo")
    assert stats["clip_low"] == 0 and stats["clip_high"] == 0
    # ratio 1: loss = -sum(A * mask) / tokens and d loss / d logp = -A / tokens on every kept token
    (grad,) = torch.autograd.grad(loss, logps)
    expected = -advantages[:, None] * mask / mask.sum()
    torch.testing.assert_close(loss.detach(), expected.sum(), **F64)
    torch.testing.assert_close(grad, expected, **F64)


def _previous_composition(logps, old_logps, advantages, mask, ref_logps, entropy, loss_type, beta, normalisers, tokens):
    """The update as the training loop composed it before :func:`grpo_loss`: the float32 results must be identical."""
    per_token_loss, clipped = clipped_surrogate(logps, old_logps, advantages, 0.2, 0.28)
    low, high = clipped["clip_low"], clipped["clip_high"]
    stats = {}
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps)
        per_token_loss = per_token_loss + beta * kl
        stats["kl"] = (kl.detach() * mask).sum() / tokens
    loss = aggregate_loss(per_token_loss, mask, loss_type, **normalisers)
    stats["loss"] = loss.detach()
    stats["clip_low"] = (low.float() * mask).sum() / tokens
    stats["clip_high"] = (high.float() * mask).sum() / tokens
    if entropy is not None:
        stats["entropy"] = (entropy * mask).sum() / tokens
    return loss, stats


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("with_kl", [False, True], ids=["no_kl", "kl"])
def test_grpo_loss_equals_the_previous_composition_bit_for_bit_over_micro_batches(loss_type, with_kl):
    """float32, micro-batches of 4 with the whole batch's normalisers, as the training loop calls it."""
    logps, old_logps, ref_logps, advantages, mask, entropy = _loss_inputs(_gen(79), 10, 7, torch.float32)
    mask = mask.float()
    ref_logps, beta = (ref_logps, 0.04) if with_kl else (None, 0.0)
    normalisers = {"num_sequences": 10, "num_tokens": float(mask.sum()), "max_completion_length": 7}
    tokens = mask.sum().clamp(min=1)
    results = []
    for compose in ("grpo_loss", "previous"):
        weights = logps.clone().requires_grad_(True)
        totals: dict[str, torch.Tensor] = {}
        for mb in (slice(0, 4), slice(4, 8), slice(8, 10)):
            args = (weights[mb], old_logps[mb], advantages[mb], mask[mb])
            ref = None if ref_logps is None else ref_logps[mb]
            if compose == "grpo_loss":
                loss, stats = _grpo_loss(
                    *args, loss_type, ref_logps=ref, beta=beta, entropy=entropy[mb], epsilon_low=0.2,
                    epsilon_high=0.28, stats_num_tokens=tokens, **normalisers,
                )  # fmt: skip
            else:
                loss, stats = _previous_composition(*args, ref, entropy[mb], loss_type, beta, normalisers, tokens)
            loss.backward()
            for name, value in stats.items():
                totals[name] = totals.get(name, torch.zeros(())) + value
        results.append((weights.grad, totals))
    (grad, totals), (previous_grad, previous_totals) = results
    assert torch.equal(grad, previous_grad)
    assert totals.keys() == previous_totals.keys()
    assert all(torch.equal(totals[name], previous_totals[name]) for name in totals), (totals, previous_totals)


def test_grpo_loss_statistics_ignore_what_padding_holds():
    logps, old_logps, ref_logps, advantages, mask, entropy = _loss_inputs(_gen(83))
    options = {"ref_logps": ref_logps, "beta": 0.04, "max_completion_length": 9}
    loss, stats = _grpo_loss(logps, old_logps, advantages, mask, "dr_grpo", entropy=entropy, **options)
    poisoned = entropy.masked_fill(mask == 0, float("nan"))
    poisoned_loss, poisoned_stats = _grpo_loss(
        logps, old_logps, advantages, mask, "dr_grpo", entropy=poisoned, **options
    )
    assert torch.equal(loss, poisoned_loss)
    assert all(torch.equal(stats[name], poisoned_stats[name]) for name in stats)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.04}, r"beta=0.04 weighs a KL term, which needs ref_logps"),
        ({"entropy": torch.zeros(2, 4)}, r"entropy must be \(B, T\) like the mask, got \(2, 4\) and \(2, 3\)"),
        ({"loss_type": "ppo"}, r"Unknown model.loss.loss_type 'ppo'; known values are: grpo, bnpo, dr_grpo, dapo\."),
    ],
)
def test_grpo_loss_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _grpo_loss(torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# selective_log_softmax / entropy_from_logits
# ----------------------------------------------------------------------------------------------------------------


def test_selective_log_softmax_matches_loop_reference_float64():
    gen = _gen(41)
    logits = 4 * torch.randn(3, 5, 13, generator=gen, dtype=torch.float64)
    index = torch.randint(0, 13, (3, 5), generator=gen)
    expected = _ref_selective_log_softmax(logits.tolist(), index.tolist())
    torch.testing.assert_close(selective_log_softmax(logits, index), torch.tensor(expected, dtype=torch.float64), **F64)


def test_selective_log_softmax_equals_log_softmax_gather_float32():
    gen = _gen(43)
    logits = (5 * torch.randn(4, 6, 50, generator=gen)).requires_grad_(True)
    index = torch.randint(0, 50, (4, 6), generator=gen)
    result = selective_log_softmax(logits, index)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(result.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_log_softmax_half_precision(dtype):
    gen = _gen(47)
    logits32 = 3 * torch.randn(4, 6, 200, generator=gen)
    index = torch.randint(0, 200, (4, 6), generator=gen)
    result = selective_log_softmax(logits32.to(dtype), index)
    assert result.dtype == torch.float32
    # Exact up to float32 rounding against the upcast half logits ...
    upcast = torch.log_softmax(logits32.to(dtype).float(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result, upcast, rtol=1e-6, atol=1e-6)
    # ... and within half-precision rounding of the float32 logits.
    exact = torch.log_softmax(logits32, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result, exact, rtol=0, atol=5e-2)


def test_selective_log_softmax_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits \(B, T, V\) and index \(B, T\)"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("chunk_size", [1, 4, 128])
def test_entropy_matches_loop_reference(chunk_size):
    gen = _gen(53)
    logits = 3 * torch.randn(3, 5, 17, generator=gen, dtype=torch.float64)  # 15 positions: chunks don't divide
    expected = torch.tensor(_ref_entropy(logits.tolist()), dtype=torch.float64)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk_size), expected, **F64)


def test_entropy_hand_computed():
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf], [0.0, 0.0, -math.inf, -math.inf]]],
        dtype=torch.float64,
        requires_grad=True,
    )
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy, torch.tensor([[math.log(4), 0.0, math.log(2)]], dtype=torch.float64), **F64)
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_entropy_half_precision_is_float32(dtype):
    logits32 = 2 * torch.randn(2, 7, 300, generator=_gen(59))
    entropy = entropy_from_logits(logits32.to(dtype), chunk_size=5)
    assert entropy.dtype == torch.float32
    reference = torch.tensor(_ref_entropy(logits32.to(dtype).double().tolist()), dtype=torch.float32)
    torch.testing.assert_close(entropy, reference, rtol=1e-5, atol=1e-5)


def test_entropy_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        entropy_from_logits(torch.zeros(1, 2, 3), chunk_size=0)


# ----------------------------------------------------------------------------------------------------------------
# completion_mask / is_truncated
# ----------------------------------------------------------------------------------------------------------------

EOS, PAD, IM_END = 2, 0, 9


@pytest.mark.parametrize(
    ("ids", "eos", "mask", "truncated"),
    [
        ([[EOS, 5, 6, 7]], EOS, [[1, 0, 0, 0]], [False]),  # EOS first
        ([[5, 6, EOS, 7, 8]], EOS, [[1, 1, 1, 0, 0]], [False]),  # EOS in the middle, text after it
        ([[5, 6, EOS, PAD, PAD]], EOS, [[1, 1, 1, 0, 0]], [False]),  # padding after EOS
        ([[5, 6, 7, 8]], EOS, [[1, 1, 1, 1]], [True]),  # no EOS: truncated, all kept
        ([[5, 6, 7, EOS]], EOS, [[1, 1, 1, 1]], [False]),  # EOS last
        ([[5, EOS, EOS, EOS]], EOS, [[1, 1, 0, 0]], [False]),  # pad id == EOS id
        ([[5, IM_END, EOS, 3]], [EOS, IM_END], [[1, 1, 0, 0]], [False]),  # several EOS ids, second one first
        ([[5, EOS, IM_END, 3]], (IM_END, EOS), [[1, 1, 0, 0]], [False]),
        ([[5, 6, IM_END, 3]], EOS, [[1, 1, 1, 1]], [True]),  # IM_END is not an EOS here
        (
            [[EOS, 1, 1], [1, EOS, 1], [1, 1, 1], [IM_END, 1, EOS]],
            [EOS, IM_END],
            [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]],
            [False, False, True, False],
        ),
    ],
)
def test_completion_mask_table(ids, eos, mask, truncated):
    ids = torch.tensor(ids)
    result = completion_mask(ids, eos)
    assert result.dtype == torch.long
    assert result.tolist() == mask
    assert is_truncated(ids, eos).tolist() == truncated


def test_completion_mask_matches_loop_reference():
    ids = torch.randint(0, 12, (16, 10), generator=_gen(61))
    eos_ids = [3, 7]
    assert completion_mask(ids, eos_ids).tolist() == _ref_completion_mask(ids.tolist(), eos_ids)
    assert is_truncated(ids, eos_ids).tolist() == [not any(t in eos_ids for t in row) for row in ids.tolist()]


@pytest.mark.parametrize("fn", [completion_mask, is_truncated])
@pytest.mark.parametrize(
    ("ids", "eos", "message"),
    [
        (torch.tensor([1, 2, 3]), 2, r"completion_ids must be \(B, T\)"),
        (torch.ones(2, 3, dtype=torch.long), [], "eos_token_ids is empty"),
    ],
)
def test_completion_mask_rejects_bad_input(fn, ids, eos, message):
    with pytest.raises(ValueError, match=message):
        fn(ids, eos)


# ----------------------------------------------------------------------------------------------------------------
# Training-signal options: GSPO levels, the two-sided delta clip, top-entropy tokens, truncated completions
# ----------------------------------------------------------------------------------------------------------------

LEVELS = ["token", "sequence", "sequence_token"]


def _ref_objective(
    lp, olp, adv, mask, loss_type, *, beta=0.0, ref=None, eps_low=0.2, eps_high=0.28, delta=None, level="token",
    policy_mask=None, entropy=None, num_sequences=None, num_tokens=None, max_len=None, importance_weights=None,
):  # fmt: skip
    """Loss, d loss / d logp and statistics of the whole objective, in float64 loops over sequences and tokens.

    The gradient is written out by hand: a token's surrogate term ``-min(r' A, clip(r) A)`` (``r' = min(r, delta)``)
    has derivative ``-A r`` with respect to ``log r`` unless a clip removes it; ``log r`` is the token's own log
    ratio (token level), the mean of the sequence's log ratios (sequence level: spread over its tokens, 1/|o| each),
    or the token's log-prob plus a constant (sequence_token level). The k3 KL term has derivative
    ``1 - exp(ref - logp)``. Each kept token enters the loss with the weight of the aggregation; its policy term (loss
    and gradient), not its KL term, also with its importance weight (``importance_weights``, constants).
    """
    batch, length = len(lp), len(lp[0])
    counts = [sum(1 for m in row if m) for row in mask]
    num_sequences = batch if num_sequences is None else num_sequences
    num_tokens = sum(counts) if num_tokens is None else num_tokens

    def weight(i):
        if loss_type == "grpo":
            return 1.0 / (max(counts[i], 1) * num_sequences)
        if loss_type in ("bnpo", "dapo"):
            return 1.0 / max(num_tokens, 1)
        return 1.0 / (num_sequences * max_len)

    loss, grad = 0.0, [[0.0] * length for _ in range(batch)]
    sums = {"clip_low": 0.0, "clip_high": 0.0}
    if delta is not None:
        sums["clip_delta"] = 0.0
    if ref is not None:
        sums["kl"] = 0.0
    if entropy is not None:
        sums["entropy"] = 0.0
    for i in range(batch):
        a = adv[i]
        log_s = sum(lp[i][t] - olp[i][t] for t in range(length) if mask[i][t]) / max(counts[i], 1)
        for t in range(length):
            if not mask[i][t]:
                continue
            w = weight(i)
            r = math.exp(lp[i][t] - olp[i][t]) if level == "token" else math.exp(log_s)
            unclipped = r if delta is None else min(r, delta)
            clipped = min(max(r, 1 - eps_low), 1 + eps_high)
            low, high = r < 1 - eps_low and a < 0, r > 1 + eps_high and a > 0
            delta_clipped = delta is not None and r > delta and a < 0
            sums["clip_low"] += low
            sums["clip_high"] += high
            if delta is not None:
                sums["clip_delta"] += delta_clipped
            if policy_mask is None or policy_mask[i][t]:
                iw = 1.0 if importance_weights is None else importance_weights[i][t]
                loss += w * iw * -min(unclipped * a, clipped * a)
                if not (low or high or delta_clipped):
                    if level == "sequence":
                        for u in range(length):
                            if mask[i][u]:
                                grad[i][u] += w * iw * -a * r / counts[i]
                    else:
                        grad[i][t] += w * iw * -a * r
            if ref is not None:
                x = ref[i][t] - lp[i][t]
                kl = math.exp(x) - x - 1
                sums["kl"] += kl
                loss += w * beta * kl
                grad[i][t] += w * beta * (1 - math.exp(x))
            if entropy is not None:
                sums["entropy"] += entropy[i][t]
    stats = {name: value / max(sum(counts), 1) for name, value in sums.items()}
    return loss, grad, {"loss": loss, **stats}


def _ref_quantile(values, q):
    """Linear interpolation between the order statistics at position q * (n - 1)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _signal_inputs(dtype=torch.float64):
    """7 sequences (the first all padding) whose sequence log ratios exercise every clip at every level: row 1 has
    A < 0 and s > delta = 1.4, row 3 A > 0 and s > 1.28, row 4 A < 0 and s < 0.8, row 6 A < 0 and s > delta."""
    gen = _gen(97)
    batch, length = 7, 9
    logps = -3 * torch.rand(batch, length, generator=gen, dtype=dtype)
    shift = torch.tensor([0.0, 0.5, -0.5, 0.45, -0.45, 0.05, 0.6], dtype=dtype)
    old_logps = logps - shift[:, None] + 0.15 * torch.randn(batch, length, generator=gen, dtype=dtype)
    ref_logps = logps + 0.3 * torch.randn(batch, length, generator=gen, dtype=dtype)
    advantages = torch.tensor([0.7, -1.0, 0.8, 1.2, -0.6, 0.3, -1.5], dtype=dtype)
    mask = _padding_mask(batch, length, gen)
    mask[1:, :3] = 1  # every row but the first has at least 3 tokens
    entropy = 5 * torch.rand(batch, length, generator=gen, dtype=dtype)
    return logps, old_logps, ref_logps, advantages, mask, entropy


def _top_entropy(entropy, mask, rho):
    threshold = entropy_quantile_threshold(entropy[mask != 0], rho)
    return high_entropy_mask(entropy, mask, threshold)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("delta", [None, 1.4], ids=["no_delta", "delta"])
@pytest.mark.parametrize("top_entropy", [False, True], ids=["all_tokens", "top_entropy"])
@pytest.mark.parametrize("truncated", [False, True], ids=["all_rows", "drop_truncated"])
def test_grpo_loss_options_match_the_loop_reference_in_value_gradient_and_statistics(
    loss_type, level, delta, top_entropy, truncated
):
    logps, old_logps, ref_logps, advantages, mask, entropy = _signal_inputs()
    if truncated:  # rows 2 and 5 are cut at the budget: their tokens leave the loss, the rows still count
        mask = drop_truncated(mask, torch.tensor([False, False, True, False, False, True, False]))
    policy_mask = _top_entropy(entropy, mask, 0.4) if top_entropy else None
    weights = logps.clone().requires_grad_(True)
    loss, stats = _grpo_loss(
        weights, old_logps, advantages, mask, loss_type, ref_logps=ref_logps, beta=0.04, entropy=entropy,
        epsilon_low=0.2, epsilon_high=0.28, delta=delta, importance_sampling_level=level, policy_mask=policy_mask,
        max_completion_length=9,
    )  # fmt: skip
    loss.backward()
    lists = [t.tolist() for t in (logps, old_logps, advantages, mask, ref_logps, entropy)]
    lp, olp, adv, m, ref, ent = lists
    expected_loss, expected_grad, expected = _ref_objective(
        lp, olp, adv, m, loss_type, beta=0.04, ref=ref, delta=delta, level=level, entropy=ent,
        policy_mask=None if policy_mask is None else policy_mask.tolist(), max_len=9,
    )  # fmt: skip
    torch.testing.assert_close(loss, torch.tensor(expected_loss, dtype=torch.float64), **F64)
    torch.testing.assert_close(weights.grad, torch.tensor(expected_grad, dtype=torch.float64), **F64)
    assert set(stats) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(stats[name], torch.tensor(value, dtype=torch.float64), **F64, msg=name)
    # the inputs exercise every clip
    assert expected["clip_low"] > 0 and expected["clip_high"] > 0
    assert delta is None or expected["clip_delta"] > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", LEVELS)
def test_importance_weights_weigh_the_policy_term_only_as_the_loop_reference(loss_type, level):
    """Truncated importance sampling's weights (capped ratios to the sampling engine) multiply each token's policy
    term, after the top-entropy mask; the KL term, the normaliser and the statistics are left as they are."""
    logps, old_logps, ref_logps, advantages, mask, entropy = _signal_inputs()
    policy_mask = _top_entropy(entropy, mask, 0.6)
    engine_logps = old_logps + 0.4 * torch.randn(old_logps.shape, generator=_gen(3), dtype=torch.float64)
    weights = torch.clamp((old_logps - engine_logps).exp(), max=1.5) * mask  # 0 on padding, some at the cap
    assert (weights[mask != 0] == 1.5).any() and (weights[mask != 0] < 1.5).any()
    options = {
        "loss_type": loss_type, "ref_logps": ref_logps, "epsilon_low": 0.2, "epsilon_high": 0.28, "delta": 1.4,
        "importance_sampling_level": level, "policy_mask": policy_mask, "entropy": entropy,
        "max_completion_length": 9,
    }  # fmt: skip

    def run(beta, importance_weights):
        inputs = logps.clone().requires_grad_(True)
        loss, stats = _grpo_loss(inputs, old_logps, advantages, mask, beta=beta, importance_weights=importance_weights,
                                **options)  # fmt: skip
        loss.backward()
        return loss.detach(), inputs.grad, stats

    loss, grad, stats = run(0.04, weights)
    lp, olp, adv, m, ref, ent = (t.tolist() for t in (logps, old_logps, advantages, mask, ref_logps, entropy))
    expected_loss, expected_grad, expected = _ref_objective(
        lp, olp, adv, m, loss_type, beta=0.04, ref=ref, delta=1.4, level=level, entropy=ent,
        policy_mask=policy_mask.tolist(), max_len=9, importance_weights=weights.tolist(),
    )  # fmt: skip
    torch.testing.assert_close(loss, torch.tensor(expected_loss, dtype=torch.float64), **F64)
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64), **F64)
    assert set(stats) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(stats[name], torch.tensor(value, dtype=torch.float64), **F64, msg=name)
    # the KL term is the unweighted one: adding it adds the same with and without the weights
    plain_loss, plain_grad, plain_stats = run(0.04, None)
    no_kl_loss, no_kl_grad, _ = run(0.0, weights)
    plain_no_kl_loss, plain_no_kl_grad, _ = run(0.0, None)
    torch.testing.assert_close(loss - no_kl_loss, plain_loss - plain_no_kl_loss, **F64)
    torch.testing.assert_close(grad - no_kl_grad, plain_grad - plain_no_kl_grad, **F64)
    for name in ("kl", "clip_low", "clip_high", "clip_delta", "entropy"):
        assert torch.equal(stats[name], plain_stats[name]), name
    assert not torch.allclose(no_kl_loss, plain_no_kl_loss)  # the weights change the policy term
    # weights of 1 are no weights, bit for bit
    ones_loss, ones_grad, _ = run(0.04, torch.ones_like(weights))
    assert torch.equal(ones_loss, plain_loss) and torch.equal(ones_grad, plain_grad)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("num_iterations_gt_1", [False, True], ids=["ratio_1", "old_logps"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "importance_weights"])
def test_micro_batches_with_every_option_sum_to_the_whole_batch_loss_and_gradient(
    loss_type, level, num_iterations_gt_1, weighted
):
    """The training loop's use: micro-batches of 3 with the whole batch's normalisers and entropy mask (and, for an
    engine's rollout, each micro-batch's rows of the importance weights)."""
    logps, old_logps, ref_logps, advantages, mask, entropy = _signal_inputs(torch.float32)
    mask = drop_truncated(mask.float(), torch.tensor([False, False, True, False, False, False, False]))
    policy_mask = _top_entropy(entropy, mask, 0.5)
    old_logps = old_logps if num_iterations_gt_1 else None
    weights = 2 * torch.rand(mask.shape, generator=_gen(11)) if weighted else None
    options = {
        "ref_logps": ref_logps, "beta": 0.04, "delta": 1.4, "importance_sampling_level": level,
        "epsilon_high": 0.28, "num_sequences": 7, "num_tokens": float(mask.sum()), "max_completion_length": 9,
        "stats_num_tokens": mask.sum(),
    }  # fmt: skip
    whole_input = logps.clone().requires_grad_(True)
    whole, whole_stats = _grpo_loss(whole_input, old_logps, advantages, mask, loss_type, policy_mask=policy_mask,
                                   entropy=entropy, importance_weights=weights, **options)  # fmt: skip
    whole.backward()
    micro_input = logps.clone().requires_grad_(True)
    total, totals = torch.zeros(()), {}
    for mb in (slice(0, 3), slice(3, 6), slice(6, 7)):
        old = None if old_logps is None else old_logps[mb]
        loss, stats = _grpo_loss(micro_input[mb], old, advantages[mb], mask[mb], loss_type,
                                policy_mask=policy_mask[mb], entropy=entropy[mb],
                                importance_weights=None if weights is None else weights[mb],
                                **{**options, "ref_logps": ref_logps[mb]})  # fmt: skip
        loss.backward()
        total = total + loss.detach()
        for name, value in stats.items():
            totals[name] = totals.get(name, 0) + value
    torch.testing.assert_close(total, whole.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(micro_input.grad, whole_input.grad, rtol=1e-6, atol=1e-7)
    assert totals.keys() == whole_stats.keys()
    for name in totals:
        torch.testing.assert_close(totals[name], whole_stats[name], rtol=1e-6, atol=1e-6, msg=name)


def test_at_ratio_one_every_level_has_the_policy_gradient_unless_tokens_leave_the_policy_term():
    """With num_iterations = 1 every ratio is 1 and every level gives the plain policy gradient (GSPO's remark for
    outcome advantages); the levels part as soon as the ratio moves or only some tokens keep the policy term."""
    logps, old_logps, _, advantages, mask, entropy = _signal_inputs()
    policy_mask = _top_entropy(entropy, mask, 0.3)

    def gradient(level, old, keep=None):
        weights = logps.clone().requires_grad_(True)
        loss, _ = _grpo_loss(weights, old, advantages, mask, "grpo", importance_sampling_level=level, policy_mask=keep)
        (grad,) = torch.autograd.grad(loss, weights)
        return grad

    token, sequence, sequence_token = (gradient(level, None) for level in LEVELS)
    torch.testing.assert_close(sequence, token, **F64)
    torch.testing.assert_close(sequence_token, token, **F64)
    # ratios away from 1: the token ratio weighs each token, the sequence ratio the whole sequence
    moved = {level: gradient(level, old_logps) for level in LEVELS}
    assert not torch.allclose(moved["token"], moved["sequence"])
    torch.testing.assert_close(moved["sequence_token"], moved["sequence"], **F64)
    # top-entropy tokens only: the sequence ratio still moves every token, GSPO-token only the kept ones
    kept = {level: gradient(level, None, policy_mask) for level in LEVELS}
    assert not torch.allclose(kept["sequence"], kept["sequence_token"])
    torch.testing.assert_close(kept["sequence_token"], kept["token"], **F64)
    # in rows that keep some token, the tokens left out still move under the sequence ratio
    outside = (mask != 0) & ~policy_mask & policy_mask.any(dim=1, keepdim=True)
    assert outside.any() and (kept["sequence_token"][outside] == 0).all() and (kept["sequence"][outside] != 0).all()


def test_delta_clip_hand_computed():
    # eps 0.2, delta 1.5. A = -1: ratios 1.4 (inside delta: loss r, gradient) and 2.0 (above: loss delta, none).
    ratio = torch.tensor([[1.4, 2.0], [1.4, 2.0]], dtype=torch.float64)
    logps = ratio.log().requires_grad_(True)
    advantages = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logps, torch.zeros_like(ratio), advantages, 0.2, delta=1.5)
    torch.testing.assert_close(loss, torch.tensor([[1.4, 1.5], [-1.2, -1.2]], dtype=torch.float64), **F64)
    assert clipped["clip_delta"].tolist() == [[False, True], [False, False]]
    assert clipped["clip_high"].tolist() == [[False, False], [True, True]]  # A > 0: the epsilon clip binds first
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[1.4, 0.0], [0.0, 0.0]], dtype=torch.float64), **F64)
    no_delta, _ = clipped_surrogate(ratio.log(), torch.zeros_like(ratio), advantages, 0.2)
    assert no_delta[0, 1] == 2.0  # without delta the negative-advantage loss grows with the ratio


def test_sequence_ratio_hand_computed():
    # one sequence of 2 kept tokens (and padding): log ratios 0.1 and 0.3 -> s = exp(0.2) < 1.5; padding ignored
    logps = torch.tensor([[0.1, 0.3, 5.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    for level in ("sequence", "sequence_token"):
        loss, clipped = clipped_surrogate(
            logps, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), 0.2, 0.5,
            importance_sampling_level=level, mask=mask,
        )  # fmt: skip
        torch.testing.assert_close(loss[0, :2], torch.full((2,), -math.exp(0.2), dtype=torch.float64), **F64)
        (grad,) = torch.autograd.grad(loss[0, :2].sum(), logps, retain_graph=True)
        s = math.exp(0.2)  # sequence: each token's loss moves both tokens by s / 2; GSPO-token: its own by s
        torch.testing.assert_close(-grad, torch.tensor([[s, s, 0.0]], dtype=torch.float64), **F64)
        (first_only,) = torch.autograd.grad(loss[0, 0], logps)
        expected = [[s / 2, s / 2, 0.0]] if level == "sequence" else [[s, 0.0, 0.0]]
        torch.testing.assert_close(-first_only, torch.tensor(expected, dtype=torch.float64), **F64)


def test_truncated_completions_count_as_sequences_not_as_tokens():
    """Two sequences of 2 tokens of loss 1 each, the second truncated: grpo and dr_grpo still divide by 2
    sequences, bnpo and dapo by the 2 tokens left (TRL's normalisers with the truncated rows' loss mask zero)."""
    per_token = torch.ones(2, 2, dtype=torch.float64)
    mask = drop_truncated(torch.ones(2, 2), torch.tensor([False, True]))
    assert mask.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    expected = {"grpo": 1 / 2, "bnpo": 2 / 2, "dapo": 2 / 2, "dr_grpo": 2 / (2 * 4)}
    for loss_type, value in expected.items():
        loss = aggregate_loss(per_token, mask, loss_type, max_completion_length=4)
        assert loss.item() == pytest.approx(value), loss_type


def test_drop_truncated_keeps_the_mask_dtype_and_rejects_a_bad_shape():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = drop_truncated(mask, torch.tensor([True, False]))
    assert out.dtype == mask.dtype and out.tolist() == [[0, 0, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match=r"truncated must be \(B,\) = \(2,\), got \(3,\)"):
        drop_truncated(mask, torch.tensor([True, False, True]))


@pytest.mark.parametrize("rho", [1.0, 0.8, 0.5, 0.2, 0.05, 0.0])
@pytest.mark.parametrize("count", [1, 2, 7, 100])
def test_entropy_quantile_threshold_matches_the_loop_reference_and_torch_quantile(rho, count):
    values = 4 * torch.rand(count, generator=_gen(count), dtype=torch.float64)
    threshold = entropy_quantile_threshold(values, rho)
    torch.testing.assert_close(threshold, torch.tensor(_ref_quantile(values.tolist(), 1 - rho), dtype=torch.float64))
    torch.testing.assert_close(threshold, torch.quantile(values, 1 - rho), **F64)
    kept = (values >= threshold).float().mean().item()
    if count == 100:  # linear interpolation keeps about rho of the tokens (at least the top one)
        assert abs(kept - max(rho, 0.01)) <= 0.011


def test_top_entropy_quantile_one_keeps_every_token_and_zero_the_highest_only():
    entropy = torch.tensor([[0.5, 2.0, 1.0], [3.0, 0.1, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # 9.0 is padding: never kept, never the threshold
    assert _top_entropy(entropy, mask, 1.0).tolist() == [[True, True, True], [True, True, False]]
    assert _top_entropy(entropy, mask, 0.0).tolist() == [[False, False, False], [True, False, False]]
    assert _top_entropy(entropy, mask, 0.5).tolist() == [[False, True, True], [True, False, False]]
    assert entropy_quantile_threshold(torch.zeros(0), 0.2) == math.inf


def test_top_entropy_quantile_one_is_exactly_todays_loss():
    logps, old_logps, ref_logps, advantages, mask, entropy = _signal_inputs(torch.float32)
    plain, _ = _grpo_loss(logps, old_logps, advantages, mask, "dapo", ref_logps=ref_logps, beta=0.04)
    every, _ = _grpo_loss(logps, old_logps, advantages, mask, "dapo", ref_logps=ref_logps, beta=0.04,
                         policy_mask=_top_entropy(entropy, mask, 1.0))  # fmt: skip
    assert torch.equal(plain, every)


def test_importance_sampling_levels_hold_the_documented_variants():
    assert IMPORTANCE_SAMPLING_LEVELS.names() == tuple(LEVELS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": 1.2}, r"delta must be above 1 \+ epsilon_high = 1.28, got 1.2"),
        ({"importance_sampling_level": "seq"}, r"Unknown importance_sampling_level 'seq'; known values are"),
        ({"mask": torch.ones(2, 4)}, r"mask must be \(B, T\) like logps"),
    ],
)
def test_clipped_surrogate_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), 0.2, 0.28, **kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: entropy_quantile_threshold(torch.zeros(2, 2), 0.5), r"entropies must be 1-D"),
        (lambda: entropy_quantile_threshold(torch.zeros(3), 1.5), r"top_quantile must be in \[0, 1\], got 1.5"),
        (lambda: high_entropy_mask(torch.zeros(2, 3), torch.ones(2, 2), 0.0), r"entropy must be \(B, T\) like"),
        (
            lambda: _grpo_loss(torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), policy_mask=torch.ones(3, 3)),
            r"policy_mask must be \(B, T\) like the mask",
        ),
        (
            lambda: _grpo_loss(
                torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), importance_weights=torch.ones(2, 4)
            ),
            r"importance_weights must be \(B, T\) like the mask, got \(2, 4\) and \(2, 3\)",
        ),
    ],
)
def test_token_selection_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
