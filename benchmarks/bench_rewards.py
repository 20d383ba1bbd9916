"""Milliseconds to score one GRPO batch of 64 completions with each reward, beside pycocoevalcap's Cider.

    python -m benchmarks.bench_rewards [--val-file $VIVQAX_DIR/vivqax/ViVQA-X_val.json] [--repeats 20]
                                       [--clip-models tiny ViT-B-32] [--clip-repeats 3] [--device cpu]

The batch is 8 ViVQA-X val questions x G = 8 completions, well formed, whose explanations are a copy of a
reference, another question's reference, a prefix, the question, ...; the images are 8 synthetic 640 x 480
JPEGs (the split's COCO images are not needed). CIDEr-D's document frequencies come from the val file itself
(the training split is not shipped here); the corpus only changes the table's size, not the per-batch cost.
``VIVQAX_DIR`` is the folder of the real ViVQA-X data, by default ``../shared/data`` beside the repository.

CLIP runs on ``--device`` (the CPU by default) with *random* weights (nothing is downloaded): ``tiny`` is the
0.4M-parameter test config; ``ViT-B-32`` is open_clip's ViT-B-32 architecture, whose vision tower is that of the
default ``xlm-roberta-base-ViT-B-32`` but whose text tower is CLIP's 12-layer 512-wide transformer rather than
XLM-RoBERTa-base's 12-layer 768-wide one, so the real multilingual model's text side costs more. Loading is
timed apart from scoring.

Each figure is the median over ``--repeats`` calls (``--clip-repeats`` for CLIP models other than ``tiny``)
after one warm-up call. pycocoevalcap's ``Cider`` computes
its document frequencies from the batch it is given (so its scores are the degenerate ones; see
tests/test_rewards_cider.py); it is timed on the same tokens as ours.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import torch
from PIL import Image
from pycocoevalcap.cider.cider import Cider

from benchmarks.common import VIVQAX_DIR, median_ms
from grpo_demo.models import write_tiny_clip_config
from grpo_lightning.rewards import get_reward
from grpo_lightning.rewards.cider import tokenize
from grpo_lightning.rewards.clip_score import load_clip_model

DEFAULT_VAL_FILE = VIVQAX_DIR / "vivqax" / "ViVQA-X_val.json"


def make_batch(records: list[dict], image_dir: Path, prompts: int, group: int, seed: int = 0) -> dict[str, list]:
    """``prompts`` x ``group`` completions and their batch fields, as the module passes them to rewards."""
    rng = random.Random(seed)
    chosen = rng.sample(records, prompts)
    batch: dict[str, list] = {k: [] for k in ("completions", "solution", "id", "answer", "explanations", "image_path")}
    for p, record in enumerate(chosen):
        image = image_dir / f"image{p}.jpg"
        Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3))).save(image)
        refs = record["explanation"]
        candidates = [
            refs[0],
            rng.choice(records)["explanation"][0],
            " ".join(refs[-1].split()[: max(len(refs[-1].split()) // 2, 1)]),
            record["question"],
            f"{refs[0]} {refs[-1]}",
            refs[-1],
            "một bức ảnh",
            " ".join(reversed(refs[0].split())),
        ]
        for g in range(group):
            explanation = candidates[g % len(candidates)]
            batch["completions"].append(
                f"<think>Nhìn vào ảnh.</think><answer>{record['answer']}</answer><explain>{explanation}</explain>"
            )
            batch["solution"].append(f"<answer>{record['answer']}</answer><explain>{refs[0]}</explain>")
            batch["id"].append(record["question_id"])
            batch["answer"].append(record["answer"])
            batch["explanations"].append(list(refs))
            batch["image_path"].append(str(image))
    return batch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-file", default=str(DEFAULT_VAL_FILE), help="ViVQA-X val JSON (references, corpus)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--clip-models", nargs="*", default=["tiny", "ViT-B-32"], help="'tiny' or open_clip names")
    parser.add_argument("--clip-repeats", type=int, default=3, help="repeats for CLIP models other than 'tiny'")
    parser.add_argument("--device", default="cpu", help="where CLIP runs (cpu, cuda)")
    return parser.parse_args()


def clip_rows(args: argparse.Namespace, work: Path, run: Callable) -> list[tuple[str, float]]:
    """The ``explanation`` reward with CLIPScore alone and with CIDEr-D, for each of ``--clip-models`` (random
    weights; loading is timed and printed apart)."""
    rows: list[tuple[str, float]] = []
    for name in args.clip_models:
        model = str(work / "tiny-clip.json") if name == "tiny" else name
        if name == "tiny":
            write_tiny_clip_config(model)
        start = time.perf_counter()
        clip_model = load_clip_model(model, "random", args.device).model
        params = sum(p.numel() for p in clip_model.parameters()) / 1e6
        print(
            f"set-up: CLIP {name} ({params:.1f}M parameters, random weights): "
            f"{1000 * (time.perf_counter() - start):.0f} ms to build"
        )
        options = {"clip_model": model, "clip_pretrained": "random", "device": args.device}
        repeats = args.repeats if name == "tiny" else args.clip_repeats
        clip_only = get_reward("explanation", cider_weight=0.0, clip_weight=1.0, **options)
        rows.append((f"explanation, CLIPScore only ({name}, {args.device})", median_ms(run(clip_only), repeats)))
        both = get_reward("explanation", corpus_file=args.val_file, cache_dir=str(work / "cache"), **options)
        rows.append((f"explanation, CIDEr-D + CLIPScore ({name}, {args.device})", median_ms(run(both), repeats)))
    return rows


def print_report(rows: list[tuple[str, float]], ours_cider: float, coco: float) -> None:
    """The table of median milliseconds, the CIDEr-D ratio, and a JSON line of every figure."""
    width = max(len(label) for label, _ in rows)
    print(f"\n{'reward (64 completions)'.ljust(width)}  median ms")
    for label, ms in rows:
        print(f"{label.ljust(width)}  {ms:9.2f}")
    print(f"\nratio ours CIDEr-D / pycocoevalcap Cider: {ours_cider / coco:.2f}")
    summary = {label: round(ms, 3) for label, ms in rows}
    print(json.dumps(summary, ensure_ascii=False))


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    records = json.loads(Path(args.val_file).read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="bench-rewards-"))
    batch = make_batch(records, work, args.prompts, args.num_generations)
    completions, fields = batch.pop("completions"), batch
    solution = fields.pop("solution")
    n = len(completions)
    print(
        f"batch: {n} completions ({args.prompts} prompts x G={args.num_generations}); torch threads: "
        f"{torch.get_num_threads()}; python {sys.version.split()[0]}"
    )

    import grpo_lightning.data  # noqa: F401  (imported here so that its import time is not counted below)

    def run(reward):
        return lambda: reward(completions=completions, solution=solution, **fields)

    rows: list[tuple[str, float]] = []
    rows.append(("accuracy", median_ms(run(get_reward("accuracy")), args.repeats)))
    rows.append(("format", median_ms(run(get_reward("format")), args.repeats)))

    start = time.perf_counter()
    cider = get_reward(
        "explanation", cider_weight=1.0, clip_weight=0.0, corpus_file=args.val_file, cache_dir=str(work / "cache")
    )
    cider.document_frequency()
    print(
        f"set-up: CIDEr-D document frequencies of {args.val_file} ({cider.document_frequency().num_documents} "
        f"documents): {1000 * (time.perf_counter() - start):.0f} ms (first process; later ones read the cache)"
    )
    ours_cider = median_ms(run(cider), args.repeats)
    rows.append(("explanation, CIDEr-D only (corpus document frequencies)", ours_cider))

    gts = {j: [" ".join(tokenize(ref)) for ref in refs] for j, refs in enumerate(fields["explanations"])}
    res = {
        j: [" ".join(tokenize(text.split("<explain>")[1].split("</explain>")[0]))] for j, text in enumerate(completions)
    }
    coco = median_ms(lambda: Cider().compute_score(gts, res), args.repeats)
    rows.append(("pycocoevalcap Cider (batch document frequencies), same tokens", coco))

    rows += clip_rows(args, work, run)

    print_report(rows, ours_cider, coco)


if __name__ == "__main__":
    main()
