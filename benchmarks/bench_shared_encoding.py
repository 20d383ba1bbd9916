"""Seconds per rollout and per policy pass with shared and unshared encoding, for InternVL and Qwen2-VL.

    python -m benchmarks.bench_shared_encoding [--family internvl qwen2_vl] [--repeats 3] [--gradient-checkpointing]

Builds, offline, a random-weight model of each family at the CPU benchmark's scale: one 448-px image per prompt, 256
image tokens after the 2x2 merge, a 6-layer vision tower and a 6-layer language model of width 512 (InternVL:
``grpo_demo.models.CPU_MODEL_SHAPE``; Qwen2-VL: ``QWEN2VL_CPU_SHAPE``). On the same B prompts it times, alternating
the shared path (each prompt's image encoded and its prompt prefilled once, the KV cache copied to its G sequences)
and the unshared reference path (``shared_encoding=False``: every sequence encodes its image and runs its whole
prompt):

* rollout: ``GRPOModule.rollouts.generate``, B x G completions of exactly L tokens, same seed;
* policy pass: the log-probs of one such rollout under the policy in training mode, a loss and its backward,
  with ``--gradient-checkpointing`` as the real recipe runs it.

Before timing it checks that both paths sample the same tokens (greedy) and give the same loss, and it counts the
vision tower's images per rollout. The last line is ``<family>_rollout_ratio=<shared/unshared>
<family>_policy_ratio=<shared/unshared>`` for each family.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import torch

import grpo_demo
from benchmarks.common import work_directory
from grpo_demo.models import CPU_MODEL_SHAPE, QWEN2VL_CPU_SHAPE
from grpo_lightning.config import LoggingConfig, RewardConfig, SamplingConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule

FAMILIES = ("internvl", "qwen2_vl")


def build(work_dir: Path, family: str, seed: int = 0) -> Path:
    """The family's checkpoint under ``work_dir`` (reused when built before with the same shape)."""
    shape = CPU_MODEL_SHAPE if family == "internvl" else QWEN2VL_CPU_SHAPE
    path = work_dir / "models" / family
    marker = work_dir / f"{family}.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == shape:
        return path
    builder = grpo_demo.build_tiny_internvl if family == "internvl" else grpo_demo.build_tiny_qwen2vl
    builder(path, seed=seed, **shape)
    marker.write_text(json.dumps(shape), encoding="utf-8")
    return path


def encoding_adapters(module: GRPOModule) -> dict[bool, Any]:
    """The module's adapter (shared encoding) under True, its unshared reference under False."""
    return {True: module.adapter, False: type(module.adapter)(module.adapter.processor, shared_encoding=False)}


def count_images(module: GRPOModule) -> list[int]:
    """Images (InternVL tiles, Qwen2-VL images) per vision-tower call, appended as the tower runs."""
    calls: list[int] = []

    def record(_module, args, kwargs):
        grid = kwargs.get("grid_thw")
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        calls.append(int(grid.shape[0]) if grid is not None else int(pixels.shape[0]))

    module.adapter.vision_tower(module.model).register_forward_pre_hook(record, with_kwargs=True)
    return calls


def policy_pass(module: GRPOModule, rollout) -> tuple[float, float]:
    """Log-probs of the rollout under the policy (training mode, gradients on), a loss, its backward:
    (seconds, loss)."""
    module.model.train()
    module.model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    logps, _ = module.adapter.completion_logps(
        module.model, rollout.prompts, rollout.prompt_index.tolist(), rollout.completion_ids, rollout.completion_mask
    )
    mask = rollout.completion_mask.float()
    loss = -(logps * mask).sum() / mask.sum()
    loss.backward()
    return time.perf_counter() - start, loss.item()


