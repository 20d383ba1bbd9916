"""``combine_rewards``: the weighted sum (GRPO) and GDPO's per-function group normalisation first, against float64
loops, with None (NaN: no opinion) entries, and compared with TRL's ``normalize_then_sum`` advantages; GDPO's
advantages end to end (completions no reward scored left out of every statistic), and the options GDPO needs."""

from __future__ import annotations

import math
import re

import pytest
import torch

from grpo_lightning.algorithms import compute_group_advantages
from grpo_lightning.config import LossConfig, RewardConfig, check_option_groups
from grpo_lightning.errors import ConfigError
from grpo_lightning.module import GRPOModule
from grpo_lightning.rewards import AGGREGATIONS, combine_rewards, mark_unscored

NAN = math.nan


def _ref_combine(scores: list[list[float]], weights: list[float], aggregation: str, group: int) -> list[float]:
    """Loops over groups, functions and completions; None (NaN) left out of every mean, std and sum."""
    rows = [list(row) for row in scores]
    if aggregation == "normalize_then_sum":
        for start in range(0, len(rows), group):
            for f in range(len(weights)):
                scored = [rows[j][f] for j in range(start, start + group) if not math.isnan(rows[j][f])]
                if not scored:
                    continue
                mean = sum(scored) / len(scored)
                variance = sum((v - mean) ** 2 for v in scored) / (len(scored) - 1) if len(scored) > 1 else 0.0
                for j in range(start, start + group):
                    if not math.isnan(rows[j][f]):
                        rows[j][f] = (rows[j][f] - mean) / (math.sqrt(variance) + 1e-4)
    return [sum(w * v for w, v in zip(weights, row, strict=True) if not math.isnan(v)) for row in rows]


#: 2 prompts x G = 3, functions: accuracy-like (0/1.5/3), format (0/1) and one with Nones.
SCORES = [
    [3.0, 1.0, NAN],
    [0.0, 1.0, 0.5],
    [1.5, 0.0, NAN],
    [3.0, 1.0, NAN],  # second group: the first function is constant, the third scored once
    [3.0, 0.0, 2.0],
    [3.0, 1.0, NAN],
]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [2.0, 0.5, 3.0]])
def test_combine_rewards_matches_the_loop_reference(aggregation, weights):
    scores = torch.tensor(SCORES, dtype=torch.float64)
    got = combine_rewards(scores, weights, aggregation, num_generations=3)
    expected = _ref_combine(SCORES, weights, aggregation, 3)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert not torch.isnan(got).any()


def test_normalize_then_sum_hand_computed():
    # one group of 2, weights 1: f1 = [1, 0] (std 0.7071), f2 = [0, 2] (std 1.4142): each becomes +-0.7071
    scores = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    z1, z2 = 0.5 / (math.sqrt(0.5) + 1e-4), 1.0 / (math.sqrt(2.0) + 1e-4)
    got = combine_rewards(scores, [2.0, 1.0], "normalize_then_sum", num_generations=2)
    torch.testing.assert_close(got, torch.tensor([2 * z1 - z2, -2 * z1 + z2], dtype=torch.float64))
    # the plain weighted sum of the same scores is constant: no signal for GRPO, some for GDPO
    assert combine_rewards(scores, [2.0, 1.0]).tolist() == [2.0, 2.0]


