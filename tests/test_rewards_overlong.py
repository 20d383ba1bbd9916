"""The ``overlong`` reward: DAPO's soft overlong penalty from token counts, table-driven, Vietnamese text included."""

from __future__ import annotations

import pytest

from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards import REWARDS, RewardError, get_reward, score_completions
from grpo_lightning.rewards.overlong import OverlongReward, soft_overlong_penalty


def _ref_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO eq. 13 written out: 0 in the expected range, linear to -1 over the buffer, -1 beyond."""
    if length <= max_length - buffer:
        return 0.0
    if length > max_length:
        return -1.0
    return -(length - (max_length - buffer)) / buffer


@pytest.mark.parametrize(
    ("length", "max_length", "buffer", "expected"),
    [
        (0, 20, 5, 0.0),
        (15, 20, 5, 0.0),  # the last length with no penalty: L - buffer
        (16, 20, 5, -0.2),
        (18, 20, 5, -0.6),
        (20, 20, 5, -1.0),  # the budget itself
        (21, 20, 5, -1.0),
        (1, 1, 1, -1.0),
        (256, 256, 64, -1.0),
        (224, 256, 64, -0.5),
        (192, 256, 64, 0.0),
    ],
)
def test_soft_overlong_penalty_table(length, max_length, buffer, expected):
    assert soft_overlong_penalty(length, max_length, buffer) == pytest.approx(expected)
    assert soft_overlong_penalty(length, max_length, buffer) == pytest.approx(_ref_penalty(length, max_length, buffer))


@pytest.mark.parametrize(
    ("completions", "lengths", "expected"),
    [
        # Vietnamese text of very different character counts: only the token counts matter
        (
            [
                "<think>Có một con mèo</think><answer>có</answer>",
                "<answer>không</answer><explain>Trong ảnh không có người nào đang đứng cạnh chiếc xe đạp "
                "màu đỏ</explain>",
                "ừ",
                "",
            ],
            [10, 10, 10, 10],
            [0.0, 0.0, 0.0, 0.0],
        ),
        (["Đây là", "Đây là", "Đây là", "Đây là"], [12, 13, 14, 16], [0.0, -0.25, -0.5, -1.0]),
        (["Xin chào thế giới", "Chú chó đang chạy trên bãi cỏ xanh"], [15, 16], [-0.75, -1.0]),
    ],
)
def test_the_reward_reads_token_counts_not_text(completions, lengths, expected):
    reward = get_reward("overlong", buffer=4, max_length=16)
    assert reward(completions, [""] * len(completions), completion_length=lengths) == pytest.approx(expected)


def test_max_length_defaults_to_the_sampling_budget_the_trainer_passes():
    reward = get_reward("overlong", buffer=4)
    scores = reward(["một", "hai", "ba"], completion_length=[8, 10, 12], max_completion_length=[12, 12, 12])
    assert scores == pytest.approx([0.0, -0.5, -1.0])
    # an explicit max_length wins over the budget
    explicit = get_reward("overlong", buffer=4, max_length=20)
    assert explicit(["một"], completion_length=[12], max_completion_length=[12]) == [0.0]


def test_the_reward_is_registered_and_scored_like_any_other():
    assert REWARDS["overlong"] is OverlongReward
    fields = {"id": ["a", "b"], "completion_length": [3, 8], "max_completion_length": [8, 8]}
    scores = score_completions(
        [("overlong", get_reward("overlong", buffer=2))], ["câu một", "câu hai"], ["", ""], fields
    )
    assert scores[:, 0].tolist() == [0.0, -1.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"reward 'overlong' needs its buffer.*model.rewards.kwargs.overlong.buffer"),
        ({"buffer": 0}, r"buffer must be a whole number of tokens >= 1, not 0"),
        ({"buffer": 2.5}, r"buffer must be a whole number of tokens >= 1, not 2.5"),
        ({"buffer": True}, r"buffer must be a whole number of tokens >= 1, not True"),
        ({"buffer": 8, "max_length": 4}, r"buffer \(8\) is above max_length \(4\)"),
        ({"buffer": 2, "max_length": "16"}, r"max_length must be a whole number of tokens, not '16'"),
    ],
)
def test_bad_options_are_refused_when_the_reward_is_built(options, message):
    with pytest.raises(ConfigError, match=message):
        get_reward("overlong", **options)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": ["a"]}, r"needs the field completion_length"),
        ({"id": ["a"], "completion_length": [3]}, r"no max_length and no field max_completion_length"),
        ({"id": ["a"], "completion_length": [3], "max_completion_length": [2]}, r"buffer \(4\) is above the length"),
        ({"id": ["a"], "completion_length": [3, 4]}, r"2 completion_length values for 1 completions"),
    ],
)
def test_missing_fields_stop_the_run_naming_the_reward(fields, message):
    with pytest.raises(RewardError, match=r"Reward 'overlong' raised ValueError: .*" + message):
        score_completions([("overlong", get_reward("overlong", buffer=4))], ["câu"], [""], fields)
