"""Table-driven tests of the format rewards, the registry and reward scoring."""

from __future__ import annotations

import json
import math
import re
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from grpo_lightning.config import RewardConfig
from grpo_lightning.errors import ConfigError, UserError
from grpo_lightning.rewards import (
    REWARDS,
    RewardError,
    RewardOpinions,
    _reward_traceback,
    combine_rewards,
    get_reward,
    reward_name,
    score_completions,
)
from grpo_lightning.rewards.format import format_reward, tag_count_reward

WELL_FORMED = "<think>Con mèo ngồi trên ghế.</think><answer>có</answer><explain>vì con mèo đang ngồi trên ghế</explain>"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (WELL_FORMED, 1.0),
        ("  <think>a</think>\n<answer>đỏ</answer>\n<explain>vì nó màu đỏ</explain>\n", 1.0),  # whitespace between parts
        ("<answer>có</answer><think>x</think><explain>y</explain>", 0.0),  # wrong order
        ("<think>x</think><answer></answer><explain>y</explain>", 0.0),  # empty answer
        ("<think>x</think><answer>  </answer><explain>y</explain>", 0.0),  # blank answer
        ("<think>x</think><answer>a</answer><explain>y</explain><answer>b</answer>", 0.0),  # answer twice
        ("<think>x<think>z</think><answer>a</answer><explain>y</explain>", 0.0),  # nested tag
        ("<think>x</think><answer>a</answer>", 0.0),  # no explanation
        ("trả lời: có", 0.0),
        ("", 0.0),
        ("preamble <think>x</think><answer>a</answer><explain>y</explain>", 0.0),  # text outside the tags
    ],
)
def test_format_reward(completion, expected):
    assert format_reward([completion], ["unused"]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (WELL_FORMED, 1.0),
        ("", 0.0),
        ("<think>", 1 / 6),
        ("<think></think>", 2 / 6),
        ("<answer>có</answer>", 2 / 6),
        ("<think><think></think>", 1 / 6),  # a repeated tag earns nothing
        ("<explain>vì sao</explain><answer>không</answer><think>", 5 / 6),  # order is format_reward's concern
    ],
)
def test_tag_count_reward(completion, expected):
    assert tag_count_reward([completion], ["unused"]) == pytest.approx([expected])


def test_registry_resolves_names_and_dotted_paths(monkeypatch):
    assert get_reward("format") is format_reward
    assert get_reward("tag_count") is tag_count_reward
    plugin = types.ModuleType("my_reward_plugin")
    plugin.length_reward = lambda completions, solution, **kwargs: [float(len(c)) for c in completions]
    monkeypatch.setitem(sys.modules, "my_reward_plugin", plugin)
    func = get_reward("my_reward_plugin:length_reward")
    assert func(["ab", "xyz"], ["", ""]) == [2.0, 3.0]
    assert reward_name("my_reward_plugin:length_reward") == "length_reward"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "Unknown reward 'nope'. Registered rewards: "),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("grpo_lightning.rewards.format:missing", "has no callable 'missing'"),
    ],
)
def test_registry_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        get_reward(name)
    assert "format" in REWARDS


def test_score_completions_none_is_left_out_of_the_sum():
    def half_opinion(completions, solution, **kwargs):
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    scores = score_completions(
        [("format", format_reward), ("half", half_opinion)], [WELL_FORMED, "x"], ["", ""], {"id": ["a", "b"]}
    )
    assert scores[0].tolist() == [1.0, 1.0]
    assert scores[1, 0].item() == 0.0 and math.isnan(scores[1, 1].item())
    total = combine_rewards(scores, [2.0, 0.5])
    torch.testing.assert_close(total, torch.tensor([2.5, 0.0], dtype=torch.float64))
    assert not torch.isnan(total).any()


def test_a_reward_that_raises_names_itself_and_the_sample():
    def fragile(completions, solution, **kwargs):
        return [1.0 / len(c) for c in completions]  # ZeroDivisionError on an empty completion

    with pytest.raises(RewardError, match=r"Reward 'fragile' raised ZeroDivisionError: .* \(sample id q-2\)") as error:
        score_completions([("fragile", fragile)], ["ok", ""], ["", ""], {"id": ["q-1", "q-2"]})
    # a user error (one message from the command line) that still shows where in the reward it failed, and only that
    lines = str(error.value).splitlines()
    assert lines[1] == "Traceback (most recent call last):"
    assert "in fragile" in lines[2]
    assert "return [1.0 / len(c) for c in completions]" in str(error.value)
    assert "score_completions" not in str(error.value)
    assert lines[-1] == "ZeroDivisionError: float division by zero"


