"""Rollout and step time of the two rollout engines: the policy's own sampler (``hf``) against vLLM (``vllm``).

    python -m benchmarks.bench_vllm_engine [--steps 6] [--num-generations 8] [--max-completion-length 64]
    python -m benchmarks.bench_vllm_engine --shape demo       # the demo's tiny InternVL instead

Trains the CPU benchmarks' InternVL (``grpo_demo.CPU_MODEL_SHAPE``: 43.5M parameters, one 448-px tile, 256 image
tokens per prompt) on the demo data, 4 prompts x G completions per step, a few steps with each engine after warm-up
steps, and prints per engine the median seconds per step of the rollout (``train/time/rollout``; with ``vllm`` it
holds the weight update and the no-grad policy pass that measures the engines' log-prob gap, both also printed
alone), of the whole step, and the engine's start-up. Completion lengths are fixed (``min_completion_length`` =
``max_completion_length``), so both engines sample the same number of tokens. The vLLM engine runs under
``--vllm-python`` (``make vllm-env``). The last line is machine-readable. On a shared 2-core CPU the figures are noisy;
vLLM's gain is expected on a GPU, not here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file, not with -m: import from the repository as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchmarks  # noqa: F401  (sets the Hugging Face libraries offline before anything loads them)

import lightning as L
import torch

import grpo_demo
from benchmarks.common import load_average, quiet_trainer, work_directory
from benchmarks.profiling import StepRecorder
from grpo_lightning.config import LoggingConfig, LossConfig, RewardConfig, SamplingConfig, VLLMConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule

#: What the benchmark reads per step besides ``StepRecorder``'s timings.
ENGINE_KEYS = ("train/time/weight_sync", "train/engine/logp_diff")


class EngineRecorder(StepRecorder):
    """``StepRecorder`` plus the vLLM engine's own timings, and the engine's start-up (``configure_model`` to the
    first step)."""

    def setup(self, trainer, pl_module, stage) -> None:  # before configure_model, which starts the engine
        self.fit_start = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self.startup = time.perf_counter() - self.fit_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        metrics = trainer.callback_metrics
        self.steps[-1].update({key: float(metrics[key]) for key in ENGINE_KEYS if key in metrics})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("cpu", "demo"), default="cpu", help="CPU_MODEL_SHAPE or the demo model")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per engine (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--work-dir", default=None, help="where the model and data are built (default: a temp folder)")
    return parser.parse_args()


def run(engine: str, model_dir: Path, data_root: Path, args: argparse.Namespace) -> EngineRecorder:
    length = args.max_completion_length
    module = GRPOModule(
        model_name_or_path=str(model_dir),
        rewards=RewardConfig(funcs=["tag_count", "format"]),
        sampling=SamplingConfig(
            num_generations=args.num_generations, max_completion_length=length, min_completion_length=length
        ),
        loss=LossConfig(beta=0.04, micro_batch_size=16),
        logging=LoggingConfig(completions_every_n_steps=0, rollouts_every_n_steps=0),
        rollout_engine=engine,
        vllm=VLLMConfig(python=args.vllm_python, kv_cache_gib=args.kv_cache_gib),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5),
    )
    recorder = EngineRecorder()
    data = ViVQAXDataModule(
        train_file=str(grpo_demo.split_json_path(data_root, "train")),
        train_image_dir=str(grpo_demo.image_dir(data_root, "train")),
        batch_size=4,
    )
    L.seed_everything(0)
    trainer = quiet_trainer(accelerator="cpu", max_steps=args.warmup + args.steps, callbacks=[recorder])
    trainer.fit(module, datamodule=data)
    return recorder


def main() -> None:
    args = parse_args()
    with work_directory(args.work_dir, "bench-vllm-") as work:
        data_root = work / "demo"
        if not grpo_demo.is_complete(data_root):
            grpo_demo.build_demo_assets(data_root)
        model_dir = grpo_demo.internvl_path(data_root)
        if args.shape == "cpu":
            model_dir = work / "cpu-internvl"
            if not (model_dir / "config.json").exists():
                grpo_demo.build_tiny_internvl(model_dir, **grpo_demo.CPU_MODEL_SHAPE)
        results = {engine: run(engine, model_dir, data_root, args) for engine in ("hf", "vllm")}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_average()}; "
        f"model {args.shape}, 4 prompts x G {args.num_generations} x {args.max_completion_length} tokens, "
        f"{args.steps} measured steps per engine"
    )
    medians = {engine: recorder.medians(skip=args.warmup) for engine, recorder in results.items()}
    for engine, values in medians.items():
        line = (
            f"{engine:>5}: rollout {values['train/time/rollout']:7.3f} s  step {values['train/step_time']:7.3f} s  "
            f"start-up {results[engine].startup:6.1f} s"
        )
        if engine == "vllm":
            line += (
                f"  (weight sync {values['train/time/weight_sync']:.3f} s, "
                f"log-prob gap {values['train/engine/logp_diff']:.2e})"
            )
        print(line)
    hf, vllm = medians["hf"], medians["vllm"]
    sampling_only = vllm["train/time/rollout"] - vllm["train/time/weight_sync"]
    print(
        f"hf_rollout_s={hf['train/time/rollout']:.4f} vllm_rollout_s={vllm['train/time/rollout']:.4f} "
        f"vllm_sampling_s={sampling_only:.4f} hf_step_s={hf['train/step_time']:.4f} "
        f"vllm_step_s={vllm['train/step_time']:.4f} weight_sync_s={vllm['train/time/weight_sync']:.4f} "
        f"vllm_startup_s={results['vllm'].startup:.1f}"
    )


if __name__ == "__main__":
    main()
