"""The task protocol: what the model is asked, what it must write, how that is read, what a prediction record is.

Every piece of the product that spells the protocol imports it from here: data preparation and the data module
(the prompt and the reference ``solution``), the rewards (tags and the strict format), the LightningModule (the
prediction records of validation, test and predict) and the demo assets (the tags as single tokens).

The model reads a prompt made from :data:`DEFAULT_PROMPT_TEMPLATE` (or the user's template) and writes its
reasoning, a short answer and a one-sentence explanation, each in its tag, in this order::

    <think>Con mèo nằm trên ghế sofa.</think><answer>có</answer><explain>vì con mèo đang nằm trên ghế</explain>

Reading a completion is lenient: :func:`parse_completion` takes, for each tag, the stripped content of the last
``<tag>...</tag>`` (None when there is none), wherever it stands. Judging it is strict: :func:`is_well_formed`
(the ``format`` reward) wants exactly the three tagged parts in order, each once, non-empty, with nothing but
whitespace around them. The reference the rewards see, :func:`format_solution`, is the answer and the first
reference explanation, tagged::

    <answer>có</answer><explain>vì con mèo đang nằm trên ghế</explain>

Validation, test and predict write one record per sample (:func:`prediction_records`) in the public ViVQA-X
predictions format (:data:`REQUIRED_RECORD_FIELDS`), which ``python -m grpo_lightning.evaluate`` scores.

Adapting to another dataset: a VQA-with-explanations dataset in another language or format starts here. Write
a prompt template in its language (``data.prompt_template`` in the config, or ``--prompt-template`` of
``prepare``, overrides the default without code) and keep the tags it names in line with :data:`TAGS`. Records
in VLM-R1's conversation format are read as they are; another file layout needs a reader in
:mod:`grpo_lightning.data` that yields its :class:`~grpo_lightning.data.Sample` fields. Answers and
explanations are compared after :mod:`grpo_lightning.text`'s normalisation, whose yes/no synonyms are
Vietnamese: replace them for another language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_lightning.errors import ConfigError

# ------------------------------------------------------------------------------------------------ prompt
#: The prompt: answer in Vietnamese, reason in <think>, give a short answer in <answer> and a one-sentence
#: explanation in <explain>. ``{question}`` is filled in per sample by :func:`render_prompt`.
DEFAULT_PROMPT_TEMPLATE = (
    "{question}\n"
    "Hãy trả lời bằng tiếng Việt. Suy nghĩ từng bước trong thẻ <think> </think>, "
    "đưa ra câu trả lời ngắn gọn (một từ hoặc một cụm từ) trong thẻ <answer> </answer>, "
    "rồi giải thích bằng một câu trong thẻ <explain> </explain>."
)


def render_prompt(template: str, question: str) -> str:
    """Fill ``{question}`` into a template; a template without it is refused (every sample would look the same)."""
    if "{question}" not in template:
        raise ConfigError(
            "data.prompt_template must contain '{question}', where each sample's question goes; add it to the template."
        )
    return template.replace("{question}", question)


# -------------------------------------------------------------------------------------------------- tags
THINK_TAG = "think"
ANSWER_TAG = "answer"
EXPLAIN_TAG = "explain"
#: The tags of a completion, in the order it writes them.
TAGS = (THINK_TAG, ANSWER_TAG, EXPLAIN_TAG)
#: The six tag tokens, each opening tag followed by its closing one (the demo tokenizers add them as single tokens).
TAG_TOKENS = tuple(token for tag in TAGS for token in (f"<{tag}>", f"</{tag}>"))


def tagged(tag: str, content: str) -> str:
    """``content`` between the opening and closing ``tag``, as written, with nothing added or stripped."""
    return f"<{tag}>{content}</{tag}>"


def format_solution(answer: str, explanation: str) -> str:
    """The reference completion of a sample: its answer and one reference explanation, tagged, no think part."""
    return tagged(ANSWER_TAG, answer) + tagged(EXPLAIN_TAG, explanation)


# --------------------------------------------------------------------------------------------- parsing
def extract_tag(text: str, tag: str) -> str | None:
    """The content of the last ``<tag>...</tag>`` in ``text`` (stripped), or None when there is none.

    The content runs to the first closing tag after an opening one, so an opening tag repeated inside stays part
    of the content: ``<think>a<think>b</think>`` gives ``"a<think>b"``.
    """
    matches = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return matches[-1].strip() if matches else None


@dataclass(frozen=True)
class ParsedCompletion:
    """The tagged parts of a completion, each the stripped content of its last occurrence (:func:`extract_tag`).

    Attributes:
        think: the reasoning, or None without a ``think`` tag.
        answer: the answer, or None without an ``answer`` tag (``""`` for an empty one).
        explain: the explanation, or None without an ``explain`` tag.
    """

    think: str | None
    answer: str | None
    explain: str | None


def parse_completion(text: str) -> ParsedCompletion:
    """Read the three tagged parts of a completion, leniently: order, repeats and surrounding text do not matter."""
    return ParsedCompletion(
        think=extract_tag(text, THINK_TAG),
        answer=extract_tag(text, ANSWER_TAG),
        explain=extract_tag(text, EXPLAIN_TAG),
    )


_WELL_FORMED = re.compile(
    r"^\s*" + r"\s*".join(rf"<{tag}>(?P<{tag}>.*?)</{tag}>" for tag in TAGS) + r"\s*$",
    re.DOTALL,
)


def is_well_formed(text: str) -> bool:
    """True when ``text`` is exactly the three tagged parts in order, each once and non-empty, and only whitespace
    around and between them."""
    match = _WELL_FORMED.match(text)
    if match is None:
        return False
    parts = match.groupdict().values()
    # Each tag exactly once: a nested or repeated tag inside a part makes the structure ambiguous.
    if any(token in part for part in parts for token in TAG_TOKENS):
        return False
    return all(part.strip() for part in parts)


# ---------------------------------------------------------------------------------------- prediction records
#: The fields every prediction record has, in the public ViVQA-X predictions format: ``question_id``,
#: ``question``, ``pred_ans`` and ``pred_explain`` (strings, ``""`` when the model gave none), ``gt_ans`` (a
#: string) and ``gt_explain`` (the list of reference explanations). Scoring needs all of them.
REQUIRED_RECORD_FIELDS = ("question_id", "question", "pred_ans", "pred_explain", "gt_ans", "gt_explain")
#: The fields :func:`prediction_records` adds for reading and the HTML report: the raw ``completion``, its
#: ``think`` text, the sample's ``answer_type`` (per-type accuracy) and ``image_name`` (thumbnails).
OPTIONAL_RECORD_FIELDS = ("completion", "think", "answer_type", "image_name")


def prediction_records(batch: dict[str, list[Any]], completions: list[str]) -> list[dict[str, Any]]:
    """One record per sample in the public ViVQA-X predictions format, plus the raw completion and its think text.

    Args:
        batch: the data module's batch (``id``, ``question``, ``answer``, ``explanations``; ``answer_type`` and
            ``image_path`` when present), one entry per sample.
        completions: one completion per sample, aligned with the batch.

    Returns:
        Records with the fields :data:`REQUIRED_RECORD_FIELDS` and :data:`OPTIONAL_RECORD_FIELDS`; a tag the
        completion lacks gives ``""``.
    """
    records = []
    for i, completion in enumerate(completions):
        parsed = parse_completion(completion)
        records.append(
            {
                "question_id": batch["id"][i],
                "question": batch["question"][i],
                "pred_ans": parsed.answer or "",
                "pred_explain": parsed.explain or "",
                "gt_ans": batch["answer"][i],
                "gt_explain": list(batch["explanations"][i]),
                "completion": completion,
                "think": parsed.think or "",
                "answer_type": batch.get("answer_type", [""] * len(completions))[i],
                "image_name": Path(batch["image_path"][i]).name if "image_path" in batch else "",
            }
        )
    return records
