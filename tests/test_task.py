"""Table-driven tests of the task protocol: prompt, tags, solution string, completion parsing, prediction records."""

from __future__ import annotations

import unicodedata

import pytest

from grpo_lightning.metrics import validate_records
from grpo_lightning.rewards.format import format_reward
from grpo_lightning.task import (
    DEFAULT_PROMPT_TEMPLATE,
    OPTIONAL_RECORD_FIELDS,
    REQUIRED_RECORD_FIELDS,
    TAG_TOKENS,
    TAGS,
    ParsedCompletion,
    extract_tag,
    format_solution,
    is_well_formed,
    parse_completion,
    prediction_records,
    render_prompt,
    tagged,
)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


WELL_FORMED = "<think>Con mèo ngồi trên ghế.</think><answer>có</answer><explain>vì con mèo đang ngồi trên ghế</explain>"


# ----------------------------------------------------------------------------------------------- prompt, tags
def test_the_default_prompt_names_every_tag_and_takes_the_question():
    assert all(token in DEFAULT_PROMPT_TEMPLATE for token in TAG_TOKENS)
    prompt = render_prompt(DEFAULT_PROMPT_TEMPLATE, "Con mèo màu gì?")
    assert prompt.startswith("Con mèo màu gì?\nHãy trả lời bằng tiếng Việt.")
    assert "{question}" not in prompt


def test_a_template_without_the_question_is_refused():
    with pytest.raises(ValueError, match=r"must contain '\{question\}'"):
        render_prompt("Trả lời ngắn gọn.", "Con mèo màu gì?")


def test_tag_tokens_open_and_close_each_tag_in_order():
    assert TAGS == ("think", "answer", "explain")
    assert TAG_TOKENS == ("<think>", "</think>", "<answer>", "</answer>", "<explain>", "</explain>")
    assert tagged("answer", " có ") == "<answer> có </answer>"


# ------------------------------------------------------------------------------------------------ solution
@pytest.mark.parametrize(
    ("answer", "explanation", "expected"),
    [
        ("có", "vì con mèo đang ngồi trên ghế", "<answer>có</answer><explain>vì con mèo đang ngồi trên ghế</explain>"),
        ("màu đỏ", "", "<answer>màu đỏ</answer><explain></explain>"),  # a sample without references
        ("", "", "<answer></answer><explain></explain>"),
        (" hai ", "vì có\nhai con chó", "<answer> hai </answer><explain>vì có\nhai con chó</explain>"),  # as written
        (nfd("Đúng"), nfd("vì trời mưa"), f"<answer>{nfd('Đúng')}</answer><explain>{nfd('vì trời mưa')}</explain>"),
    ],
)
def test_format_solution(answer, explanation, expected):
    assert format_solution(answer, explanation) == expected
    parsed = parse_completion(format_solution(answer, explanation))
    assert parsed == ParsedCompletion(think=None, answer=answer.strip(), explain=explanation.strip())


# ---------------------------------------------------------------------------------------------- extract_tag
@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        ("<answer> có </answer>", "answer", "có"),
        ("<answer>a</answer> then <answer>b</answer>", "answer", "b"),  # the last one counts
        ("<answer>\nhai\n</answer>", "answer", "hai"),
        ("<answer>unterminated", "answer", None),
        ("no tags", "explain", None),
        ("<explain></explain>", "explain", ""),
        ("<think>a<think>b</think>", "think", "a<think>b"),  # runs to the first closing tag
        ("<answer>có</explain>", "answer", None),  # closed by another tag: not an answer
        ("<ANSWER>có</ANSWER>", "answer", None),  # tags are case-sensitive
    ],
)
def test_extract_tag(text, tag, expected):
    assert extract_tag(text, tag) == expected


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("completion", "think", "answer", "explain"),
    [
        (WELL_FORMED, "Con mèo ngồi trên ghế.", "có", "vì con mèo đang ngồi trên ghế"),
        ("trả lời: có", None, None, None),  # no tags at all
        ("", None, None, None),
        ("<answer>đỏ</answer>", None, "đỏ", None),  # only the answer
        ("<think>x</think><answer>a</answer>", "x", "a", None),  # no explanation
        ("<think>x</think><answer></answer><explain>y</explain>", "x", "", "y"),  # empty answer: "", not None
        ("<think>x</think><answer>  </answer><explain>y</explain>", "x", "", "y"),  # blank answer
        ("<answer>màu đỏ", None, None, None),  # unterminated
        ("<think>x</think><answer>sai</answer><explain>y</explain><answer>màu đỏ</answer>", "x", "màu đỏ", "y"),
        ("<think>x<think>z</think><answer>a</answer><explain>y</explain>", "x<think>z", "a", "y"),  # nested tag
        ("<answer>a<answer>b</answer></answer>", None, "a<answer>b", None),  # nested answer
        ("<answer>có</answer><think>x</think><explain>y</explain>", "x", "có", "y"),  # order does not matter
        ("preamble <think>x</think><answer>a</answer><explain>y</explain> tail", "x", "a", "y"),
        (
            "<think>\n  suy nghĩ\n</think>\n<answer> Đúng </answer>\n<explain>\nvì trời mưa\n</explain>\n",
            "suy nghĩ",
            "Đúng",
            "vì trời mưa",
        ),  # contents are stripped, diacritics and case kept
        (
            nfd("<answer>Đúng</answer><explain>vì người đàn ông đội mũ</explain>"),
            None,
            nfd("Đúng"),
            nfd("vì người đàn ông đội mũ"),
        ),  # decomposed text is read as it is; normalising is the rewards' and metrics' job
    ],
)
def test_parse_completion(completion, think, answer, explain):
    assert parse_completion(completion) == ParsedCompletion(think=think, answer=answer, explain=explain)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (WELL_FORMED, True),
        ("  <think>a</think>\n<answer>đỏ</answer>\n<explain>vì nó màu đỏ</explain>\n", True),  # whitespace around
        (nfd(WELL_FORMED), True),
        ("", False),
        ("trả lời: có", False),
        ("<answer>có</answer><think>x</think><explain>y</explain>", False),  # wrong order
        ("<think>x</think><answer></answer><explain>y</explain>", False),  # empty answer
        ("<think>x</think><answer>  </answer><explain>y</explain>", False),  # blank answer
        ("<think></think><answer>a</answer><explain>y</explain>", False),  # empty think
        ("<think>x</think><answer>a</answer><explain>y</explain><answer>b</answer>", False),  # answer twice
        ("<think>x<think>z</think><answer>a</answer><explain>y</explain>", False),  # nested tag
        ("<think>x</think><answer>a</answer><explain>y <answer>b</answer></explain>", False),  # a tag inside a part
        ("<think>x</think><answer>a</answer>", False),  # no explanation
        ("preamble <think>x</think><answer>a</answer><explain>y</explain>", False),  # text outside the tags
        ("<think>x</think> và <answer>a</answer><explain>y</explain>", False),  # text between the tags
    ],
)
def test_is_well_formed_is_the_format_reward(completion, expected):
    assert is_well_formed(completion) is expected
    assert format_reward([completion]) == [float(expected)]