def bench_family(family: str, args: argparse.Namespace, work_dir: Path, data_dir: Path) -> dict[str, Any]:
    module = GRPOModule(
        model_name_or_path=str(build(work_dir, family)),
        gradient_checkpointing=args.gradient_checkpointing,
        rewards=RewardConfig(funcs=["format"]),
        sampling=SamplingConfig(
            num_generations=args.num_generations,
            max_completion_length=args.completion_length,
            min_completion_length=args.completion_length,
        ),
        logging=LoggingConfig(completions_every_n_steps=0),
    )
    module.configure_model()
    data = ViVQAXDataModule(
        train_file=str(data_dir / "ViVQA-X_train.json"),
        train_image_dir=str(data_dir / "train2014"),
        batch_size=args.prompts,
        shuffle=False,
        max_image_side=None,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    images = count_images(module)
    adapters = encoding_adapters(module)
    greedy, losses, image_counts = {}, {}, {}
    for shared in (True, False):
        module.adapter = adapters[shared]
        images.clear()
        greedy[shared] = module.rollouts.generate(batch, args.num_generations, do_sample=False)
        image_counts[shared] = sum(images)
    if not torch.equal(greedy[True].completion_ids, greedy[False].completion_ids):
        raise RuntimeError(f"{family}: the shared path sampled other tokens than the unshared path (greedy)")
    for shared in (True, False):
        module.adapter = adapters[shared]
        losses[shared] = policy_pass(module, greedy[True])[1]
    if abs(losses[True] - losses[False]) > 1e-4 * max(1.0, abs(losses[False])):
        raise RuntimeError(f"{family}: the shared path's loss {losses[True]} differs from the unshared {losses[False]}")
    times: dict[str, dict[bool, list[float]]] = {"rollout": {True: [], False: []}, "policy": {True: [], False: []}}
    for _ in range(args.repeats):
        for shared in (True, False):
            module.adapter = adapters[shared]
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            module.rollouts.generate(batch, args.num_generations, do_sample=True)
            times["rollout"][shared].append(time.perf_counter() - start)
            times["policy"][shared].append(policy_pass(module, greedy[True])[0])
    result: dict[str, Any] = {
        "images": image_counts,
        "times": times,
        "parameters": sum(p.numel() for p in module.model.parameters()),
    }
    for stage in ("rollout", "policy"):
        shared, unshared = (statistics.median(times[stage][path]) for path in (True, False))
        result[stage] = {"shared_s": shared, "unshared_s": unshared, "ratio": shared / unshared}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--prompts", type=int, default=2, help="B")
    parser.add_argument("--num-generations", type=int, default=4, help="G")
    parser.add_argument("--completion-length", type=int, default=32, help="L (exact)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts and passes per path (alternating)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as the real recipe trains")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="keep the models and data here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with work_directory(args.work_dir, "bench_shared_encoding-") as work_dir:
        data_dir = work_dir / "data"
        if not (data_dir / "ViVQA-X_train.json").is_file():
            grpo_demo.write_dataset(data_dir, seed=args.seed, num_train=max(16, args.prompts), num_val=4)
        print(
            f"torch {torch.__version__}, {args.threads} threads; B={args.prompts} prompts x G={args.num_generations} "
            f"completions of exactly {args.completion_length} tokens; {args.repeats} timed runs per path; "
            f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
        )
        ratios = []
        for family in args.family:
            r = bench_family(family, args, work_dir, data_dir)
            print(
                f"{family} ({r['parameters'] / 1e6:.1f}M parameters): vision-tower images per rollout "
                f"{r['images'][True]} vs {r['images'][False]}; greedy tokens and loss identical"
            )
            for stage in ("rollout", "policy"):
                t = r[stage]
                runs = {path: " ".join(f"{x:.2f}" for x in r["times"][stage][path]) for path in (True, False)}
                print(
                    f"  {stage}: shared {t['shared_s']:.3f} s [{runs[True]}], unshared {t['unshared_s']:.3f} s "
                    f"[{runs[False]}]"
                )
                ratios.append(f"{family}_{stage}_ratio={t['ratio']:.3f}")
    print(" ".join(ratios))


if __name__ == "__main__":
    main()
