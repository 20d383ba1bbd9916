"""DeepSpeed on CPU processes, for tests: a strategy that lets Lightning run ZeRO on gloo, and a 2-process run.

The recipe (``configs/internvl.yaml``) trains with Lightning's ``DeepSpeedStrategy`` (ZeRO stage 2, optimizer
offloaded to the CPU). DeepSpeed has a CPU accelerator (``DS_ACCELERATOR=cpu``, gloo collectives), so the same
strategy can run on CPU processes; :class:`CPUDeepSpeedStrategy` removes the three checks that stand in the way.

``python -m tests.deepspeed_cpu --strategy deepspeed|ddp --out DIR ...`` trains the tiny InternVL for a few steps
on 2 CPU processes (Lightning starts the second one) and writes, under ``DIR``:

* ``rollouts.rank{R}.jsonl``: the prompt ids and completions each process had, one line per step;
* ``weights.step{N}.pt``: the policy's weights before the first step (N = 0) and after each step (rank 0);
* ``gradients.step{N}.rank{R}.pt`` (``--optimizer sgd``): the gradient each process's optimizer applied at step N,
  flattened (:class:`RecordingSGD`);
* ``checkpoints/``: ``step=N.ckpt`` (a folder under DeepSpeed) every ``--checkpoint-every`` steps and at the end,
  and ``last.ckpt``, a link to the newest, as the recipe's callback writes them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from grpo_lightning.callbacks import StepCheckpoint
from grpo_lightning.config import LoggingConfig, LossConfig, RewardConfig, SamplingConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule
from tests.helpers import ROOT, quiet_trainer

RECIPE = ROOT / "configs" / "internvl.yaml"
#: Environment variable naming the file prefix that :func:`length_reward` appends the sampled completions to.
ROLLOUTS_ENV = "GRPO_TEST_ROLLOUTS"


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy on CPU processes (gloo), for tests of the DeepSpeed code path without a GPU.

    Run with ``DS_ACCELERATOR=cpu`` in the environment (before ``deepspeed`` is imported) and
    ``Trainer(accelerator="cpu", devices=N)``. The product never uses this class. Why each override exists:

    * Lightning's ``DeepSpeedStrategy.setup_environment`` raises "The DeepSpeed strategy is only supported on
      CUDA GPUs" for any other accelerator; this calls the method it extends (``DDPStrategy``'s) directly.
    * CPU devices have no index (``torch.device("cpu")``), so Lightning's device check raises "The selected device
      indices [None, None] don't match the local rank values of processes", and ``deepspeed.initialize``, which
      gets ``device_rank=root_device.index``, fails on ``None >= 0``. The devices are renamed ``cpu:0``,
      ``cpu:1``...: tensors moved there are ordinary CPU tensors, and DeepSpeed's CPU accelerator ignores the index.
    """

    def setup_environment(self) -> None:
        self.parallel_devices = [torch.device("cpu", index) for index in range(len(self.parallel_devices))]
        DDPStrategy.setup_environment(self)


def recipe_strategy_args() -> dict:
    """The DeepSpeedStrategy arguments of the recipe (``stage: 2``, ``offload_optimizer: true``)."""
    strategy = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy", strategy
    return dict(strategy["init_args"])


