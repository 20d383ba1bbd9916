"""Where the demo assets live under their root folder: one function per path, shared by the builders and the tests."""

from __future__ import annotations

import os
from pathlib import Path

COMPLETE_MARKER = ".complete"
INTERNVL_SUBDIR = "models/tiny-internvl"
INTERNVL_COLD_START_SUBDIR = "models/tiny-internvl-cold-start"
QWEN2VL_SUBDIR = "models/tiny-qwen2vl"
CLIP_CONFIG_FILE = "models/tiny-clip.json"


def clip_config_path(root: str | os.PathLike) -> Path:
    """The tiny CLIP config of the demo assets (``DIR/models/tiny-clip.json``)."""
    return Path(root) / CLIP_CONFIG_FILE


DATA_SUBDIR = "data"
SCENES_FILE = "demo_scenes.json"
SPLIT_IMAGE_DIRS = {"train": "train2014", "val": "val2014"}


def internvl_path(root: str | os.PathLike) -> Path:
    """``root/models/tiny-internvl``: the tiny InternVL checkpoint (model + processor)."""
    return Path(root) / INTERNVL_SUBDIR


def internvl_cold_start_path(root: str | os.PathLike) -> Path:
    """``root/models/tiny-internvl-cold-start``: the tiny InternVL after the format-only warm-up
    (:mod:`grpo_demo.cold_start`), the model the demo trains."""
    return Path(root) / INTERNVL_COLD_START_SUBDIR


def qwen2vl_path(root: str | os.PathLike) -> Path:
    """``root/models/tiny-qwen2vl``: the tiny Qwen2-VL checkpoint (model + processor)."""
    return Path(root) / QWEN2VL_SUBDIR


def data_dir(root: str | os.PathLike) -> Path:
    """``root/data``: the synthetic ViVQA-X dataset (JSON files + COCO-style image folders)."""
    return Path(root) / DATA_SUBDIR


def split_json_path(root: str | os.PathLike, split: str) -> Path:
    """``root/data/ViVQA-X_{split}.json`` for ``split`` in ``train``/``val``."""
    _check_split(split)
    return data_dir(root) / f"ViVQA-X_{split}.json"


def image_dir(root: str | os.PathLike, split: str) -> Path:
    """``root/data/train2014`` or ``root/data/val2014`` (the COCO layout)."""
    _check_split(split)
    return data_dir(root) / SPLIT_IMAGE_DIRS[split]


def scenes_path(root: str | os.PathLike) -> Path:
    """``root/data/demo_scenes.json``: image name -> what the picture contains (for checking answers)."""
    return data_dir(root) / SCENES_FILE


def is_complete(root: str | os.PathLike) -> bool:
    """Whether a finished build is present at ``root`` (its ``.complete`` marker exists)."""
    return (Path(root) / COMPLETE_MARKER).is_file()


def _check_split(split: str) -> None:
    if split not in SPLIT_IMAGE_DIRS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IMAGE_DIRS)}, got {split!r}")
