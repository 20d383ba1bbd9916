"""The predictions file and the metadata file beside it: written together, read back and checked against the file,
and a predictions file without metadata (the public baselines') read as before."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from grpo_lightning.errors import UserError
from grpo_lightning.predictions_file import (
    METADATA_FORMAT,
    MetadataError,
    PredictionsMetadata,
    metadata_path,
    read_metadata,
    utc_now,
    write_predictions,
)

RECORDS = [
    {
        "question_id": "1001",
        "question": "Con vật này là gì?",
        "pred_ans": "mèo",
        "pred_explain": "",
        "gt_ans": "mèo",
        "gt_explain": ["nó có râu"],
    }
]
METADATA = PredictionsMetadata(
    model_name_or_path="assets/demo/models/tiny-internvl",
    checkpoint="lightning_logs/demo/version_0/checkpoints/step=100.ckpt",
    protocol="normalized",
    created="2025-06-01T12:00:00+00:00",
    dataset_file="assets/demo/data/ViVQA-X_val.json",
    grpo_lightning_version="0.1.0",
)


@pytest.mark.parametrize(
    ("predictions", "metadata"),
    [
        ("predictions.json", "predictions.meta.json"),
        ("run/ViVQA-X_test_preds.json", "run/ViVQA-X_test_preds.meta.json"),
        ("predictions", "predictions.meta.json"),
        ("a.b.json", "a.b.meta.json"),
    ],
)
def test_metadata_path(predictions, metadata):
    assert metadata_path(predictions) == Path(metadata)


def test_written_metadata_reads_back_with_the_file_count_and_hash(tmp_path):
    path = write_predictions(tmp_path / "out" / "predictions.json", RECORDS, METADATA)
    assert json.loads(path.read_text(encoding="utf-8")) == RECORDS  # the public format, untouched
    written = json.loads(metadata_path(path).read_text(encoding="utf-8"))
    assert written["format"] == METADATA_FORMAT and written["predictions_file"] == "predictions.json"
    reading = read_metadata(path)
    assert (reading.status, reading.note, reading.path) == ("found", "", tmp_path / "out" / "predictions.meta.json")
    assert reading.metadata.num_records == 1 and len(reading.metadata.sha256) == 64
    assert reading.metadata == PredictionsMetadata(
        **{**METADATA.__dict__, "num_records": 1, "sha256": reading.metadata.sha256}
    )
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_a_file_without_metadata_reads_as_unknown(tmp_path):
    path = tmp_path / "ViVQA-X_test_predictions.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    reading = read_metadata(path)
    assert reading.status == "absent" and reading.metadata == PredictionsMetadata()
    assert reading.note == (
        "no ViVQA-X_test_predictions.meta.json beside ViVQA-X_test_predictions.json: the model, checkpoint and "
        "date are unknown"
    )


def test_metadata_of_another_version_of_the_file_is_not_shown(tmp_path):
    path = write_predictions(tmp_path / "predictions.json", RECORDS, METADATA)
    path.write_text(json.dumps([{**RECORDS[0], "pred_ans": "chó"}]), encoding="utf-8")  # rewritten by another tool
    reading = read_metadata(path)
    assert reading.status == "stale" and reading.metadata == PredictionsMetadata()
    assert "predictions.meta.json describes another version of predictions.json" in reading.note


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not a JSON metadata file"),
        ('["a list"]', "not a predictions metadata file"),
        ('{"model_name_or_path": "x"}', "not a predictions metadata file"),
    ],
)
def test_an_unreadable_metadata_file_is_named_with_what_to_do(tmp_path, content, fragment):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    metadata_path(path).write_text(content, encoding="utf-8")
    with pytest.raises(MetadataError) as raised:
        read_metadata(path)
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert message.startswith(f"{metadata_path(path)}: {fragment}") and "delete it" in message


def test_fields_a_newer_version_adds_are_ignored(tmp_path):
    path = write_predictions(tmp_path / "predictions.json", RECORDS, METADATA)
    data = json.loads(metadata_path(path).read_text(encoding="utf-8"))
    metadata_path(path).write_text(json.dumps({**data, "seed": 3}), encoding="utf-8")
    assert read_metadata(path).metadata.model_name_or_path == METADATA.model_name_or_path


def test_utc_now_is_iso_8601_in_utc():
    assert datetime.fromisoformat(utc_now()).utcoffset().total_seconds() == 0
