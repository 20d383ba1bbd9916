"""``combine_rewards``: the weighted sum (GRPO) and GDPO's per-function group normalisation first, against float64
loops, with None (NaN: no opinion) entries, and compared with TRL's ``normalize_then_sum`` advantages."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_lightning.algorithms import compute_group_advantages
from grpo_lightning.rewards import AGGREGATIONS, combine_rewards

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
