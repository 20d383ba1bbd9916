"""What an offline W&B run holds, read back from its folder (``<dir>/wandb/offline-run-<time>-<id>/``), no server.

The run's transaction log, ``run-<id>.wandb``, is what ``wandb sync`` uploads: a LevelDB-style log (32 KiB blocks of
chunks, each with a 7-byte header: checksum, length, type) after a 7-byte W&B header, whose records are
``wandb.proto.wandb_internal_pb2.Record`` messages. The SDK ships the message types but no reader in Python (its
reader is in the Go core), so the framing is read here. A table's rows are in ``files/<path>`` (``.table.json``),
which the history row names.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version 0
_CHUNK = struct.Struct("<IHB")  # checksum, length, type
_FULL, _FIRST, _LAST = 1, 2, 4


def offline_run_folder(wandb_dir: Path) -> Path:
    """The one offline run under ``wandb_dir`` (a logger's ``save_dir`` or ``$WANDB_DIR``)."""
    runs = sorted(Path(wandb_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {wandb_dir}, found {runs}"
    return runs[0]


def read_records(run_folder: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of the run's transaction log, in order."""
    (log,) = run_folder.glob("run-*.wandb")
    data = log.read_bytes()
    assert _HEADER.unpack_from(data) == (b":W&B", 0xBEE1, 0), f"{log}: not a W&B transaction log"
    position, pending = _HEADER.size, b""
    while position + _CHUNK.size <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _CHUNK.size:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        _, length, kind = _CHUNK.unpack_from(data, position)
        if length == 0 and kind == 0:  # zero padding to the block's end
            position += left_in_block
            continue
        chunk = data[position + _CHUNK.size : position + _CHUNK.size + length]
        position += _CHUNK.size + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history(run_folder: Path) -> list[dict[str, Any]]:
    """The rows that ``run.log`` wrote, each as ``{key: value}``; a media value (a table) as its dict of fields."""
    rows = []
    for record in read_records(run_folder):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                path = [item.key] if item.key else list(item.nested_key)
                target = row
                for part in path[:-1]:
                    target = target.setdefault(part, {})
                target[path[-1]] = json.loads(item.value_json)
            rows.append(row)
    return rows


def config(run_folder: Path) -> dict[str, Any]:
    """The run's config (what ``log_hyperparams`` gave), its updates merged in order."""
    merged: dict[str, Any] = {}
    for record in read_records(run_folder):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                key = item.key or ".".join(item.nested_key)
                merged[key] = json.loads(item.value_json)
    return merged


def table(run_folder: Path, value: dict[str, Any]) -> dict[str, Any]:
    """A logged table's ``columns`` and ``data``, from the file its history value names."""
    assert value["_type"] == "table-file", value
    return json.loads((run_folder / "files" / value["path"]).read_text(encoding="utf-8"))
