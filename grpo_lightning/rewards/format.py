"""Format rewards: does the completion follow the answer format of :mod:`grpo_lightning.task`?"""

from __future__ import annotations

from grpo_lightning.task import TAG_TOKENS, is_well_formed


def format_reward(completions: list[str], solution: list[str] | None = None, **kwargs) -> list[float | None]:
    """1.0 when the completion is exactly the three tagged parts in order, each once and non-empty; else 0.0.

    The check is :func:`grpo_lightning.task.is_well_formed`. No partial credit here: that is
    :func:`tag_count_reward`'s job, so the two can be weighted apart.
    """
    return [1.0 if is_well_formed(text) else 0.0 for text in completions]


def tag_count_reward(completions: list[str], solution: list[str] | None = None, **kwargs) -> list[float | None]:
    """Partial credit for the format: 1/6 for each of the six tag tokens (opening and closing) that appears exactly
    once.

    In [0, 1]; a dense signal that lets a model that has never produced the full format learn it
    (as open-r1's ``tag_count_reward`` does). Order and content are :func:`format_reward`'s concern.
    """
    return [sum(text.count(token) == 1 for token in TAG_TOKENS) / len(TAG_TOKENS) for text in completions]