def _clear_tracebacks(error: BaseException | None) -> None:
    """What huggingface_hub does to the exceptions in flight when a later call goes through it: the tracebacks of the
    whole chain are dropped."""
    while error is not None:
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


class HubLikeReward:
    """A reward that fails on the empty completion, deep in a helper, and on every later call clears the tracebacks of
    the exception being handled and of every exception it raised before (huggingface_hub's behaviour)."""

    def __init__(self, with_setup: bool = False):
        self.calls = 0
        self.raised: list[BaseException] = []
        if with_setup:
            self.setup = lambda: None  # declares resources: it must not be called again to find the sample

    def __call__(self, completions, solution, **kwargs):
        self.calls += 1
        for error in [sys.exc_info()[1], *self.raised]:
            _clear_tracebacks(error)
        try:
            return [self.download_scores(c) for c in completions]
        except OSError as error:
            self.raised.append(error)
            raise

    @staticmethod
    def download_scores(completion: str) -> float:
        if not completion:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return 1.0


@pytest.mark.parametrize(
    ("with_setup", "where", "calls"),
    [
        (False, r"\(sample id q-2 at global step 7\)", 1 + 2),  # the whole batch, then q-1 (fine) and q-2 (fails)
        (True, r"\(one of sample ids q-1, q-2, q-3 at global step 7\)", 1),  # holds resources: called once only
    ],
)
def test_a_reward_is_reported_with_its_own_frames_even_when_a_later_call_clears_tracebacks(with_setup, where, calls):
    reward = HubLikeReward(with_setup)
    with pytest.raises(RewardError) as error:
        score_completions([("hub", reward)], ["ok", "", "fine"], [""] * 3, {"id": ["q-1", "q-2", "q-3"]}, step=7)
    message = str(error.value)
    assert re.match(r"Reward 'hub' raised OSError: We couldn't connect to .* to load the files " + where, message)
    assert reward.calls == calls
    lines = message.splitlines()
    assert lines[1] == "Traceback (most recent call last):"
    assert "in __call__" in lines[2] and ", in download_scores" in message  # the reward's own frames, down to the raise
    assert "raise OSError(\"We couldn't connect to" in message  # the line that raised
    assert "score_completions" not in message and "call_with_time_limit" not in message
    assert lines[-1] == "OSError: We couldn't connect to 'https://huggingface.co' to load the files"
    if not with_setup:  # the search for the sample did clear the original traceback: the text was taken before
        assert reward.raised[0].__traceback__ is None


def test_a_traceback_that_is_already_gone_still_gives_the_exception_line():
    assert _reward_traceback(ValueError("no traceback")) == "ValueError: no traceback"


def test_a_reward_that_fails_only_on_the_whole_batch_names_the_batch():
    def pairwise(completions, solution, **kwargs):
        if len(completions) > 1:
            raise ValueError("needs one completion at a time")
        return [1.0]

    with pytest.raises(RewardError, match=r"\(sample ids a, b; no sample fails alone\)\. In the reward:"):
        score_completions([("pairwise", pairwise)], ["x", "y"], ["", ""], {"id": ["a", "b"]})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"funcs": ["format", "accuracy"], "weights": [1.0]}, r"^rewards.weights has 1 entries for 2 rewards.funcs"),
        ({"kwargs": {"explanation": {}}}, r"^rewards.kwargs names \['explanation'\], which are not in rewards.funcs"),
        ({"timeout_s": 0.0}, r"^rewards.timeout_s must be a positive number of seconds, not 0.0; or null for no limit"),
    ],
)
def test_reward_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        RewardConfig(**options)


def test_a_reward_with_the_wrong_length_or_a_nan_is_refused():
    with pytest.raises(RewardError, match=r"^Reward 'short' returned 1 scores for 2 completions \(sample ids 1, 2\)"):
        score_completions([("short", lambda completions, solution, **kw: [1.0])], ["a", "b"], ["", ""], {"id": [1, 2]})
    with pytest.raises(RuntimeError, match="^Reward 'nan' returned nan for sample id 2; rewards must be finite"):
        score_completions(
            [("nan", lambda completions, solution, **kw: [0.0, math.nan])], ["a", "b"], ["", ""], {"id": [1, 2]}
        )