def test_a_completion_no_function_scored_gets_zero_in_both_modes():
    scores = torch.tensor([[NAN, NAN], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for aggregation in AGGREGATIONS:
        assert combine_rewards(scores, [1.0, 1.0], aggregation, num_generations=3)[0].item() == 0.0


def test_random_scores_with_nones_match_the_loop_reference():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(5 * 4, 3, generator=gen, dtype=torch.float64)
    scores[torch.rand(5 * 4, 3, generator=gen) < 0.3] = NAN
    weights = [1.0, -0.5, 2.0]
    got = combine_rewards(scores, weights, "normalize_then_sum", num_generations=4)
    expected = _ref_combine(scores.tolist(), weights, "normalize_then_sum", 4)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_with_batch_scaling_the_advantages_are_trls_normalize_then_sum_when_every_function_scored():
    """TRL's GDPO advantages: (sum - batch mean) / (batch std + 1e-4), written out here; ours centre on the group
    mean, which is 0 after the per-function normalisation when nothing is None."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (4 * 3, 2), generator=gen).double()
    weights = [1.0, 0.5]
    summed = _ref_combine(scores.tolist(), weights, "normalize_then_sum", 3)
    mean = sum(summed) / len(summed)
    std = math.sqrt(sum((v - mean) ** 2 for v in summed) / (len(summed) - 1))
    trl = [(v - mean) / (std + 1e-4) for v in summed]
    rewards = combine_rewards(scores, weights, "normalize_then_sum", num_generations=3)
    ours = compute_group_advantages(rewards, 3, "batch")
    torch.testing.assert_close(ours, torch.tensor(trl, dtype=torch.float64), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregation": "mean"}, r"Unknown reward aggregation 'mean'; known values are: sum_then_normalize, normal"),
        ({"aggregation": "normalize_then_sum"}, r"needs num_generations dividing the 6 completions, got None"),
        ({"aggregation": "normalize_then_sum", "num_generations": 4}, r"dividing the 6 completions, got 4"),
    ],
)
def test_combine_rewards_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        combine_rewards(torch.tensor(SCORES), [1.0, 1.0, 1.0], **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# GDPO's advantages, and completions that no reward scored
# ---------------------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and unbiased std (0 for fewer than two values)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _ref_gdpo_advantages(scores: list[list[float]], weights: list[float], group: int, eps: float = 1e-4) -> list[float]:
    """GDPO (arXiv 2601.05242) as TRL computes it, in loops: each function normalised within each group over the
    completions it scored, the weighted sum of what is there, then (sum - batch mean) / (batch std + eps) with the
    batch statistics over the completions some function scored; a completion no function scored gets 0."""
    functions = len(weights)
    normalised = [[NAN] * functions for _ in scores]
    for start in range(0, len(scores), group):
        for f in range(functions):
            rows = [j for j in range(start, start + group) if not math.isnan(scores[j][f])]
            if not rows:
                continue
            mean, std = _mean_std([scores[j][f] for j in rows])
            for j in rows:
                normalised[j][f] = (scores[j][f] - mean) / (std + eps)
    scored = [j for j, row in enumerate(scores) if any(not math.isnan(v) for v in row)]
    summed = {j: sum(w * v for w, v in zip(weights, normalised[j], strict=True) if not math.isnan(v)) for j in scored}
    mean, std = _mean_std(list(summed.values())) if summed else (0.0, 0.0)
    return [(summed[j] - mean) / (std + eps) if j in summed else 0.0 for j in range(len(scores))]


def _gdpo_advantages(scores: torch.Tensor, weights: list[float], group: int) -> torch.Tensor:
    """What the module does: combine, mark the unscored completions, batch-scaled group advantages."""
    rewards = combine_rewards(scores, weights, "normalize_then_sum", num_generations=group)
    return compute_group_advantages(mark_unscored(rewards, scores), group, "batch")


#: 3 groups of G = 4, 3 functions.
GDPO_TABLE = [
    # group 0: function 0 constant (adds 0 here), function 2 scored twice
    [1.0, 0.0, NAN],
    [1.0, 1.0, 2.0],
    [1.0, 1.0, NAN],
    [1.0, 0.0, 5.0],
    # group 1: a completion no function scored, function 1 scored once (std 0: adds 0)
    [NAN, NAN, NAN],
    [3.0, NAN, 1.0],
    [0.0, 2.0, 1.0],
    [1.5, NAN, 4.0],
    # group 2: nothing scored at all
    [NAN, NAN, NAN],
    [NAN, NAN, NAN],
    [NAN, NAN, NAN],
    [NAN, NAN, NAN],
]


def _assert_close_scaled(got: torch.Tensor, expected: list[float]) -> None:
    want = torch.tensor(expected, dtype=torch.float64)
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [2.0, 0.5, -1.0]])
def test_gdpo_advantages_match_the_loop_reference_on_a_hand_built_table(weights):
    scores = torch.tensor(GDPO_TABLE, dtype=torch.float64)
    got = _gdpo_advantages(scores, weights, 4)
    _assert_close_scaled(got, _ref_gdpo_advantages(GDPO_TABLE, weights, 4))
    unscored = [4, 8, 9, 10, 11]
    assert got[unscored].tolist() == [0.0] * 5  # exactly 0, not NaN and not a share of the batch's statistics
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("seed", range(6))
def test_gdpo_advantages_match_the_loop_reference_on_random_tables_with_nones(seed):
    gen = torch.Generator().manual_seed(seed)
    group, functions = 4, 3
    scores = torch.randint(0, 4, (6 * group, functions), generator=gen).double()  # integers: constant groups happen
    scores[torch.rand(scores.shape, generator=gen) < 0.3] = NAN
    scores[seed % len(scores)] = NAN  # at least one completion that no function scored
    scores[group : 2 * group, 0] = 2.0  # one group in which function 0 is constant
    weights = (torch.rand(functions, generator=gen) * 2 - 0.5).tolist()
    got = _gdpo_advantages(scores, weights, group)
    _assert_close_scaled(got, _ref_gdpo_advantages(scores.tolist(), weights, group))


def test_counting_an_unscored_completion_as_zero_changes_the_batch_std():
    """The negative control of the tests above: TRL's batch std leaves the unscored completions out. Counted as 0
    (here 5 of 12 completions) they add values at the batch mean (0 after GDPO's normalisation): the same sum of
    squares over more values, a smaller std, and every advantage larger by sqrt(11 / 6)."""
    scores = torch.tensor(GDPO_TABLE, dtype=torch.float64)
    rewards = combine_rewards(scores, [1.0, 1.0, 1.0], "normalize_then_sum", num_generations=4)
    counted_as_zero = compute_group_advantages(rewards, 4, "batch")
    left_out = _gdpo_advantages(scores, [1.0, 1.0, 1.0], 4)
    scored = [0, 1, 2, 3, 5, 6, 7]
    ratio = counted_as_zero[scored] / left_out[scored]
    expected = math.sqrt((len(GDPO_TABLE) - 1) / (len(scored) - 1))
    torch.testing.assert_close(ratio, torch.full_like(ratio, expected), rtol=1e-3, atol=0)  # 1e-3: the eps in the std
    assert left_out[4] == 0.0  # counted as 0 it gets 0 only up to the rounding of its group's mean


def _ref_group_advantages_of_the_scored(rewards: list[float], group: int, mode: str, eps: float = 1e-4) -> list[float]:
    """GRPO's advantages with NaN rewards (no reward) left out of the group's mean and std and of the batch std, as
    TRL's ``sum_then_normalize`` does; 0 for them, and for groups whose rewards are equal."""
    given = [r for r in rewards if not math.isnan(r)]
    _, batch_std = _mean_std(given) if given else (0.0, 0.0)
    out = []
    for start in range(0, len(rewards), group):
        values = [r for r in rewards[start : start + group] if not math.isnan(r)]
        mean, std = _mean_std(values) if values else (0.0, 0.0)
        divisor = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[mode]
        for r in rewards[start : start + group]:
            constant = len(set(values)) <= 1
            out.append(0.0 if math.isnan(r) or constant else (r - mean) / divisor)
    return out


@pytest.mark.parametrize("mode", ["group", "batch", "none"])
def test_group_advantages_leave_rewardless_completions_out_of_every_statistic(mode):
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(5 * 4, generator=gen, dtype=torch.float64) * 3 + 1
    rewards[[1, 6, 7, 12, 13, 14, 15]] = NAN  # a group with one reward left, and a group with none
    rewards[16:20] = torch.tensor([2.0, 2.0, NAN, 2.0], dtype=torch.float64)  # equal rewards around a NaN
    got = compute_group_advantages(rewards, 4, mode)
    _assert_close_scaled(got, _ref_group_advantages_of_the_scored(rewards.tolist(), 4, mode))
    assert got[16:20].tolist() == [0.0] * 4 and got[12:16].tolist() == [0.0] * 4


def test_mark_unscored_makes_nan_only_the_completions_no_function_scored():
    scores = torch.tensor([[NAN, NAN], [1.0, NAN], [NAN, 0.0], [NAN, NAN]], dtype=torch.float64)
    rewards = combine_rewards(scores, [1.0, 1.0])
    assert rewards.tolist() == [0.0, 1.0, 0.0, 0.0]  # shown rewards: 0 for no opinion
    marked = mark_unscored(rewards.float(), scores)
    assert marked.dtype == torch.float32 and torch.isnan(marked).tolist() == [True, False, False, True]
    assert marked[1:3].tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("aggregation", "scale_rewards", "refused"),
    [
        ("normalize_then_sum", "group", "with group the sum would be normalised within each group again"),
        ("normalize_then_sum", "none", "with none the sum would be not scaled"),
        ("normalize_then_sum", "batch", None),
        ("sum_then_normalize", "group", None),
        ("sum_then_normalize", "batch", None),
        ("sum_then_normalize", "none", None),
    ],
)
def test_gdpo_needs_batch_scaling(aggregation, scale_rewards, refused):
    rewards, loss = RewardConfig(aggregation=aggregation), LossConfig(scale_rewards=scale_rewards)
    if refused is None:
        check_option_groups(rewards, loss)
        return
    first = (
        f"model.rewards.aggregation normalize_then_sum (GDPO) needs model.loss.scale_rewards batch, not {scale_rewards}"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(first)}: .*{refused}. Set model.loss.scale_rewards: batch"):
        check_option_groups(rewards, loss)
    # the module checks them together when it is built, before it loads anything
    with pytest.raises(ConfigError, match=re.escape(first)):
        GRPOModule("no-such-model", rewards=rewards, loss=loss)