def length_reward(completions, solution, id, **kwargs):  # noqa: A002 - `id` is the batch field's name
    """A dense reward (completions of different lengths score differently); records what this process sampled."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with open(f"{os.environ[ROLLOUTS_ENV]}.rank{rank}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"ids": sorted(set(id)), "completions": list(completions)}) + "\n")
    return [len(text) / 50 for text in completions]


class RecordingSGD(torch.optim.SGD):
    """Plain SGD (no momentum, no weight decay) that saves the gradient it applies at every step.

    What the optimizer is handed is the gradient after every reduction and clipping: under DDP each process holds
    the whole averaged gradient of every parameter; under DeepSpeed ZeRO-2 the optimizer steps on this process's
    partition of the flattened fp32 parameters (in parameter order, padded at the end), so the processes' files put
    end to end, without the padding, are the same vector.
    """

    def __init__(self, params, lr: float, out_dir: Path):
        super().__init__(params, lr=lr)
        self.out_dir = out_dir
        self.steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        self.steps += 1
        grads = [p.grad.flatten() for group in self.param_groups for p in group["params"] if p.grad is not None]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.save(torch.cat(grads).clone(), self.out_dir / f"gradients.step{self.steps}.rank{rank}.pt")
        return super().step(closure)


class WeightRecorder(L.Callback):
    """Rank 0 saves the policy's parameters before the first optimizer step and after every step (tied weights once,
    in the order the optimizer gets them)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._save(trainer, pl_module)

    def _save(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            weights = {name: value.detach().clone() for name, value in pl_module.model.named_parameters()}
            torch.save(weights, self.out_dir / f"weights.step{trainer.global_step}.pt")


def optimizer_factory(name: str, lr: float, out_dir: Path):
    """``sgd``: :class:`RecordingSGD`; ``adamw``: torch's AdamW; ``cpu_adam``: DeepSpeedCPUAdam, the recipe's
    optimizer (the same update as AdamW, in C++).

    Both Adams take ``eps=1e-6``: Adam divides by ``|g| + eps``, so where a gradient is all but zero (the key
    projection's bias, whose gradient the softmax cancels; embeddings of tokens that were not sampled) a difference
    of 1e-12 between two summation orders moves a weight by ``lr * 1e-12 / eps``, 1e-7 with the default 1e-8.
    """
    if name == "sgd":
        return lambda params: RecordingSGD(params, lr=lr, out_dir=out_dir)
    if name == "adamw":
        return lambda params: torch.optim.AdamW(params, lr=lr, eps=1e-6, weight_decay=0.0)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return lambda params: DeepSpeedCPUAdam(params, lr=lr, eps=1e-6, weight_decay=0.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.deepspeed_cpu")
    parser.add_argument("--strategy", choices=("deepspeed", "ddp"), required=True)
    parser.add_argument("--optimizer", choices=("sgd", "adamw", "cpu_adam"), default="sgd")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--model", required=True)
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--train-image-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ[ROLLOUTS_ENV] = str(args.out / "rollouts")

    if args.strategy == "deepspeed":
        strategy = CPUDeepSpeedStrategy(**recipe_strategy_args())
        if args.optimizer != "cpu_adam":
            # DeepSpeed refuses another optimizer with ZeRO-Offload unless told that it is meant.
            strategy.config["zero_force_ds_cpu_optimizer"] = False
    else:
        strategy = DDPStrategy()
    L.seed_everything(0)
    module = GRPOModule(
        model_name_or_path=args.model,
        rewards=RewardConfig(funcs=["tests.deepspeed_cpu:length_reward"]),
        sampling=SamplingConfig(num_generations=4, max_completion_length=8),
        # 2 prompts x 4 completions = 8 sequences per process, in micro-batches of 3, 3 and 2
        loss=LossConfig(beta=0.04, micro_batch_size=3, max_grad_norm=args.max_grad_norm),
        optimizer=optimizer_factory(args.optimizer, args.lr, args.out),
        logging=LoggingConfig(completions_every_n_steps=0),
    )
    trainer = quiet_trainer(
        devices=2,
        strategy=strategy,
        precision="32-true",
        max_steps=args.steps,
        callbacks=[
            WeightRecorder(args.out),
            StepCheckpoint(
                every_n_train_steps=args.checkpoint_every, save_last="link", dirpath=str(args.out / "checkpoints")
            ),
        ],
        enable_checkpointing=True,
    )
    # 4 prompts per step over 2 processes: 2 prompts each
    data = ViVQAXDataModule(
        train_file=args.train_file, train_image_dir=args.train_image_dir, batch_size=4, shuffle=True, seed=3
    )
    trainer.fit(module, datamodule=data, ckpt_path=args.ckpt_path)


if __name__ == "__main__":
    main()