CONTRACT = r"; a reward must return a list with one number \(or None for no opinion\) per completion\.$"


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, r"^Reward 'plugin' returned None for sample ids q-1, q-2"),
        ("0.5", r"^Reward 'plugin' returned '0\.5' \(a str\) for sample ids q-1, q-2"),
        ({"q-1": 1.0}, r"^Reward 'plugin' returned \{'q-1': 1\.0\} \(a dict\) for sample ids q-1, q-2"),
        (0.5, r"^Reward 'plugin' returned 0\.5 \(a float\) for sample ids q-1, q-2"),
        ([1.0, "0.5"], r"^Reward 'plugin' returned '0\.5' \(a str\) for sample id q-2"),
        ([1.0, [0.5]], r"^Reward 'plugin' returned \[0\.5\] \(a list\) for sample id q-2"),
        ([1.0, 1j], r"^Reward 'plugin' returned 1j \(a complex\) for sample id q-2"),
        (np.array(["1.0", "0.5"]), r"^Reward 'plugin' returned '1\.0' \(a str\) for sample id q-1"),
    ],
)
def test_a_reward_that_returns_no_list_of_numbers_names_itself_and_the_sample(returned, message):
    with pytest.raises(RewardError, match=message + CONTRACT) as error:
        score_completions(
            [("plugin", lambda completions, solution, **kw: returned)], ["a", "b"], ["", ""], {"id": ["q-1", "q-2"]}
        )
    assert isinstance(error.value, UserError) and isinstance(error.value, RuntimeError)


@pytest.mark.parametrize(
    "returned",
    [
        [True, False],  # bools count 1.0 / 0.0: `[a == b for ...]` is a valid reward
        [1, 0],
        (1.0, 0.0),
        [np.float32(1.0), np.int64(0)],
        [np.bool_(True), np.float64(0.0)],
        np.array([1.0, 0.0]),
        torch.tensor([1.0, 0.0]),
        [torch.tensor(1.0), torch.tensor(0)],
    ],
)
def test_any_real_numbers_are_scores(returned):
    scores = score_completions(
        [("plugin", lambda completions, solution, **kw: returned)], ["a", "b"], ["", ""], {"id": ["q-1", "q-2"]}
    )
    assert scores[:, 0].tolist() == [1.0, 0.0] and scores.dtype == torch.float64


def observed_warnings(opinions: RewardOpinions, steps: list[torch.Tensor], ids=("q-1", "q-2")) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step, scores in enumerate(steps):
            opinions.observe(scores, step, list(ids))
    return [str(w.message) for w in record]


def test_a_step_where_a_reward_has_no_opinion_is_warned_about_at_powers_of_two():
    silent = torch.tensor([[1.0, math.nan], [0.0, math.nan]], dtype=torch.float64)
    scored = torch.tensor([[1.0, 1.0], [0.0, math.nan]], dtype=torch.float64)
    steps = [silent, silent, scored, silent, silent, silent]
    assert observed_warnings(RewardOpinions(["format", "yes_no"]), steps) == [
        "Step 0: reward 'yes_no' had no opinion (returned None) on any of the 2 completions (sample ids q-1, q-2); "
        "it contributed nothing to the step (1 such step(s) of 1 so far; the next warning comes at 2).",
        "Step 1: reward 'yes_no' had no opinion (returned None) on any of the 2 completions (sample ids q-1, q-2); "
        "it contributed nothing to the step (2 such step(s) of 2 so far; the next warning comes at 4).",
        "Step 4: reward 'yes_no' had no opinion (returned None) on any of the 2 completions (sample ids q-1, q-2); "
        "it contributed nothing to the step (4 such step(s) of 5 so far; the next warning comes at 8).",
    ]


def test_a_run_whose_rewards_never_have_an_opinion_stops_after_the_first_steps():
    """The only reward returns None for everything: the advantages are all 0 and the run would learn nothing."""
    opinions = RewardOpinions(["plugin"], patience=3)
    nothing = torch.full((4, 1), math.nan, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"^Step 0: no reward had an opinion on any of the 4 completions"):
        opinions.observe(nothing, 0, ["q-1"] * 4)
    with pytest.warns(UserWarning, match=r"^Step 1: no reward had an opinion"):
        opinions.observe(nothing, 1, ["q-2"] * 4)
    with pytest.raises(
        RewardError, match=r"^No reward \('plugin'\) scored any completion in the first 3 training steps"
    ):
        opinions.observe(nothing, 2, ["q-3"] * 4)


