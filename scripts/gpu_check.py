"""GPU check: 3 GRPO steps of an InternVL3-1B-shaped model with the real recipe's settings, offline.

    python -m scripts.gpu_check [--steps 3] [--num-generations 8] [--prompts 4] [--completion-length 256]

Builds a random-weight model with InternVL3-1B's dimensions (Qwen2.5-0.5B language model: hidden 896, 24
layers, 14 heads / 2 KV heads, MLP 4864, vocabulary 151,674; InternViT-300M vision tower: hidden 1024, 24
layers, 16 heads, MLP 4096, 448-px tiles of 14-px patches, 256 image tokens per tile) and a synthetic
ViVQA-X-style dataset, then runs ``GRPOModule`` under Lightning with bf16, DeepSpeed ZeRO-2 with the
optimizer offloaded to the CPU (DeepSpeedCPUAdam), gradient checkpointing, G completions of exactly
``--completion-length`` tokens per prompt, and beta 0.04 (a frozen reference model in memory).

Prints peak GPU memory, seconds per step, rollout (sampling) tokens per second and training tokens per
second (prompt + completion tokens through the policy's forward and backward), per step and as medians
over the steps after the first. Needs a CUDA device and no network; takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import torch

# The benchmarks package sets the Hugging Face libraries offline when imported, which is before they load: its name
# sorts first among this file's imports, and Lightning (which loads them) is imported only where the trainer is built.
from benchmarks.common import quiet_trainer
from benchmarks.profiling import StepRecorder
from grpo_demo.models import INTERNVL3_1B_SHAPE, build_tiny_internvl
from grpo_demo.scenes import write_dataset
from grpo_lightning.config import LoggingConfig, LossConfig, RewardConfig, SamplingConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule


def optimizer_factory():
    """DeepSpeedCPUAdam (compiled on first use), the optimizer ZeRO's CPU offload is built for."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return lambda params: DeepSpeedCPUAdam(params, lr=1e-6, weight_decay=0.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="where to build the model (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="the unshared reference encoding (shared_encoding=False): pixels into every pass, one prefill per sample",
    )
    return parser.parse_args()


def build_assets(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """The synthetic dataset and the InternVL3-1B-shaped bf16 checkpoint under ``workdir``: (data dir, model dir)."""
    data_dir = workdir / "data"
    write_dataset(data_dir, seed=0, num_train=max(16, args.prompts * args.steps), num_val=4)
    model_dir = build_tiny_internvl(workdir / "internvl3-1b-shaped", dtype="bfloat16", **INTERNVL3_1B_SHAPE)
    return data_dir, model_dir


def build_module(args: argparse.Namespace, model_dir: Path) -> GRPOModule:
    """The recipe's module: bf16, sdpa, gradient checkpointing, exactly ``--completion-length`` tokens, beta 0.04."""
    return GRPOModule(
        model_name_or_path=str(model_dir),
        dtype="bfloat16",
        attn_implementation="sdpa",
        gradient_checkpointing=True,
        optimizer=optimizer_factory(),
        rewards=RewardConfig(funcs=["format"]),
        sampling=SamplingConfig(
            num_generations=args.num_generations,
            max_completion_length=args.completion_length,
            min_completion_length=args.completion_length,
        ),
        loss=LossConfig(beta=0.04, micro_batch_size=args.micro_batch_size),
        logging=LoggingConfig(completions_every_n_steps=0),
    )


def fit(args: argparse.Namespace, module: GRPOModule, data: ViVQAXDataModule) -> tuple[StepRecorder, float]:
    """Train ``--steps`` steps under DeepSpeed ZeRO-2 with the optimizer offloaded; (per-step records, seconds)."""
    import lightning as L
    from lightning.pytorch.strategies import DeepSpeedStrategy

    recorder = StepRecorder()
    trainer = quiet_trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        strategy=DeepSpeedStrategy(stage=2, offload_optimizer=True),
        max_steps=args.steps,
        callbacks=[recorder],
    )
    L.seed_everything(0)
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return recorder, time.perf_counter() - fit_start


def report(
    args: argparse.Namespace, module: GRPOModule, recorder: StepRecorder, build_seconds: float, fit_seconds: float
) -> dict[str, Any]:
    """Print the set-up, every step and the medians (last line: machine-readable); return them as a summary."""
    steps = recorder.steps
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    n_params = sum(p.numel() for p in module.model.parameters())
    print(
        f"model: {n_params / 1e6:.1f}M parameters (InternVL3-1B shape, random weights), built in {build_seconds:.0f} s"
    )
    print(
        f"settings: {args.prompts} prompts x G={args.num_generations}, {args.completion_length} completion tokens, "
        f"beta 0.04, bf16, DeepSpeed ZeRO-2 + CPU optimizer offload, gradient checkpointing, "
        f"micro-batch {args.micro_batch_size}, {'unshared encoding (--plain)' if args.plain else 'shared encoding'}"
    )
    for i, step in enumerate(steps):
        print(
            f"step {i}: {step['train/step_time']:.2f} s (rollout {step['train/time/rollout']:.2f}, reference "
            f"{step['train/time/reference']:.2f}, update {step['train/time/update']:.2f}), "
            f"peak {step['peak_memory_gib']:.2f} GiB"
        )
    medians = recorder.medians(skip=1)
    step_s, rollout_tps, train_tps = (
        medians["train/step_time"],
        medians["rollout_tokens_per_s"],
        medians["training_tokens_per_s"],
    )
    peak = max(s["peak_memory_gib"] for s in steps)
    summary = {
        "device": torch.cuda.get_device_name(),
        "parameters_m": round(n_params / 1e6, 1),
        "peak_gpu_memory_gib": round(peak, 2),
        "seconds_per_step": round(step_s, 3),
        "rollout_tokens_per_s": round(rollout_tps, 1),
        "training_tokens_per_s": round(train_tps, 1),
        "fit_seconds": round(fit_seconds, 1),
        "steps": steps,
    }
    print(
        f"peak_gpu_memory_gib={peak:.2f} seconds_per_step={step_s:.2f} rollout_tokens_per_s={rollout_tps:.0f} "
        f"training_tokens_per_s={train_tps:.0f} (medians over steps 1..{len(steps) - 1}; fit {fit_seconds:.0f} s)"
    )
    return summary


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device; none is visible.", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    start = time.perf_counter()
    data_dir, model_dir = build_assets(args, workdir)
    build_seconds = time.perf_counter() - start
    module = build_module(args, model_dir)
    data = ViVQAXDataModule(
        train_file=str(data_dir / "ViVQA-X_train.json"),
        train_image_dir=str(data_dir / "train2014"),
        batch_size=args.prompts,
        max_image_side=None,
    )
    module.configure_model()
    if args.plain:
        module.adapter = type(module.adapter)(module.adapter.processor, shared_encoding=False)
    recorder, fit_seconds = fit(args, module, data)
    summary = report(args, module, recorder, build_seconds, fit_seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
