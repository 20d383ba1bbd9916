"""Format rewards: does the completion follow ``<think>…</think><answer>…</answer><explain>…</explain>``?"""

from __future__ import annotations

import re

TAGS = ("think", "answer", "explain")

_FORMAT = re.compile(
    r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*<explain>(?P<explain>.*?)</explain>\s*$",
    re.DOTALL,
)


def format_reward(completions: list[str], solution: list[str] | None = None, **kwargs) -> list[float | None]:
    """1.0 when the completion is exactly the three tagged parts in order, each once and non-empty; else 0.0.

    No partial credit here: that is :func:`tag_count_reward`'s job, so the two can be weighted apart.
    """
    return [1.0 if _is_well_formed(text) else 0.0 for text in completions]


def tag_count_reward(completions: list[str], solution: list[str] | None = None, **kwargs) -> list[float | None]:
    """Partial credit for the format: 1/6 for each of the six tags that appears exactly once.

    In [0, 1]; a dense signal that lets a model that has never produced the full format learn it
    (as open-r1's ``tag_count_reward`` does). Order and content are :func:`format_reward`'s concern.
    """
    scores = []
    for text in completions:
        found = sum(text.count(f"<{tag}>") == 1 for tag in TAGS) + sum(text.count(f"</{tag}>") == 1 for tag in TAGS)
        scores.append(found / (2 * len(TAGS)))
    return scores


def _is_well_formed(text: str) -> bool:
    match = _FORMAT.match(text)
    if match is None:
        return False
    parts = match.groupdict().values()
    # Each tag exactly once: a nested or repeated tag inside a part makes the structure ambiguous.
    if any(f"<{tag}>" in part or f"</{tag}>" in part for part in parts for tag in TAGS):
        return False
    return all(part.strip() for part in parts)
