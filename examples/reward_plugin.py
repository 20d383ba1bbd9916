"""An example reward living outside the library: copy this file next to your configs and name its function there.

``model.rewards.funcs: [..., examples.reward_plugin:brevity]`` (``configs/demo_rewards.yaml``) resolves here when run
from the repository root, which ``python -m grpo_lightning`` and pytest put on ``sys.path``; options come from
``model.rewards.kwargs`` under the same name. A reward takes the completions and the batch's fields as keywords and
returns one float (or ``None``: no opinion) per completion.
"""

from __future__ import annotations

from grpo_lightning.task import EXPLAIN_TAG, extract_tag


def brevity(completions: list[str], solution: list[str] | None = None, max_words: int = 30, **kwargs) -> list[float]:
    """1.0 for an ``<explain>`` of at most ``max_words`` words, falling linearly to 0.0 at twice that; 0.0 without one.

    Args:
        completions: generated texts.
        solution: unused.
        max_words: the longest explanation that earns full credit.
        **kwargs: other batch fields, unused.
    """
    scores = []
    for completion in completions:
        explanation = extract_tag(completion, EXPLAIN_TAG)
        if not explanation:
            scores.append(0.0)
            continue
        excess = max(len(explanation.split()) - max_words, 0)
        scores.append(max(1.0 - excess / max_words, 0.0))
    return scores
