"""Table-driven tests of the shared text helpers, with Vietnamese diacritics and decomposed input."""

from __future__ import annotations

import unicodedata

import pytest

from grpo_lightning.text import canonical_answer, extract_tag, normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Con Mèo", "con mèo"),
        ("  màu   đỏ.  ", "màu đỏ"),
        ("Có!", "có"),
        ("cỏ", "cỏ"),  # diacritics are kept: grass is not yes
        (unicodedata.normalize("NFD", "Đúng vậy, người đàn ông"), "đúng vậy người đàn ông"),
        ("hai (2) con chó; một con mèo", "hai 2 con chó một con mèo"),
        ("trời\tnắng\nđẹp", "trời nắng đẹp"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Có", "có"), ("đúng", "có"), ("Phải.", "có"), ("không", "không"), ("Sai", "không"), ("màu đỏ", "màu đỏ")],
)
def test_canonical_answer_maps_yes_no_synonyms(raw, expected):
    assert canonical_answer(raw) == expected


def test_decomposed_and_precomposed_input_normalise_alike():
    word = "không"
    assert unicodedata.normalize("NFD", word) != word
    assert canonical_answer(unicodedata.normalize("NFD", word)) == canonical_answer(word) == "không"


@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        ("<answer> có </answer>", "answer", "có"),
        ("<answer>a</answer> then <answer>b</answer>", "answer", "b"),  # the last one counts
        ("<answer>\nhai\n</answer>", "answer", "hai"),
        ("<answer>unterminated", "answer", None),
        ("no tags", "explain", None),
        ("<explain></explain>", "explain", ""),
    ],
)
def test_extract_tag(text, tag, expected):
    assert extract_tag(text, tag) == expected
