"""Table-driven tests of the accuracy reward: Vietnamese answers, synonyms, decomposed (NFD) input, partial credit."""

from __future__ import annotations

import unicodedata

import pytest

from grpo_lightning.rewards import get_reward
from grpo_lightning.rewards.accuracy import accuracy_reward, answer_score


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("<think>x</think><answer>có</answer><explain>y</explain>", "có", 3.0),
        ("<answer>Có.</answer>", "có", 3.0),
        ("<answer>đúng</answer>", "có", 3.0),  # yes/no synonyms count as equal
        ("<answer>Phải</answer>", "có", 3.0),
        ("<answer>sai</answer>", "không", 3.0),
        ("<answer>không</answer>", "sai", 3.0),
        ("<answer>không</answer>", "có", 0.0),
        ("<answer>không có</answer>", "có", 0.0),  # a yes/no truth gets no partial credit: "không có" is "no"
        ("<answer>cỏ</answer>", "có", 0.0),  # diacritics matter: grass is not yes
        ("<answer>màu đỏ</answer>", "màu đỏ", 3.0),
        ("<answer>  Màu   ĐỎ!! </answer>", "màu đỏ", 3.0),
        (nfd("<answer>màu đỏ</answer>"), "màu đỏ", 3.0),  # decomposed prediction
        ("<answer>người đàn ông</answer>", nfd("Người đàn ông"), 3.0),  # decomposed ground truth
        (nfd("<answer>Đúng</answer>"), "có", 3.0),
        ("<answer>đỏ</answer>", "màu đỏ", 1.5),  # 1 of 2 ground-truth words: at least half
        (nfd("<answer>đỏ</answer>"), "màu đỏ", 1.5),
        ("<answer>con mèo trắng</answer>", "con mèo đen", 1.5),  # 2 of 3
        ("<answer>lá cây xanh</answer>", "xanh lá cây", 1.5),  # every word, other order: partial, not exact
        ("<answer>ba con chó</answer>", "hai con mèo", 0.0),  # 1 of 3
        ("<answer>màu xanh</answer>", "đỏ", 0.0),
        ("<answer>2</answer>", "2", 3.0),
        ("<answer>hai</answer>", "2", 0.0),  # no number words -> digits mapping
        ("<answer>sai</answer><answer>màu đỏ</answer>", "màu đỏ", 3.0),  # the last <answer> counts
        ("màu đỏ", "màu đỏ", 0.0),  # no <answer> tag
        ("<answer>màu đỏ", "màu đỏ", 0.0),  # unterminated tag
        ("<answer></answer>", "màu đỏ", 0.0),
        ("<answer>màu đỏ</answer>", "", 0.0),  # an empty ground truth cannot be matched
        ("<answer>...</answer>", "?", 0.0),
    ],
)
def test_accuracy_reward(completion, answer, expected):
    assert accuracy_reward([completion], ["unused"], answer=[answer]) == [expected]


@pytest.mark.parametrize(
    ("prediction", "ground_truth", "expected"),
    [
        ("màu đỏ", "màu đỏ", 3.0),
        ("Đúng", "phải", 3.0),
        ("đỏ", "màu đỏ", 1.5),
        ("xanh", "màu đỏ", 0.0),
        ("đỏ đỏ đỏ", "màu đỏ", 1.5),  # word sets: repeating a word does not count twice
        ("màu đỏ", "đỏ", 1.5),  # the whole truth appears among more words
        ("", "màu đỏ", 0.0),
        ("", "", 0.0),
    ],
)
def test_answer_score_is_the_string_level_core(prediction, ground_truth, expected):
    assert answer_score(prediction, ground_truth) == expected


def test_ground_truth_falls_back_to_the_solution():
    completions = ["<answer>màu đỏ</answer>", "<answer>đỏ</answer>", "<answer>xanh</answer>"]
    tagged = ["<answer>màu đỏ</answer><explain>vì chiếc xe màu đỏ</explain>"] * 3
    assert accuracy_reward(completions, tagged) == [3.0, 1.5, 0.0]
    assert accuracy_reward(completions, ["màu đỏ"] * 3) == [3.0, 1.5, 0.0]  # an untagged solution is the answer
    # The answer field wins over the solution when both are there.
    assert accuracy_reward(completions, ["xanh"] * 3, answer=["màu đỏ"] * 3) == [3.0, 1.5, 0.0]
    with pytest.raises(ValueError, match="neither an 'answer' nor a 'solution'"):
        accuracy_reward(completions)


def test_accuracy_is_registered_and_takes_batch_fields():
    reward = get_reward("accuracy")
    assert reward is accuracy_reward
    fields = {"id": ["q1", "q2"], "question": ["Màu gì?", "Có mèo không?"], "answer": ["đỏ", "có"]}
    assert reward(completions=["<answer>đỏ</answer>", "<answer>đúng</answer>"], solution=["", ""], **fields) == [
        3.0,
        3.0,
    ]
