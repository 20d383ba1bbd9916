"""Seconds per GRPO step on the tiny offline InternVL, and where the time goes.

    python -m benchmarks.bench_step [--assets assets/demo] [--steps 12] [--num-generations 8]
    python -m benchmarks.bench_step --model DIR --lora-r 8 [--no-feature-reuse]   # another InternVL checkpoint

Runs the demo setting (4 prompts x G completions of 24 tokens, beta 0.04) for a few steps after a warm-up
and prints, per stage, the median seconds per step as GRPOModule logs them (``train/time/*``): rollout
(sampling), reward, reference log-probs, and the update (policy loss, backward, optimizer step).
The last line is machine-readable. Ratios between stages are what to compare across machines; absolute
figures on a shared 2-core box are noisy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import lightning as L
import torch

import grpo_demo
from benchmarks.common import quiet_trainer
from benchmarks.profiling import StepRecorder
from grpo_lightning.config import LoggingConfig, LoRAConfig, LossConfig, RewardConfig, SamplingConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", default="assets/demo", help="built by python -m grpo_demo")
    parser.add_argument("--steps", type=int, default=12, help="measured steps (after 3 warm-up steps)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=24)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument(
        "--plain",
        action="store_true",
        help="the unshared reference encoding (shared_encoding=False): pixels into every pass, one prefill per sample",
    )
    parser.add_argument("--model", default=None, help="a checkpoint to train (default: the demo's tiny InternVL)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the medians")
    parser.add_argument("--lora-r", type=int, default=0, help="> 0: train LoRA adapters of this rank")
    parser.add_argument(
        "--no-feature-reuse",
        action="store_true",
        help="with LoRA, encode the images in every pass instead of once per step",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    root = Path(args.assets)
    if not grpo_demo.is_complete(root):
        grpo_demo.build_demo_assets(root)
    warmup = args.warmup
    module = GRPOModule(
        model_name_or_path=args.model or str(grpo_demo.internvl_path(root)),
        rewards=RewardConfig(funcs=["tag_count", "format"]),
        sampling=SamplingConfig(num_generations=args.num_generations, max_completion_length=args.max_completion_length),
        loss=LossConfig(micro_batch_size=args.micro_batch_size),
        lora=LoRAConfig(r=args.lora_r),
        logging=LoggingConfig(completions_every_n_steps=0),
    )
    module.configure_model()
    if args.plain or args.no_feature_reuse:
        # a new adapter is attached to no model, so it keeps no image features across the passes of a step
        module.adapter = type(module.adapter)(module.adapter.processor, shared_encoding=not args.plain)
    recorder = StepRecorder()
    data = ViVQAXDataModule(
        train_file=str(grpo_demo.split_json_path(root, "train")),
        train_image_dir=str(grpo_demo.image_dir(root, "train")),
        batch_size=4,
    )
    L.seed_everything(0)
    trainer = quiet_trainer(accelerator="cpu", max_steps=warmup + args.steps, callbacks=[recorder])
    trainer.fit(module, datamodule=data)
    medians = recorder.medians(skip=warmup)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(recorder.steps) - warmup} measured steps"
    )
    print(
        f"prompts/step 4, G {args.num_generations}, completion length <= {args.max_completion_length}, "
        + ("unshared encoding (--plain)" if args.plain else "shared encoding")
        + (
            f", LoRA r={args.lora_r}, image features "
            + ("once per step" if module.adapter.reuses_image_features else "encoded in every pass")
            if args.lora_r
            else ""
        )
    )
    step = medians["train/step_time"]
    for stage in ("rollout", "reward", "reference", "update"):
        value = medians[f"train/time/{stage}"]
        print(f"{stage:>10}: {value * 1000:8.1f} ms  ({value / step:5.1%} of the step)")
    print(f"{'step':>10}: {step * 1000:8.1f} ms")
    print(
        f"step_s={step:.4f} rollout_share={medians['train/time/rollout'] / step:.3f} "
        f"rollout_tokens_per_s={medians['rollout_tokens_per_s']:.1f} "
        f"training_tokens_per_s={medians['training_tokens_per_s']:.1f}"
    )


if __name__ == "__main__":
    main()
