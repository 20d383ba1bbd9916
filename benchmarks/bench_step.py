"""Seconds per GRPO step on the tiny offline InternVL, and where the time goes.

    python benchmarks/bench_step.py [--assets assets/demo] [--steps 12] [--num-generations 8]

Runs the demo setting (4 prompts x G completions of 24 tokens, beta 0.04) for a few steps after a warm-up
and prints, per phase, the median seconds per step: rollout (sampling), reward, reference log-probs, and
the policy loss with backward and optimizer step. The last line is machine-readable. Ratios between
phases are what to compare across machines; absolute figures on a shared 2-core box are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from grpo_lightning import demo_assets  # noqa: E402
from grpo_lightning.algorithms import compute_group_advantages  # noqa: E402
from grpo_lightning.data import ViVQAXDataModule  # noqa: E402
from grpo_lightning.module import GRPOModule  # noqa: E402


class TimedGRPOModule(GRPOModule):
    """The same training step, with a clock around each stage."""

    timings: list[dict[str, float]]

    def training_step(self, batch, batch_idx):
        hp, t = self.hparams, {}
        start = time.perf_counter()
        rollout = self.generate_rollout(batch, hp.num_generations, do_sample=True)
        t["rollout"] = time.perf_counter() - start
        mark = time.perf_counter()
        rewards, _ = self.score(rollout, batch)
        advantages = compute_group_advantages(rewards, hp.num_generations, hp.scale_rewards)
        t["reward"] = time.perf_counter() - mark
        mark = time.perf_counter()
        ref_logps = self.completion_logps(self.reference_model, rollout) if hp.beta > 0 else None
        t["reference"] = time.perf_counter() - mark
        mark = time.perf_counter()
        stats = self.optimize(rollout, advantages, ref_logps, None)
        t["policy_update"] = time.perf_counter() - mark
        t["step"] = time.perf_counter() - start
        t["completion_tokens"] = float(rollout.completion_mask.sum())
        self.timings.append(t)
        return stats["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", default="assets/demo", help="built by python -m grpo_lightning.demo_assets")
    parser.add_argument("--steps", type=int, default=12, help="measured steps (after 3 warm-up steps)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=24)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    args = parser.parse_args()
    root = Path(args.assets)
    if not demo_assets.is_complete(root):
        demo_assets.build_demo_assets(root)
    warmup = 3
    module = TimedGRPOModule(
        model_name_or_path=str(demo_assets.internvl_path(root)),
        reward_funcs=["tag_count", "format"],
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        micro_batch_size=args.micro_batch_size,
        log_completions_every_n_steps=0,
    )
    module.timings = []
    data = ViVQAXDataModule(
        train_file=str(demo_assets.split_json_path(root, "train")),
        train_image_dir=str(demo_assets.image_dir(root, "train")),
        batch_size=4,
    )
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    measured = module.timings[warmup:]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(measured)} measured steps")
    print(f"prompts/step 4, G {args.num_generations}, completion length <= {args.max_completion_length}")
    medians = {key: statistics.median(t[key] for t in measured) for key in measured[0]}
    for key in ("rollout", "reward", "reference", "policy_update", "step"):
        share = medians[key] / medians["step"]
        print(f"{key:>14}: {medians[key] * 1000:8.1f} ms  ({share:5.1%} of the step)")
    tokens_per_s = medians["completion_tokens"] / medians["step"]
    print(
        f"step_s={medians['step']:.4f} rollout_share={medians['rollout'] / medians['step']:.3f} "
        f"completion_tokens_per_s={tokens_per_s:.1f}"
    )


if __name__ == "__main__":
    main()