# ------------------------------------------------------------------------------------------ prediction records
BATCH = {
    "id": ["393271001", "393271002", "393271003"],
    "question": ["Con mèo có ngồi trên ghế không?", "Xe buýt màu gì?", "Có bao nhiêu con chó?"],
    "answer": ["có", "đỏ", "hai"],
    "explanations": [("vì con mèo đang ngồi trên ghế",), ["vì xe buýt sơn màu đỏ", "vì nó màu đỏ"], ["vì có hai con"]],
    "answer_type": ["yes/no", "other", "number"],
    "image_path": ["/data/val2014/COCO_val2014_000000393271.jpg", "b.jpg", "sub/c.png"],
}


@pytest.mark.parametrize(
    ("completion", "pred_ans", "pred_explain", "think"),
    [
        (WELL_FORMED, "có", "vì con mèo đang ngồi trên ghế", "Con mèo ngồi trên ghế."),
        ("trả lời: có", "", "", ""),  # a missing tag gives ""
        ("<answer></answer><explain>vì thế</explain>", "", "vì thế", ""),
        ("<answer>sai</answer><answer>đỏ</answer>", "đỏ", "", ""),  # the last answer counts
        ("<think>a<think>b</think><answer>có", "", "", "a<think>b"),  # unterminated answer
    ],
)
def test_prediction_record_reads_the_completion(completion, pred_ans, pred_explain, think):
    (record,) = prediction_records({k: v[:1] for k, v in BATCH.items()}, [completion])
    assert (record["pred_ans"], record["pred_explain"], record["think"]) == (pred_ans, pred_explain, think)
    assert record["completion"] == completion


def test_prediction_records_carry_the_sample_and_score():
    completions = [WELL_FORMED, "<answer>màu đỏ</answer>", "không biết"]
    records = prediction_records(BATCH, completions)
    assert [list(r) for r in records] == [[*REQUIRED_RECORD_FIELDS, *OPTIONAL_RECORD_FIELDS]] * 3
    assert records[1] == {
        "question_id": "393271002",
        "question": "Xe buýt màu gì?",
        "pred_ans": "màu đỏ",
        "pred_explain": "",
        "gt_ans": "đỏ",
        "gt_explain": ["vì xe buýt sơn màu đỏ", "vì nó màu đỏ"],
        "completion": "<answer>màu đỏ</answer>",
        "think": "",
        "answer_type": "other",
        "image_name": "b.jpg",
    }
    assert records[0]["gt_explain"] == ["vì con mèo đang ngồi trên ghế"]  # a list, whatever the batch held
    assert [r["image_name"] for r in records] == ["COCO_val2014_000000393271.jpg", "b.jpg", "c.png"]
    assert validate_records(records) == records  # the evaluation accepts them as they are


def test_prediction_records_without_answer_type_or_image_path():
    batch = {k: v for k, v in BATCH.items() if k not in ("answer_type", "image_path")}
    records = prediction_records(batch, [WELL_FORMED] * 3)
    assert [(r["answer_type"], r["image_name"]) for r in records] == [("", "")] * 3
