"""The predictions file that ``predict`` writes, and the metadata file beside it that says what made it.

The predictions file stays in the public ViVQA-X format, a JSON list of records (:mod:`grpo_lightning.task`), so
that other tools read it as they always have. What made it goes into a second JSON file beside it, named after it
with ``.meta.json`` for its suffix (``predictions.json`` -> ``predictions.meta.json``, :func:`metadata_path`)::

    {"format": "grpo_lightning.predictions_metadata", "format_version": 1,
     "predictions_file": "predictions.json", "num_records": 1968, "sha256": "9f2c...",
     "model_name_or_path": "OpenGVLab/InternVL3-1B-hf",
     "checkpoint": "lightning_logs/recipe/version_0/checkpoints/last.ckpt",
     "protocol": "normalized", "created": "2025-06-01T12:00:00+00:00",
     "dataset_file": "data/ViVQA-X/ViVQA-X_test.json", "grpo_lightning_version": "0.1.0"}

``checkpoint`` is null for predictions of the base model's own weights; ``protocol`` is the one the run validates with
(``model.evaluation.protocol``): ``predict`` itself scores nothing. ``sha256`` is the predictions file's: a
metadata file whose hash does not match (the predictions were written again by another tool, say) describes another
file, and the evaluation says so instead of showing it. A predictions file without metadata (the public baselines'
files) is evaluated as before, with each of these fields shown as unknown.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grpo_lightning.errors import UserError

#: The ``format`` field of a metadata file, and the version of its layout.
METADATA_FORMAT = "grpo_lightning.predictions_metadata"
METADATA_FORMAT_VERSION = 1

#: The suffix that replaces the predictions file's own to name its metadata file.
METADATA_SUFFIX = ".meta.json"


class MetadataError(UserError):
    """A metadata file beside a predictions file that cannot be read."""


@dataclass(frozen=True)
class PredictionsMetadata:
    """What made a predictions file; a field is None where it is unknown.

    Attributes:
        model_name_or_path: the base model (``model.model_name_or_path``).
        checkpoint: the checkpoint whose weights predicted (None: the base model's own weights, or unknown).
        protocol: the evaluation protocol of the run (``model.evaluation.protocol``).
        created: when the predictions were written, UTC, ISO 8601.
        dataset_file: the split the predictions are of.
        grpo_lightning_version: the package's version.
        num_records: how many records the predictions file holds.
        sha256: the predictions file's SHA-256, as hex.
    """

    model_name_or_path: str | None = None
    checkpoint: str | None = None
    protocol: str | None = None
    created: str | None = None
    dataset_file: str | None = None
    grpo_lightning_version: str | None = None
    num_records: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class MetadataReading:
    """The metadata found beside a predictions file, and how it was found.

    Attributes:
        metadata: the metadata (every field None when there is none to show).
        path: the metadata file's path (whether or not it exists).
        status: ``found``, ``absent`` (no metadata file) or ``stale`` (it describes another version of the file).
        note: a sentence for the reader when the status is not ``found``; empty otherwise.
    """

    metadata: PredictionsMetadata
    path: Path
    status: str
    note: str = ""


def metadata_path(predictions: str | os.PathLike) -> Path:
    """The metadata file of the predictions file ``predictions``: its name with ``.meta.json`` for its suffix."""
    path = Path(predictions)
    return path.with_name((path.stem if path.suffix else path.name) + METADATA_SUFFIX)


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second: ``2025-06-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_predictions(path: str | os.PathLike, records: list[dict[str, Any]], metadata: PredictionsMetadata) -> Path:
    """Write ``records`` as the predictions file ``path`` and ``metadata`` beside it (:func:`metadata_path`), each
    whole or not at all; ``num_records`` and ``sha256`` are filled in from what is written. Returns ``path``."""
    path = Path(path)
    text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    data = text.encode("utf-8")
    described = PredictionsMetadata(
        **{**asdict(metadata), "num_records": len(records), "sha256": hashlib.sha256(data).hexdigest()}
    )
    header = {"format": METADATA_FORMAT, "format_version": METADATA_FORMAT_VERSION, "predictions_file": path.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_whole(path, data)
    _write_whole(metadata_path(path), (json.dumps({**header, **asdict(described)}, indent=2) + "\n").encode("utf-8"))
    return path


def read_metadata(predictions: str | os.PathLike) -> MetadataReading:
    """The metadata beside the predictions file ``predictions``, checked against the file's hash.

    Raises:
        MetadataError: the metadata file exists but is not a metadata object; the message says to delete or rewrite it.
    """
    predictions = Path(predictions)
    path = metadata_path(predictions)
    if not path.is_file():
        note = f"no {path.name} beside {predictions.name}: the model, checkpoint and date are unknown"
        return MetadataReading(PredictionsMetadata(), path, "absent", note)
    what_to_do = "delete it (the evaluation then shows the run as unknown), or write the predictions again with predict"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(f"{path}: not a JSON metadata file ({err}); {what_to_do}.") from None
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
        raise MetadataError(
            f"{path}: not a predictions metadata file (its format is not {METADATA_FORMAT}); {what_to_do}."
        )
    known = {f.name for f in fields(PredictionsMetadata)}
    metadata = PredictionsMetadata(**{name: value for name, value in data.items() if name in known})
    if metadata.sha256 is not None and metadata.sha256 != hashlib.sha256(predictions.read_bytes()).hexdigest():
        note = f"{path.name} describes another version of {predictions.name} (its SHA-256 differs), so it is not shown"
        return MetadataReading(PredictionsMetadata(), path, "stale", note)
    return MetadataReading(metadata, path, "found")


def _write_whole(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temp.write_bytes(data)
    os.replace(temp, path)


__all__ = [
    "METADATA_FORMAT",
    "METADATA_SUFFIX",
    "MetadataError",
    "MetadataReading",
    "PredictionsMetadata",
    "metadata_path",
    "read_metadata",
    "utc_now",
    "write_predictions",
]
