"""Table-driven tests of the text normalisation, with Vietnamese diacritics and decomposed input."""

from __future__ import annotations

import unicodedata

import pytest

from grpo_lightning.text import canonical_answer, normalize_text


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
