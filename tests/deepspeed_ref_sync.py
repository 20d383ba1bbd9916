"""The reference sync under DeepSpeed ZeRO-2 with CPU offload on 2 CPU processes (``tests/test_ref_sync_deepspeed.py``).

``python -m tests.deepspeed_ref_sync --out DIR --model M --train-file F --train-image-dir D`` trains the tiny InternVL
for 3 steps with ``loss.ref_sync_steps: 2`` and writes, for each rank R and each step N, the policy's weights after
the step (``policy.rank{R}.step{N}.pt``) and the reference's after the step's sync, if any (``reference...``), and
the reference's weights before the first step (``reference.rank{R}.step0.pt``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch

from grpo_lightning.config import LoggingConfig, LossConfig, RewardConfig, SamplingConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule
from tests.deepspeed_cpu import ROLLOUTS_ENV, CPUDeepSpeedStrategy, recipe_strategy_args
from tests.helpers import quiet_trainer

SYNC_EVERY, ALPHA, STEPS = 2, 0.5, 3


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


class WeightRecorder(L.Callback):
    """The policy after each step and the reference after each step's sync (the module's own hook runs after the
    callbacks', so the reference is read at the next batch's start, and at the end of training)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def _save(self, what: str, state: dict, trainer) -> None:
        torch.save(state, self.out_dir / f"{what}.rank{trainer.global_rank}.step{trainer.global_step}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._save("reference", _state(pl_module.reference.model), trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._save("policy", _state(pl_module.model), trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save("reference", _state(pl_module.reference.model), trainer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.deepspeed_ref_sync")
    for name in ("--model", "--train-file", "--train-image-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ[ROLLOUTS_ENV] = str(args.out / "rollouts")
    strategy = CPUDeepSpeedStrategy(**recipe_strategy_args())
    strategy.config["zero_force_ds_cpu_optimizer"] = False  # plain SGD with ZeRO-Offload, on purpose
    L.seed_everything(0)
    module = GRPOModule(
        model_name_or_path=args.model,
        rewards=RewardConfig(funcs=["tests.deepspeed_cpu:length_reward"]),
        sampling=SamplingConfig(num_generations=4, max_completion_length=8),
        loss=LossConfig(beta=0.04, micro_batch_size=3, ref_sync_steps=SYNC_EVERY, ref_sync_alpha=ALPHA),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        logging=LoggingConfig(completions_every_n_steps=0),
    )
    trainer = quiet_trainer(
        devices=2, strategy=strategy, precision="32-true", max_steps=STEPS, callbacks=[WeightRecorder(args.out)]
    )
    data = ViVQAXDataModule(
        train_file=args.train_file, train_image_dir=args.train_image_dir, batch_size=4, shuffle=True, seed=3
    )
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main()
