"""Convert ViVQA-X JSON into GRPO JSONL: ``python -m grpo_lightning.prepare --vivqax-dir DIR --out DIR``.

Reads ``DIR/ViVQA-X_{split}.json`` in any of its three published forms and writes
``OUT/ViVQA-X_{split}_grpo.jsonl``, one sample per line in VLM-R1's format::

    {"id": "393271001", "image": "COCO_val2014_000000393271.jpg",
     "conversations": [{"from": "human", "value": "<image>PROMPT"},
                       {"from": "gpt", "value": "SOLUTION"}],
     "question": "...", "answer": "có", "explanations": ["...", "...", "..."],
     "question_type": "does this", "answer_type": "yes/no"}

VLM-R1-style loaders read ``image`` and ``conversations`` and ignore the rest; ours also read ``question``,
``answer`` and every reference explanation (rewards and evaluation need all of them). PROMPT is the
prompt template (default: :data:`grpo_lightning.task.DEFAULT_PROMPT_TEMPLATE`) with the question filled in;
SOLUTION is the answer and the first reference explanation in the answer format
(:func:`grpo_lightning.task.format_solution`).

With ``--image-dir`` (the COCO root), each image is looked up as ``IMAGE_DIR/train2014/NAME`` or
``IMAGE_DIR/val2014/NAME`` (from the COCO file name), else ``IMAGE_DIR/NAME``, and missing ones are counted.
Records with problems are reported with file, line and sample id and not written; the command then exits 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from grpo_lightning.data import Sample, format_problems, read_samples
from grpo_lightning.errors import UserError
from grpo_lightning.task import DEFAULT_PROMPT_TEMPLATE, format_solution, render_prompt

_COCO_SPLIT = re.compile(r"^COCO_(train2014|val2014|test2014|test2015)_")

#: Splits larger than this get a progress bar.
PROGRESS_THRESHOLD = 1000


def to_jsonl_record(sample: Sample, prompt_template: str) -> dict:
    """One sample in the VLM-R1 conversation format, with every reference explanation kept."""
    first = sample.explanations[0] if sample.explanations else ""
    return {
        "id": sample.id,
        "image": sample.image,
        "conversations": [
            {"from": "human", "value": "<image>" + render_prompt(prompt_template, sample.question)},
            {"from": "gpt", "value": format_solution(sample.answer, first)},
        ],
        "question": sample.question,
        "answer": sample.answer,
        "explanations": list(sample.explanations),
        "question_type": sample.question_type,
        "answer_type": sample.answer_type,
    }


def coco_image_path(image_dir: Path, name: str) -> Path:
    """``image_dir/<COCO split folder>/name`` for COCO file names when that folder exists, else ``image_dir/name``."""
    match = _COCO_SPLIT.match(name)
    if match and (image_dir / match.group(1)).is_dir():
        return image_dir / match.group(1) / name
    return image_dir / name


def prepare_split(
    source: Path, out_file: Path, prompt_template: str, image_dir: Path | None = None
) -> dict[str, object]:
    """Convert one split; returns its summary (counts, missing images, problems)."""
    samples, problems = read_samples(source)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(out_file.suffix + ".tmp")
    missing = []
    progress = tqdm(samples, desc=source.name, unit="sample", disable=len(samples) <= PROGRESS_THRESHOLD)
    with tmp.open("w", encoding="utf-8") as handle:
        for sample in progress:
            handle.write(json.dumps(to_jsonl_record(sample, prompt_template), ensure_ascii=False) + "\n")
            if image_dir is not None and not coco_image_path(image_dir, sample.image).is_file():
                missing.append(sample.image)
    tmp.replace(out_file)  # a killed run never leaves a half-written file under the final name
    return {
        "source": str(source),
        "out": str(out_file),
        "samples": len(samples),
        "answer_types": dict(Counter(s.answer_type or "(none)" for s in samples).most_common()),
        "missing_images": None if image_dir is None else len(missing),
        "missing_examples": missing[:5],
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.prepare",
        description="Convert ViVQA-X JSON files into GRPO JSONL (VLM-R1 conversation format, all references kept).",
    )
    parser.add_argument("--vivqax-dir", required=True, type=Path, help="folder with ViVQA-X_{split}.json")
    parser.add_argument("--out", required=True, type=Path, help="output folder for ViVQA-X_{split}_grpo.jsonl")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to convert")
    parser.add_argument("--image-dir", type=Path, default=None, help="COCO root (train2014/, val2014/) to check")
    parser.add_argument(
        "--prompt-template",
        default=DEFAULT_PROMPT_TEMPLATE,
        help="prompt with {question} (default: the Vietnamese one)",
    )
    args = parser.parse_args(argv)
    try:
        return _prepare(args)
    except UserError as err:  # a template without {question}, a file that is not UTF-8: one line, status 2
        parser.exit(2, f"error: {err}\n")


def _prepare(args: argparse.Namespace) -> int:
    """Convert the splits; 1 when a split was missing or had records that were not written, else 0."""
    render_prompt(args.prompt_template, "")
    failed = False
    for split in args.splits:
        source = args.vivqax_dir / f"ViVQA-X_{split}.json"
        if not source.is_file():
            print(f"{split}: {source} not found; skipping this split.", file=sys.stderr)
            failed = True
            continue
        summary = prepare_split(source, args.out / f"ViVQA-X_{split}_grpo.jsonl", args.prompt_template, args.image_dir)
        types = ", ".join(f"{name} {count}" for name, count in summary["answer_types"].items())
        print(f"{split}: {summary['samples']} samples -> {summary['out']}")
        print(f"  answer types: {types}")
        if summary["missing_images"] is not None:
            examples = f" (e.g. {', '.join(summary['missing_examples'])})" if summary["missing_examples"] else ""
            print(f"  missing images: {summary['missing_images']} of {summary['samples']}{examples}")
        if summary["problems"]:
            failed = True
            print(f"  {format_problems(summary['problems'])}", file=sys.stderr)
            print(
                "  These records were not written; fix them in the source file and run prepare again.", file=sys.stderr
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
