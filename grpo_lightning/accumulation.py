"""Gradient accumulation, synchronisation and clipping, for each Lightning strategy the trainer runs under.

One policy update accumulates the gradients of several micro-batches and steps the optimizer once. The
strategies differ in how the gradients of the processes meet, and in who clips them:

* one process: gradients add up in ``.grad``; Lightning's ``clip_gradients`` clips them before the step;
* DDP: each backward but the last runs under ``no_sync``, so the gradient is all-reduced once per step, not
  once per micro-batch; clipping as with one process;
* DeepSpeed: the engine reduces at its gradient-accumulation boundary, set at the last micro-batch (its configured
  ``gradient_accumulation_steps`` stays 1: the loss is already normalised over the whole batch), and clips inside
  its own ``step``, so ``max_grad_norm`` goes into its config before the engine is built.

:func:`gradient_accumulation` picks the one that fits the trainer; the training loop calls the same three methods
whatever it runs under.
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DDPAccumulation", "DeepSpeedAccumulation", "GradientAccumulation", "gradient_accumulation"]


class GradientAccumulation:
    """One process (or any strategy that needs nothing more): accumulate in ``.grad``, clip with Lightning.

    Args:
        module: the LightningModule being trained, attached to its trainer.
    """

    def __init__(self, module: L.LightningModule) -> None:
        self.module = module

    def configure(self, max_grad_norm: float | None) -> None:
        """Called from ``LightningModule.setup``, before the strategy wraps the model."""

    def backward_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's backward; ``last``: the final micro-batch before the optimizer step."""
        return contextlib.nullcontext()

    def clip(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> None:
        """Clip the accumulated gradient's norm to ``max_grad_norm`` (None: leave it) before the step."""
        if max_grad_norm is not None:
            self.module.clip_gradients(optimizer, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")

    def mean_over_processes(self, value: Tensor) -> Tensor:
        """Sum of ``value`` over the processes, divided by their number.

        A loss normalised by a count of the global batch needs this count divided by the number of processes,
        because the data-parallel strategies average the gradients of the processes, where the normaliser wants
        them summed.
        """
        trainer = self.module.trainer
        return trainer.strategy.reduce(value.clone(), reduce_op="sum") / trainer.world_size


class DDPAccumulation(GradientAccumulation):
    """DDP: all-reduce the gradient once per optimizer step, at the last micro-batch's backward."""

    def backward_context(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.module.trainer.model.no_sync()


class DeepSpeedAccumulation(GradientAccumulation):
    """DeepSpeed: the engine's accumulation boundary at the last micro-batch; the engine clips in its step."""

    def configure(self, max_grad_norm: float | None) -> None:
        # Lightning refuses gradient clipping with manual optimisation: DeepSpeed's config carries it instead.
        if max_grad_norm is not None:
            self.module.trainer.strategy.config.setdefault("gradient_clipping", max_grad_norm)

    def backward_context(self, last: bool) -> contextlib.AbstractContextManager:
        self.module.trainer.strategy.deepspeed_engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def clip(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> None:
        """Nothing to do: the engine clips to its ``gradient_clipping`` inside ``step``."""


def gradient_accumulation(module: L.LightningModule) -> GradientAccumulation:
    """The accumulation of the strategy ``module``'s trainer runs under (ask again after the model is wrapped)."""
    trainer = module.trainer
    if isinstance(trainer.strategy, DeepSpeedStrategy):
        return DeepSpeedAccumulation(module)
    if isinstance(trainer.model, DistributedDataParallel):
        return DDPAccumulation(module)
    return GradientAccumulation(module)
