"""The three stages of a GRPO training step, each a room of its own around :class:`~grpo_lightning.module.GRPOModule`:

* :class:`~grpo_lightning.stages.rollout.RolloutStage`: the rollout engine (built, checked and started for a fit;
  the module's teardown stops it), the rounds of sampling (dynamic sampling's refills), the scoring with the rewards;
  with ``sampling.async_rollouts``, its :class:`~grpo_lightning.stages.async_rollouts.AsyncRollouts`: the rollouts
  sampled ahead of their steps, the weights that sampled them and their part of checkpoints;
* :class:`~grpo_lightning.stages.update.PolicyUpdate`: advantages, the log-prob and entropy passes, the loss over
  micro-batches with the typed ``LossConfig``, the backward passes and optimizer steps, and the gathers across
  processes they need;
* :class:`~grpo_lightning.stages.reference.ReferencePolicy`: the KL reference (a frozen copy, or the LoRA policy with
  its adapters off), its TR-DPO sync and its part of checkpoints.

Each stage holds its own typed options and reaches the LightningModule only for what the trainer gives it (the
model, the device, the collectives, the optimizer); the module's hooks call the stages, so the order of
everything is visible in the module.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def timed(device: torch.device, stage: str, seconds: dict[str, float]) -> Iterator[None]:
    """Wall time of a stage, added to ``seconds[stage]``, with the GPU's queue drained at both ends so the time is
    the stage's own."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda device: None)
    synchronize(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


__all__ = ["timed"]
