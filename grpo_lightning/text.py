"""Vietnamese text normalisation, shared by rewards and evaluation (reading tags is :mod:`grpo_lightning.task`'s).

Normalisation keeps diacritics (they carry meaning in Vietnamese: "có" is "yes", "cỏ" is "grass") and
makes the rest uniform: Unicode NFC (so decomposed input equals precomposed), lowercase, punctuation
removed, whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata

# Punctuation is any Unicode character of category P* or S* (symbols such as "$" or "+"); letters with
# diacritics are category L* after NFC, so they are kept.
_SPACES = re.compile(r"\s+")

#: Yes/no answers that mean the same thing, mapped to one canonical form.
YES_NO_SYNONYMS: dict[str, str] = {"có": "có", "đúng": "có", "phải": "có", "không": "không", "sai": "không"}


def normalize_text(text: str) -> str:
    """NFC, lowercase, punctuation and symbols replaced by spaces, whitespace collapsed; diacritics kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return _SPACES.sub(" ", text).strip()


def canonical_answer(text: str) -> str:
    """:func:`normalize_text`, then yes/no synonyms mapped to one form ("đúng" -> "có", "sai" -> "không")."""
    normalized = normalize_text(text)
    return YES_NO_SYNONYMS.get(normalized, normalized)