def test_one_opinion_in_the_first_steps_is_enough_and_later_silence_only_warns():
    """A reward that scores some samples only may have nothing to score in one batch; that is no reason to stop."""
    nothing = torch.full((2, 1), math.nan, dtype=torch.float64)
    steps = [nothing, torch.tensor([[1.0], [math.nan]], dtype=torch.float64)] + [nothing] * 8
    messages = observed_warnings(RewardOpinions(["yes_no"], patience=2), steps)
    assert [m.split(":")[0] for m in messages] == ["Step 0", "Step 2", "Step 4", "Step 8"]
    assert messages[-1].startswith("Step 8: no reward had an opinion on any of the 2 completions (every reward ")
    assert messages[-1].endswith(
        "the step's advantages are all 0 and it learns nothing (8 such step(s) of 9 so far; "
        "the next warning comes at 16)."
    )


def test_every_process_decides_alike_from_the_opinions_of_all():
    """Under data parallelism a process without opinions does not stop while another process had some."""
    opinions = RewardOpinions(["yes_no"], patience=1)
    with pytest.warns(UserWarning):
        opinions.observe(torch.full((2, 1), math.nan, dtype=torch.float64), 0, opinions_everywhere=lambda count: 3)
    silent_everywhere = RewardOpinions(["yes_no"], patience=1)
    with pytest.raises(RewardError), pytest.warns(UserWarning):
        silent_everywhere.observe(torch.full((2, 1), math.nan, dtype=torch.float64), 0, opinions_everywhere=lambda c: 0)


def test_the_built_in_rewards_are_registered_by_name():
    assert {"accuracy", "format", "tag_count", "explanation"} <= set(REWARDS)


def test_a_yaml_reward_list_scores_a_batch_end_to_end(tmp_path):
    """What the module does with ``reward_funcs``/``reward_weights``/``reward_kwargs``: resolve, score, combine."""
    references = ["con mèo đang ngồi trên ghế", "một con mèo ngồi trên cái ghế"]
    corpus = tmp_path / "train.json"
    records = [
        {"question": "Con gì?", "image_name": "a.jpg", "answer": "con mèo", "explanation": references},
        {"question": "Màu gì?", "image_name": "b.jpg", "answer": "đỏ", "explanation": ["chiếc xe màu đỏ"]},
    ]
    for number, record in enumerate(records):  # an id of its own: the samples of a file may not share one
        record["question_id"] = number
    corpus.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    reward_funcs = ["accuracy", "format", "explanation", "examples.reward_plugin:brevity"]
    reward_weights = [1.0, 0.5, 2.0, 0.1]
    reward_kwargs = {
        "explanation": {
            "cider_weight": 1.0,
            "clip_weight": 0.0,
            "corpus_file": str(corpus),
            "cache_dir": str(tmp_path),
        },
        "examples.reward_plugin:brevity": {"max_words": 4},
    }
    funcs = [(reward_name(name), get_reward(name, **reward_kwargs.get(name, {}))) for name in reward_funcs]
    assert [name for name, _ in funcs] == ["accuracy", "format", "explanation", "brevity"]

    completions = [
        "<think>Có một con mèo.</think><answer>con mèo</answer><explain>con mèo đang ngồi trên ghế</explain>",
        "<think>?</think><answer>mèo</answer><explain>vì thế</explain>",
        "con mèo",
    ]
    fields = {
        "id": ["q1", "q1", "q1"],
        "answer": ["con mèo"] * 3,
        "explanations": [references] * 3,
        "image_path": ["a.jpg"] * 3,
    }
    scores = score_completions(funcs, completions, [""] * 3, fields)
    accuracy, format_, explanation, brevity = scores.T.tolist()
    assert accuracy == [3.0, 1.5, 0.0] and format_ == [1.0, 1.0, 0.0] and brevity[2] == 0.0
    assert explanation[0] > explanation[1] == 0.0 == explanation[2]
    total = combine_rewards(scores, reward_weights)
    expected = (scores * torch.tensor(reward_weights, dtype=torch.float64)).sum(dim=1)
    torch.testing.assert_close(total, expected)
    assert total[0] > total[1] > total[2]
