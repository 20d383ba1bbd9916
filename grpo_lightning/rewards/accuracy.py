"""Answer accuracy: a graded match (exact, half the words, none) of the completion's answer against the ground truth.

The string-level core, :func:`answer_score`, is what evaluation reuses; :func:`accuracy_reward` applies it
to a batch of completions.
"""

from __future__ import annotations

from typing import Any

from grpo_lightning.task import ANSWER_TAG, extract_tag
from grpo_lightning.text import YES_NO_SYNONYMS, canonical_answer, normalize_text

#: Score for an exact match after normalisation (yes/no synonyms count as equal).
EXACT_MATCH_SCORE = 3.0
#: Score when at least half of the ground truth's words appear in the prediction (open answers only).
PARTIAL_MATCH_SCORE = 1.5
#: Share of the ground truth's distinct words that must appear in the prediction for partial credit.
PARTIAL_MATCH_MIN_RECALL = 0.5


def answer_score(prediction: str, ground_truth: str) -> float:
    """Score one predicted answer against the ground truth: 3.0 exact, 1.5 partial, else 0.0.

    Both strings go through :func:`~grpo_lightning.text.canonical_answer` (Unicode NFC, lowercase,
    punctuation removed, whitespace collapsed, diacritics kept, "đúng"/"phải" -> "có", "sai" -> "không").

    - **Exact**: the canonical forms are equal.
    - **Partial**: the ground truth is not a yes/no answer, and at least half of its *distinct* normalised
      words (``set(normalize_text(gt).split())``) are among the prediction's words. Word order and repeats
      do not matter: "đỏ" earns 1.5 against "màu đỏ" (1 of 2 words). Yes/no ground truths get no partial
      credit, since containing "có" is not agreeing with it ("không có" means "there is not").
    - A ground truth that normalises to the empty string cannot be matched: 0.0.

    The partial rule rewards recall only, so a long answer listing many words can earn 1.5; weight the
    accuracy reward with that in mind, or pair it with a length-aware reward.

    Args:
        prediction: the model's answer (the content of its answer tag, :mod:`grpo_lightning.task`).
        ground_truth: the reference answer.

    Returns:
        :data:`EXACT_MATCH_SCORE`, :data:`PARTIAL_MATCH_SCORE` or 0.0.
    """
    truth = canonical_answer(ground_truth)
    if not truth:
        return 0.0
    if canonical_answer(prediction) == truth:
        return EXACT_MATCH_SCORE
    if truth in YES_NO_SYNONYMS.values():
        return 0.0
    truth_words = set(normalize_text(ground_truth).split())
    predicted_words = set(normalize_text(prediction).split())
    recall = len(truth_words & predicted_words) / len(truth_words)
    return PARTIAL_MATCH_SCORE if recall >= PARTIAL_MATCH_MIN_RECALL else 0.0


def accuracy_reward(
    completions: list[str], solution: list[str] | None = None, answer: list[str] | None = None, **kwargs: Any
) -> list[float | None]:
    """:func:`answer_score` of each completion's answer (its last answer tag) against the ground truth.

    A completion without a closed answer tag scores 0.0 (the tags are :mod:`grpo_lightning.task`'s).

    Args:
        completions: generated texts.
        solution: reference completions; their answer tag's content (or, without the tag, the whole
            solution) is the ground truth when the batch has no ``answer`` field.
        answer: the ground-truth answers (the dataset's ``answer`` field), aligned with ``completions``.
        **kwargs: other batch fields, unused.

    Returns:
        One score per completion, in {0.0, 1.5, 3.0}.
    """
    if answer is None:
        if solution is None:
            raise ValueError("accuracy reward: the batch has neither an 'answer' nor a 'solution' field to compare to.")
        answer = [_answer_of_solution(text) for text in solution]
    scores: list[float | None] = []
    for completion, truth in zip(completions, answer, strict=True):
        predicted = extract_tag(completion, ANSWER_TAG)
        scores.append(0.0 if predicted is None else answer_score(predicted, truth))
    return scores


def _answer_of_solution(solution: str) -> str:
    tagged = extract_tag(solution, ANSWER_TAG)
    return solution if tagged is None else tagged
