"""Reading ViVQA-X data files in every published form into :class:`Sample` records.

Sources a split may come from, told apart by file name and record shape:

- our JSONL (``python -m grpo_lightning.prepare``) and any VLM-R1-format JSONL: one JSON object per line,
  ``{"id", "image", "conversations": [{"from": "human", "value": "<image>PROMPT"}, {"from": "gpt",
  "value": SOLUTION}]}`` (SOLUTION: :func:`grpo_lightning.task.format_solution`); ours adds ``question``, ``answer``,
  ``explanations`` (all references), ``question_type`` and ``answer_type``, which other loaders ignore;
- the raw ViVQA-X JSON, in its three published forms: a list of records, the same without
  ``question_type``/``answer_type``, and a dict keyed by question id.

:func:`read_samples` checks every record (a repeated sample id included) and returns one :class:`Problem` for each
record it could not use; :class:`DataValidationError` is how the data module, and the checks that follow it
(:mod:`grpo_lightning.data.checks`, :mod:`grpo_lightning.prompt_length`), report them.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_lightning.errors import UserError
from grpo_lightning.task import ANSWER_TAG, EXPLAIN_TAG, extract_tag

#: How many problems an error message lists before it says "... and N more".
MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class Sample:
    """One question about one image, as read from a data file (no pixels).

    Attributes:
        id: the question id.
        question: the question text.
        image: the image file name (or a path) as written in the file.
        answer: the ground-truth answer.
        explanations: every reference explanation.
        prompt: the prompt stored in the file (VLM-R1 JSONL), or None (raw ViVQA-X JSON).
        question_type: VQA question type, when the file has it.
        answer_type: VQA answer type (``yes/no``, ``number``, ``other``), when the file has it.
        where: ``file:line`` (or ``file``) the record came from, for messages.
    """

    id: str
    question: str
    image: str
    answer: str
    explanations: tuple[str, ...]
    prompt: str | None = None
    question_type: str = ""
    answer_type: str = ""
    where: str = ""


@dataclass(frozen=True)
class Problem:
    """Something wrong with one record or its image."""

    where: str
    message: str
    sample_id: str | None = None

    def __str__(self) -> str:
        sample = f"sample {self.sample_id}: " if self.sample_id is not None else ""
        return f"{self.where}: {sample}{self.message}"


class DataValidationError(UserError, ValueError):
    """Bad input found before training; the message lists every problem (up to a limit) and what to do.

    Args:
        problems: the records' problems; empty when the file as a whole cannot be used (not UTF-8 text, no
            samples), which ``hint`` then describes, naming the file.
        hint: what to do (or, without problems, the whole message).
    """

    def __init__(self, problems: list[Problem], hint: str):
        self.problems = problems
        super().__init__(format_problems(problems) + "\n" + hint if problems else hint)


class DataFileNotFoundError(UserError, FileNotFoundError):
    """A data file named in the config that does not exist (or is a folder)."""


def format_problems(problems: list[Problem]) -> str:
    lines = [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    noun = "problem" if len(problems) == 1 else "problems"
    return f"{len(problems)} {noun} in the data:\n" + "\n".join(lines)


def read_samples(path: str | Path) -> tuple[list[Sample], list[Problem]]:
    """All valid samples of a data file, and one problem for every record that could not be used.

    A sample whose id an earlier sample of the file already has is such a record: its problem names where the first
    copy is, and only the first copy is a sample. Evaluation scores each question id once, so a copy would be
    trained on twice and then silently dropped from the predictions.

    Raises:
        DataFileNotFoundError: the file does not exist (a ``FileNotFoundError``).
        DataValidationError: the file is not UTF-8 text.
    """
    path = Path(path)
    if path.is_dir():
        raise DataFileNotFoundError(f"{path}: a folder, not a data file; point the data paths in your config at files.")
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: no such data file; check the data paths in your config.")
    samples, problems = [], []
    first_with_id: dict[str, Sample] = {}
    for where, record in _records(path, problems):
        sample = parse_record(record, where, problems)
        if sample is None:
            continue
        first = first_with_id.setdefault(sample.id, sample)
        if first is not sample:
            message = (
                f"duplicated id: the first sample with id {sample.id} is at {first.where}; give every sample its own "
                "id, or remove this copy"
            )
            problems.append(Problem(where, message, sample.id))
            continue
        samples.append(sample)
    return samples, problems


def _records(path: Path, problems: list[Problem]) -> Iterator[tuple[str, Any]]:
    """(``file:line``, record) pairs of a JSONL file or a ViVQA-X JSON file (list or dict form); none for a file
    that holds only whitespace."""
    text = _read_utf8(path)
    if not text.strip():
        return
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(Problem(f"{path}:{lineno}", f"malformed JSON ({err.msg} at column {err.colno})"))
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        problems.append(Problem(f"{path}:{err.lineno}", f"malformed JSON ({err.msg} at column {err.colno})"))
        return
    if not isinstance(data, (dict, list)):
        problems.append(Problem(str(path), "expected a JSON list or dict of records"))
        return
    for line, question_id, record in _top_level_members(text):
        if question_id is not None and isinstance(record, dict):  # the oldest published form: {question_id: record}
            record = {"question_id": question_id, **record}
        yield f"{path}:{line}", record


def _read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is allowed); an error naming the first byte that is not."""
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - data.rfind(b"\n", 0, offset)
        utf16 = " (it looks like UTF-16)" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ""
        raise DataValidationError(
            [],
            f"{path}:{line}: not UTF-8 text{utf16}: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}, "
            f"column {column}) is not valid UTF-8. Re-save the file as UTF-8 (in an editor, or with "
            "`iconv -f ITS_ENCODING -t UTF-8`).",
        ) from None


