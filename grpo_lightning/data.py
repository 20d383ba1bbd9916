"""ViVQA-X data: reading every published form, checking it before training, and the LightningDataModule.

Sources a split may come from, told apart by file name and record shape:

- our JSONL (``python -m grpo_lightning.prepare``) and any VLM-R1-format JSONL: one JSON object per line,
  ``{"id", "image", "conversations": [{"from": "human", "value": "<image>PROMPT"}, {"from": "gpt",
  "value": SOLUTION}]}`` (SOLUTION: :func:`grpo_lightning.task.format_solution`); ours adds ``question``, ``answer``,
  ``explanations`` (all references), ``question_type`` and ``answer_type``, which other loaders ignore;
- the raw ViVQA-X JSON, in its three published forms: a list of records, the same without
  ``question_type``/``answer_type``, and a dict keyed by question id.

The main process holds only :class:`Sample` records (paths and strings). Images are opened, converted to
RGB and downscaled inside the dataloader workers. Before training, :func:`read_samples` checks every record (a
repeated sample id included) and :func:`scan_samples` opens every image's header, so a missing or non-image file,
or an image path that leads out of the image folder, stops the run at start-up, not at hour nine. Checks that need
more than the data (prompts too long for the model's context: :mod:`grpo_lightning.prompt_length`) refuse samples
the same way, through :meth:`ViVQAXDataModule.drop_invalid`.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from grpo_lightning.errors import ConfigError, UserError
from grpo_lightning.images import load_rgb, to_rgb
from grpo_lightning.task import (
    ANSWER_TAG,
    DEFAULT_PROMPT_TEMPLATE,
    EXPLAIN_TAG,
    extract_tag,
    format_solution,
    render_prompt,
)

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


class ImageReadError(UserError, ValueError):
    """An image that cannot be read when a batch is loaded (the start-up scan reads only headers)."""


def format_problems(problems: list[Problem]) -> str:
    lines = [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    noun = "problem" if len(problems) == 1 else "problems"
    return f"{len(problems)} {noun} in the data:\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------ reading
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


# -------------------------------------------------------------------------------------------- checks
def resolve_image(image: str, image_dir: str | Path) -> Path:
    """The path of an image named in a data file: absolute paths as they are, names under ``image_dir``."""
    path = Path(image)
    return path if path.is_absolute() else Path(image_dir) / path


def outside_image_dir(image: str, image_dir: str | Path) -> Path | None:
    """Where an image named in a data file really is, when that is outside ``image_dir``; None when it is inside.

    A name without ``..`` that lies under the folder (relative, or absolute with the folder's path in front) is
    inside, even where a symlink in the folder points elsewhere: what the folder holds is its owner's choice, and
    the check is about the names a data file uses. Any other name (``../x.jpg``, ``/etc/passwd``, an absolute path
    through the folder's symlinked location) is judged by its resolved path against the folder's resolved path.
    """
    path = resolve_image(image, image_dir)
    if ".." not in Path(image).parts and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(image_dir)):
        return None
    real = path.resolve()
    return None if real.is_relative_to(Path(image_dir).resolve()) else real


def scan_samples(
    samples: list[Sample],
    image_dir: str | Path,
    verify_images: bool = False,
    allow_images_outside_image_dir: bool = False,
) -> dict[int, Problem]:
    """A problem for every sample whose image is missing, no image, or (unless allowed) outside ``image_dir``, by the
    sample's position in ``samples`` (positions, not ids or ``where``, tell samples apart: records of a one-line JSON
    file share their ``where``).

    Every image is opened and its header parsed, which reads a few kilobytes and finds missing files, folders,
    unreadable files and files that are no image at all (about 0.1 ms an image from a warm disk cache: a few seconds
    for COCO's 40,000 images). Only ``verify_images`` decodes every image, which also finds truncated or corrupt
    image data, at the cost of reading every file in full (3 to 6 ms a 640x480 JPEG). Each distinct path is checked
    once.

    Args:
        samples: the split's samples.
        image_dir: the folder their image names are relative to.
        verify_images: decode every image as well.
        allow_images_outside_image_dir: accept image paths that lead out of ``image_dir`` (``../x.jpg``, absolute
            paths elsewhere); off, such a sample is a problem and its path is never opened.
    """
    problems: dict[int, Problem] = {}
    checked = {}
    for index, sample in enumerate(samples):
        if not allow_images_outside_image_dir and (real := outside_image_dir(sample.image, image_dir)) is not None:
            message = (
                f"image path {sample.image!r} leads out of the image folder {image_dir} (to {real}); name images "
                "inside that folder, or set data.allow_images_outside_image_dir: true if you trust this data file"
            )
            problems[index] = Problem(sample.where, message, sample.id)
            continue
        path = resolve_image(sample.image, image_dir)
        if path not in checked:
            checked[path] = _image_problem(path, verify_images)
        if checked[path] is not None:
            problems[index] = Problem(sample.where, checked[path], sample.id)
    return problems


def _image_problem(path: Path, decode: bool) -> str | None:
    """What is wrong with an image file, or None: its header must parse (and, with ``decode``, its data decode)."""
    try:
        is_file = path.is_file()
        exists = is_file or path.exists()
    except OSError:
        is_file = exists = False
    if not exists:
        return f"image not found: {path}"
    if not is_file:
        return f"image is not a readable file: {path}"
    try:
        with Image.open(path) as image:  # reads the header only
            if not decode:
                return None
            try:
                to_rgb(image)  # decodes every pixel, the same way a dataset item will
            except Exception as err:  # PIL raises many types for bad data
                return f"corrupt image: {path} ({err})"
    except PermissionError:
        return f"image is not a readable file: {path}"
    except Exception as err:
        return f"not an image: {path} ({err})"
    return None


# ------------------------------------------------------------------------------------------ dataset
class VQADataset(Dataset):
    """Samples with their prompt; the image is opened (in the dataloader worker) only when an item is fetched.

    Args:
        samples: the split's samples.
        image_dir: folder that holds the samples' image files.
        prompt_template: template with ``{question}``; None uses the prompt stored in the file when there is one
            (VLM-R1 JSONL) and the default template otherwise.
        max_image_side: images larger than this on their longer side are downscaled (None: never).
    """

    def __init__(
        self,
        samples: list[Sample],
        image_dir: str | Path,
        prompt_template: str | None = None,
        max_image_side: int | None = None,
    ):
        self.samples = samples
        self.image_dir = Path(image_dir)
        self.prompt_template = prompt_template
        self.max_image_side = max_image_side

    def __len__(self) -> int:
        return len(self.samples)

    def prompt_for(self, sample: Sample) -> str:
        if self.prompt_template is None and sample.prompt is not None:
            return sample.prompt
        return render_prompt(self.prompt_template or DEFAULT_PROMPT_TEMPLATE, sample.question)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image_path = resolve_image(sample.image, self.image_dir)
        try:
            image = load_rgb(image_path)
        except Exception as err:
            raise ImageReadError(
                f"{sample.where}: sample {sample.id}: cannot read image {image_path} ({err}). "
                "Set data.verify_images: true to find every such file before training starts."
            ) from err
        if self.max_image_side is not None and max(image.size) > self.max_image_side:
            image.thumbnail((self.max_image_side, self.max_image_side))
        explanations = list(sample.explanations)
        first = explanations[0] if explanations else ""
        return {
            "id": sample.id,
            "question": sample.question,
            "prompt": self.prompt_for(sample),
            "image": image,
            "image_path": str(image_path),
            "answer": sample.answer,
            "explanations": explanations,
            "solution": format_solution(sample.answer, first),
            "question_type": sample.question_type,
            "answer_type": sample.answer_type,
        }


class ResumableSampler(DistributedSampler):
    """This process's share of the prompts, in a (seed, epoch)-determined order that can resume mid-epoch.

    A ``DistributedSampler`` (so Lightning leaves it in place under DDP) with one addition: ``skip`` drops
    the first samples of the next pass only, so that a run resumed from a checkpoint continues with the
    batches it had not seen yet instead of starting the epoch over (their images are never read). ``len``
    stays the full epoch's, which is what Lightning's restored batch counters expect.
    :class:`ResumableDataLoader` sets ``skip``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, skip: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


_END = object()


class ResumableDataLoader(DataLoader):
    """The training DataLoader, whose position in the epoch is part of Lightning's checkpoint.

    Lightning keeps the ``state_dict()`` of a training dataloader that has one in the fit loop's state
    (``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``) and hands it to ``load_state_dict``
    before a resumed run draws its first batch; the epoch's order itself is set by Lightning
    (``sampler.set_epoch``). The position counts the batches handed out: the sampler and the worker processes run
    ahead of it. The sampler must be a :class:`ResumableSampler`.

    A training step may take further batches of the same epoch with :meth:`next_batch` (dynamic sampling refills a
    step whose groups carried no learning signal); they count in the position like the loop's own, so the loop's
    next batch is the one after them, and a resumed run neither repeats nor skips them. Such a step can use up the
    epoch before the loop has taken as many batches as it expects: the loop's next request then ends the epoch,
    and a run resumed from the checkpoint of that step ends the same epoch there too (the position remembers its
    epoch once the epoch is used up).
    """

    def __init__(self, *args: Any, epoch_length: Callable[[], int | float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, not {type(self.sampler).__name__}.")
        #: Batches of the current epoch handed out so far (the skipped ones of a resumed epoch included).
        self.batches_done = 0
        self._resume_at = 0
        self._resume_epoch: int | None = None  # the epoch of a saved position that had used its epoch up
        self._epoch_batches: Iterator[Any] | None = None  # the batches of the epoch being iterated
        # Batches the training loop takes from one epoch: len(self), or fewer with the Trainer's
        # limit_train_batches (the data module passes that count).
        self.epoch_length = epoch_length or (lambda: len(self))

    def __iter__(self) -> Iterator[Any]:
        self._epoch_batches = self._batches_of_epoch()
        return self._epoch_batches

    def _batches_of_epoch(self) -> Iterator[Any]:
        # A generator: this runs when the loop asks for the epoch's first batch, not when Lightning calls iter().
        resume_at, self._resume_at = self._resume_at, 0
        resume_epoch, self._resume_epoch = self._resume_epoch, None
        if resume_at >= self.epoch_length():
            if resume_epoch is not None and resume_epoch == self.sampler.epoch:
                # saved in a step that used the epoch up before the loop expected it: the epoch ends here
                self.batches_done = resume_at
                return
            resume_at = 0  # saved after the epoch's last batch: the next epoch starts afresh
        self.batches_done = resume_at
        self.sampler.skip = resume_at * self.batch_size
        batches = super().__iter__()
        while self.batches_done < self.epoch_length():  # refills may have taken the batches the loop counts on
            batch = next(batches, _END)
            if batch is _END:
                return
            self.batches_done += 1
            yield batch

    def next_batch(self) -> Any | None:
        """The next batch of the epoch being iterated, for a step that needs more prompts; None when it is used up.

        Raises:
            RuntimeError: called when no epoch is being iterated (outside a training step).
        """
        if self._epoch_batches is None:
            raise RuntimeError("ResumableDataLoader.next_batch() is for a training step, while an epoch is iterated.")
        return next(self._epoch_batches, None)

    def state_dict(self) -> dict[str, int]:
        state = {"batches_done": self.batches_done}
        if self.batches_done >= self.epoch_length():
            state["epoch"] = self.sampler.epoch
        return state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = int(state_dict["batches_done"])
        self._resume_epoch = state_dict.get("epoch")


def limited_length(length: int, limit: int | float | None) -> int:
    """Batches of an epoch of ``length`` under the Trainer's ``limit_train_batches``, counted as Lightning does."""
    if isinstance(limit, int):
        return min(length, limit)
    return length if limit is None else int(length * limit)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column-wise lists; images stay PIL images (the model adapter runs the processor)."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


# --------------------------------------------------------------------------------------- datamodule
#: The splits each stage of the Trainer reads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


@dataclass
class _Split:
    file: str | None
    image_dir: str | None
    dataset: VQADataset | None = None
    skipped: list[Problem] = field(default_factory=list)


def _empty_split_message(name: str, file: str) -> str:
    what_to_do = {
        "train": "training on it would export an untrained model. Point data.train_file at a file with samples "
        "(`python -m grpo_lightning.prepare` writes them)",
        "val": "point data.val_file at a file with samples, or set data.val_file: null to train without validation",
        "test": "point data.test_file at a file with samples, or set data.test_file: null to use the validation split",
    }[name]
    return f"{file}: the {name} split has no samples (the file holds no records); {what_to_do}."


class ViVQAXDataModule(L.LightningDataModule):
    """ViVQA-X (or any VLM-R1-format JSONL) for GRPO training and evaluation.

    Before anything runs, every record is checked and every image's header read; problems stop the run with
    a report naming file, line, sample id and path (or, with ``skip_invalid_samples``, those samples are
    left out and listed). A split the stage needs that has no samples stops the run too.

    Args:
        train_file: training split: our JSONL (``prepare``), a VLM-R1 JSONL, or a ViVQA-X JSON.
        val_file: validation split (None: no validation).
        test_file: test split for ``test`` and ``predict`` (None: they use the validation split).
        train_image_dir: folder of the training images (COCO ``train2014``).
        val_image_dir: folder of the validation images (COCO ``val2014``).
        test_image_dir: folder of the test images (None: ``val_image_dir``, as in ViVQA-X).
        batch_size: prompts per step over all processes; each process takes ``batch_size / world_size`` whole
            prompts and samples all ``num_generations`` completions of each, so a group never spans processes.
        val_batch_size: prompts per evaluation batch on each process.
        num_workers: dataloader worker processes (images are decoded there).
        prompt_template: the prompt, with ``{question}`` where the question goes; None uses the prompt stored in
            a VLM-R1 JSONL, and the default Vietnamese prompt for raw ViVQA-X JSON.
        max_image_side: downscale larger images to this side in the workers (None: keep).
        shuffle: shuffle the training prompts every epoch.
        skip_invalid_samples: leave out samples with problems (and list them) instead of stopping.
        verify_images: also decode every image before training, which finds truncated or corrupt image data but
            reads every file in full (3 to 6 ms a 640x480 JPEG). Off, the start-up scan opens each image and parses
            its header only (about 0.1 ms an image), which finds missing files and files that are no image at all.
        allow_images_outside_image_dir: accept image paths in the data files that lead out of the split's image
            folder (``../x.jpg``, absolute paths elsewhere). Off, such samples are refused at start-up, so a data
            file cannot make training read arbitrary files; symlinks inside the folder are followed freely.
        seed: seed of the training order (each epoch's shuffle is drawn from ``seed + epoch``).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        train_image_dir: str = "data/coco/train2014",
        val_image_dir: str = "data/coco/val2014",
        test_image_dir: str | None = None,
        batch_size: int = 4,
        val_batch_size: int = 8,
        num_workers: int = 0,
        prompt_template: str | None = None,
        max_image_side: int | None = 1024,
        shuffle: bool = True,
        skip_invalid_samples: bool = False,
        verify_images: bool = False,
        allow_images_outside_image_dir: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if prompt_template is not None:
            render_prompt(prompt_template, "")  # fail at construction on a template without {question}
        if batch_size < 1 or val_batch_size < 1:
            raise ConfigError("data.batch_size and data.val_batch_size must be at least 1.")
        self.splits = {
            "train": _Split(train_file, train_image_dir),
            "val": _Split(val_file, val_image_dir),
            "test": _Split(test_file, test_image_dir or val_image_dir),
        }

    @property
    def per_device_batch_size(self) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size ({self.hparams.batch_size}) must be divisible by the number of processes "
                f"({world_size}): each process takes batch_size / world_size whole prompts."
            )
        return self.hparams.batch_size // world_size

    def setup(self, stage: str | None = None) -> None:
        names = STAGE_SPLITS.get(stage, tuple(self.splits)) if stage else tuple(self.splits)
        if stage == "fit":
            if self.hparams.train_file is None:
                raise ConfigError("`fit` needs training data: set data.train_file (and data.train_image_dir).")
            _ = self.per_device_batch_size  # check divisibility before any work
        for name in names:
            self._load(name)

    def _load(self, name: str) -> None:
        split = self.splits[name]
        if name == "test" and split.file is None:  # test and predict fall back to the validation split
            self._load("val")
            self.splits["test"] = self.splits["val"]
            return
        if split.file is None or split.dataset is not None:
            return
        samples, problems = read_samples(split.file)  # the records it could not use are not among the samples
        hp = self.hparams
        scanned = scan_samples(samples, split.image_dir, hp.verify_images, hp.allow_images_outside_image_dir)
        problems += scanned.values()
        hint = f"Fix the data of the {name} split ({split.file})"
        samples = self._without_invalid(name, samples, problems, set(scanned), hint)
        if not samples:
            raise DataValidationError([], _empty_split_message(name, split.file))
        split.dataset = VQADataset(samples, split.image_dir, hp.prompt_template, hp.max_image_side)

    def _without_invalid(
        self, name: str, samples: list[Sample], problems: list[Problem], invalid: set[int], hint: str
    ) -> list[Sample]:
        """``samples`` less those at the ``invalid`` positions, if ``skip_invalid_samples`` allows, with a warning that
        counts and lists ``problems`` (one per record left out); else a :class:`DataValidationError` that lists them.

        Args:
            name: the split (``train``, ``val``, ``test``).
            samples: the split's samples.
            problems: one per record left out: those at ``invalid`` and any the reader already left out.
            invalid: positions in ``samples`` to leave out.
            hint: what to do, naming the file; the error adds ", or set data.skip_invalid_samples: true ...".
        """
        if not problems:
            return samples
        split = self.splits[name]
        if not self.hparams.skip_invalid_samples:
            raise DataValidationError(
                problems,
                f"{hint}, or set data.skip_invalid_samples: true to leave these samples out.",
            )
        samples = [sample for index, sample in enumerate(samples) if index not in invalid]
        split.skipped += problems
        rank_zero_warn(
            f"Skipping {len(problems)} invalid record(s) of the {name} split ({split.file}); "
            f"{len(samples)} samples remain.\n{format_problems(problems)}"
        )
        if not samples:
            raise DataValidationError(problems, f"No valid sample is left in {split.file}.")
        return samples

    def drop_invalid(self, name: str, problems: dict[int, Problem], hint: str) -> None:
        """Refuse, or with ``skip_invalid_samples`` leave out, loaded samples of a split that a check made after
        ``setup`` found wrong; call it before the dataloaders are made, so that a sample left out is in none of them.

        Args:
            name: the split (``train``, ``val``, ``test``), loaded.
            problems: one for each sample to leave out, by its position in the split's dataset.
            hint: what to do, naming the file; the error adds ", or set data.skip_invalid_samples: true ...".

        Raises:
            DataValidationError: listing ``problems`` and ``hint`` (without ``skip_invalid_samples``), or when no sample
                is left.
        """
        if not problems:
            return
        split = self.splits[name]
        dataset = split.dataset
        samples = self._without_invalid(name, dataset.samples, list(problems.values()), set(problems), hint)
        split.dataset = VQADataset(samples, dataset.image_dir, dataset.prompt_template, dataset.max_image_side)

    def dataset(self, name: str) -> VQADataset | None:
        return self.splits[name].dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"].dataset
        trainer = self.trainer
        sampler = ResumableSampler(
            dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=self.hparams.shuffle,
            seed=self.hparams.seed,
        )
        # The position in the epoch travels in the checkpoint through the loader (ResumableDataLoader).
        loader = self._loader(dataset, self.per_device_batch_size, sampler=sampler, loader_class=ResumableDataLoader)
        if trainer is not None:
            loader.epoch_length = lambda: limited_length(len(loader), trainer.limit_train_batches)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        dataset = self.splits["val"].dataset
        if dataset is None:  # training without validation
            return []
        return self._loader(dataset, self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.splits["test"].dataset
        if dataset is None:
            raise ConfigError(f"`{stage}` needs held-out data: set data.test_file or data.val_file.")
        return self._loader(dataset, self.hparams.val_batch_size)

    def _loader(
        self,
        dataset: VQADataset,
        batch_size: int,
        sampler: DistributedSampler | None = None,
        loader_class: type[DataLoader] = DataLoader,
    ) -> DataLoader:
        return loader_class(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.hparams.num_workers > 0,
            # Its own generator: creating a loader iterator must not draw from the global RNG, whose state a
            # resumed run restores from the checkpoint for sampling.
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )
