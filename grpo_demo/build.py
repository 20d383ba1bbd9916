"""The whole demo build (models, data, marker) and its command line, ``python -m grpo_demo``."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_demo.cold_start import cold_start
from grpo_demo.layout import (
    CLIP_CONFIG_FILE,
    COMPLETE_MARKER,
    DATA_SUBDIR,
    INTERNVL_COLD_START_SUBDIR,
    INTERNVL_SUBDIR,
    QWEN2VL_SUBDIR,
    image_dir,
    split_json_path,
)
from grpo_demo.models import build_tiny_internvl, build_tiny_qwen2vl, write_tiny_clip_config
from grpo_demo.scenes import write_dataset
from grpo_demo.tokenizer import default_corpus
from grpo_lightning import quiet_deepspeed_without_cuda

#: The demo's dataset: 64 training questions (on 32 pictures) and 48 validation questions (on 24), which
#: ``configs/demo.yaml`` validates on whole (its ``limit_val_batches`` x ``val_batch_size``).
DEMO_NUM_TRAIN, DEMO_NUM_VAL = 64, 48


def _summary(root: Path, meta: dict[str, Any]) -> str:
    lines = [f"demo assets in {root} (seed {meta['seed']}, built in {meta['build_seconds']:.1f} s)"]
    for key in ("internvl", "internvl_cold_start", "qwen2vl"):
        m = meta["models"][key]
        lines.append(f"  {root / m['path']}: {m['class']}, {m['parameters']:,} parameters, vocab {m['vocab_size']}")
    d = meta["data"]
    for split in ("train", "val"):
        lines.append(
            f"  {root / d[f'{split}_json']}: {d[f'num_{split}']} samples, "
            f"{d[f'num_{split}_images']} images in {root / d[f'{split}_images']}"
        )
    return "\n".join(lines)


def _build_in_place(root: Path, *, seed: int, num_train: int, num_val: int) -> dict[str, list[dict[str, Any]]]:
    """Build the models and data in a staging folder inside ``root``, then move them into place; returns the
    dataset's records."""
    staging = root / f".staging-{os.getpid()}"
    try:
        splits = write_dataset(staging / DATA_SUBDIR, seed=seed, num_train=num_train, num_val=num_val)
        corpus = default_corpus([r for split in ("train", "val") for r in splits[split]])
        build_tiny_internvl(staging / INTERNVL_SUBDIR, seed=seed, corpus=corpus)
        cold_start(staging / INTERNVL_SUBDIR, staging / INTERNVL_COLD_START_SUBDIR, seed=seed)
        build_tiny_qwen2vl(staging / QWEN2VL_SUBDIR, seed=seed, corpus=corpus)
        write_tiny_clip_config(staging / CLIP_CONFIG_FILE)
        for sub in (INTERNVL_SUBDIR, INTERNVL_COLD_START_SUBDIR, QWEN2VL_SUBDIR, CLIP_CONFIG_FILE, DATA_SUBDIR):
            target = root / sub
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.replace(target, staging / f"old-{sub.replace('/', '-')}")
            os.replace(staging / sub, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return splits


def _marker_content(root: Path, seed: int, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the ``.complete`` marker holds: only deterministic content (relative paths, no timings), so that two
    builds with the same seed are byte-identical, marker included."""
    return {
        "seed": seed,
        "models": {
            "internvl": _model_meta(root, INTERNVL_SUBDIR),
            "internvl_cold_start": _model_meta(root, INTERNVL_COLD_START_SUBDIR),
            "qwen2vl": _model_meta(root, QWEN2VL_SUBDIR),
        },
        "data": {
            "train_json": str(split_json_path(root, "train").relative_to(root)),
            "val_json": str(split_json_path(root, "val").relative_to(root)),
            "train_images": str(image_dir(root, "train").relative_to(root)),
            "val_images": str(image_dir(root, "val").relative_to(root)),
            "num_train": len(splits["train"]),
            "num_val": len(splits["val"]),
            "num_train_images": len({r["image_name"] for r in splits["train"]}),
            "num_val_images": len({r["image_name"] for r in splits["val"]}),
        },
    }


def build_demo_assets(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    num_train: int = DEMO_NUM_TRAIN,
    num_val: int = DEMO_NUM_VAL,
    force: bool = False,
) -> dict[str, Any]:
    """Build everything under ``out`` (the layout in ``grpo_demo``'s docstring) and return a summary dict.

    If ``out/.complete`` exists and not ``force``, nothing is rebuilt and the summary stored in the marker is returned
    with ``"skipped": True``. Otherwise the marker is removed first, the models and data are built in a staging
    folder inside ``out``, moved into place, and the marker is written last (atomically), so an interrupted build
    never leaves a marker. Only ``models/tiny-internvl``, ``models/tiny-qwen2vl`` and ``data`` are replaced; other
    files under ``out`` are left alone. The returned dict is the marker's content plus ``skipped`` and, for a build,
    ``build_seconds``.
    """
    root = Path(out)
    marker = root / COMPLETE_MARKER
    if marker.is_file() and not force:
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        return {**meta, "skipped": True}

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for stale in root.glob(".staging-*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    splits = _build_in_place(root, seed=seed, num_train=num_train, num_val=num_val)
    meta = _marker_content(root, seed, splits)
    tmp_marker = root / f"{COMPLETE_MARKER}.tmp-{os.getpid()}"
    tmp_marker.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_marker, marker)
    return {**meta, "skipped": False, "build_seconds": round(time.perf_counter() - start, 2)}


def _model_meta(root: Path, sub: str) -> dict[str, Any]:
    path = root / sub
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    from safetensors import safe_open

    n_params = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                n_params += math.prod(f.get_slice(key).get_shape())
    return {
        "path": sub,
        "class": config["architectures"][0],
        "model_type": config["model_type"],
        "parameters": n_params,
        "vocab_size": config["text_config"]["vocab_size"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpo_demo",
        description="Build tiny offline demo models (InternVL, Qwen2-VL) and a synthetic ViVQA-X dataset.",
    )
    parser.add_argument("--out", required=True, help="output folder, e.g. assets/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=DEMO_NUM_TRAIN, help="number of train samples (questions)")
    parser.add_argument("--num-val", type=int, default=DEMO_NUM_VAL, help="number of val samples (questions)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT/.complete exists")
    args = parser.parse_args(argv)

    quiet_deepspeed_without_cuda()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    meta = build_demo_assets(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val, force=args.force)
    if meta["skipped"]:
        print(f"{args.out} is up to date ({COMPLETE_MARKER} exists); use --force to rebuild")
        built = (meta.get("seed"), meta.get("data", {}).get("num_train"), meta.get("data", {}).get("num_val"))
        if built != (args.seed, args.num_train, args.num_val):
            print(f"note: it was built with (seed, num_train, num_val) = {built}", file=sys.stderr)
        return 0
    print(_summary(Path(args.out), meta))
    return 0