def _top_level_members(text: str) -> Iterator[tuple[int, str | None, Any]]:
    """The members of the JSON list or object that ``text`` holds (valid JSON), as (line it starts on, key or None
    for a list, value).

    ``json.loads`` forgets positions, and of a key written twice in an object it keeps the last value only: this walk
    yields every copy, so that a repeated question id is reported rather than lost.
    """
    decoder = json.JSONDecoder()
    is_object = text.lstrip()[0] == "{"
    position = text.index("{" if is_object else "[") + 1
    line, counted_to = 1, 0
    while True:
        position = _skip(text, position, " \t\r\n,")
        if position >= len(text) or text[position] in "]}":
            return
        line += text.count("\n", counted_to, position)
        counted_to = position
        key = None
        if is_object:
            key, position = decoder.raw_decode(text, position)
            position = _skip(text, position, " \t\r\n:")
        value, position = decoder.raw_decode(text, position)
        yield line, key, value


def _skip(text: str, position: int, characters: str) -> int:
    """The first position from ``position`` on whose character is not one of ``characters``."""
    while position < len(text) and text[position] in characters:
        position += 1
    return position


def parse_record(record: Any, where: str, problems: list[Problem]) -> Sample | None:
    """A :class:`Sample` from one record of any supported form, or None (and a problem) when unusable."""
    if not isinstance(record, dict):
        problems.append(Problem(where, f"expected a JSON object, got {type(record).__name__}"))
        return None
    if "conversations" in record:
        return _parse_conversation_record(record, where, problems)
    sample_id = str(record.get("question_id", record.get("id", ""))) or None
    missing = [key for key in ("question", "image_name", "answer", "explanation") if key not in record]
    if missing:
        problems.append(Problem(where, f"missing field {', '.join(repr(k) for k in missing)}", sample_id))
        return None
    explanations = record["explanation"]
    explanations = (explanations,) if isinstance(explanations, str) else tuple(explanations)
    return _checked(
        Sample(
            id=sample_id or where,
            question=str(record["question"]),
            image=str(record["image_name"]),
            answer=str(record["answer"]),
            explanations=explanations,
            question_type=str(record.get("question_type", "")),
            answer_type=str(record.get("answer_type", "")),
            where=where,
        ),
        problems,
        explanations_required=True,
    )


def _parse_conversation_record(record: dict[str, Any], where: str, problems: list[Problem]) -> Sample | None:
    sample_id = str(record["id"]) if "id" in record else None
    missing = [key for key in ("image",) if key not in record]
    turns = record["conversations"]
    human = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
    if human is None:
        missing.append("conversations[human]")
    if gpt is None and "answer" not in record:
        missing.append("conversations[gpt]")
    if missing:
        problems.append(Problem(where, f"missing field {', '.join(repr(k) for k in missing)}", sample_id))
        return None
    prompt = str(human).replace("<image>", "").strip()
    answer = record.get("answer", extract_tag(str(gpt), ANSWER_TAG) if gpt is not None else None)
    if answer is None:
        answer = str(gpt).strip()
    explanations = record.get("explanations")
    if explanations is None:
        explanation = extract_tag(str(gpt), EXPLAIN_TAG) if gpt is not None else None
        explanations = [explanation] if explanation else []
    return _checked(
        Sample(
            id=sample_id or where,
            question=str(record.get("question", prompt)),
            image=str(record["image"]),
            answer=str(answer),
            explanations=tuple(str(e) for e in explanations),
            prompt=prompt,
            question_type=str(record.get("question_type", "")),
            answer_type=str(record.get("answer_type", "")),
            where=where,
        ),
        problems,
        explanations_required=False,
    )


def _checked(sample: Sample, problems: list[Problem], explanations_required: bool) -> Sample | None:
    """``sample``, or None and one problem that names everything it lacks (one problem per record keeps the count of
    records left out exact)."""
    lacks = []
    if not sample.question.strip() and not (sample.prompt or "").strip():
        lacks.append("empty question")
    if not sample.answer.strip():
        lacks.append("empty answer")
    if not sample.image.strip():
        lacks.append("empty image name")
    if explanations_required and not any(e.strip() for e in sample.explanations):
        lacks.append("no reference explanation")
    if lacks:
        problems.append(Problem(sample.where, "; ".join(lacks), sample.id))
        return None
    return sample
