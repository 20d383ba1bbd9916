"""Gradient accumulation per strategy: which one a trainer gets, and what it does around each backward and step.

The strategies themselves run in ``test_deepspeed.py`` and ``test_distributed.py`` (slow, several processes); here
stand-ins record the calls.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.nn.parallel import DistributedDataParallel

from grpo_lightning.accumulation import (
    DDPAccumulation,
    DeepSpeedAccumulation,
    GradientAccumulation,
    gradient_accumulation,
)


class _Engine:
    def __init__(self):
        self.boundaries: list[bool] = []

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        self.boundaries.append(boundary)


class _DeepSpeed(DeepSpeedStrategy):
    """A DeepSpeedStrategy without DeepSpeed: its config and engine only."""

    deepspeed_engine = None  # a plain attribute instead of the strategy's property

    def __init__(self, config: dict):
        self.config = config
        self.deepspeed_engine = _Engine()


class _DDPWrapped(DistributedDataParallel):
    """A DDP-wrapped model without a process group: ``no_sync`` only."""

    no_sync_context = contextlib.nullcontext("no_sync")

    def __init__(self):  # no process group, no module
        pass

    def no_sync(self):
        return self.no_sync_context


class _Module:
    """Stands in for a LightningModule attached to a trainer of two processes."""

    def __init__(self, strategy=None, model=None):
        # all_reduce: in place, the sum over two processes that hold the same value
        strategy = strategy or SimpleNamespace(reduce=lambda value, reduce_op: value.mul_(2))
        self.trainer = SimpleNamespace(strategy=strategy, model=model, world_size=2)
        self.clipped: list[tuple] = []

    def clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm):
        self.clipped.append((optimizer, gradient_clip_val, gradient_clip_algorithm))


def test_one_process_accumulates_locally_and_clips_with_lightning():
    module = _Module(model=torch.nn.Linear(1, 1))
    accumulation = gradient_accumulation(module)
    assert type(accumulation) is GradientAccumulation
    assert all(isinstance(accumulation.backward_context(last), contextlib.nullcontext) for last in (False, True))
    accumulation.clip("optimizer", 0.5)
    accumulation.clip("optimizer", None)
    assert module.clipped == [("optimizer", 0.5, "norm")]


def test_ddp_reduces_once_at_the_last_micro_batch():
    module = _Module(model=_DDPWrapped())
    accumulation = gradient_accumulation(module)
    assert type(accumulation) is DDPAccumulation
    assert accumulation.backward_context(last=False) is _DDPWrapped.no_sync_context
    assert isinstance(accumulation.backward_context(last=True), contextlib.nullcontext)
    accumulation.clip("optimizer", 1.0)
    assert module.clipped == [("optimizer", 1.0, "norm")]


@pytest.mark.parametrize(
    ("config", "max_grad_norm", "clipping"), [({}, 0.5, 0.5), ({}, None, None), ({"gradient_clipping": 2.0}, 0.5, 2.0)]
)
def test_deepspeed_sets_its_boundary_and_clips_in_its_own_step(config, max_grad_norm, clipping):
    strategy = _DeepSpeed(dict(config))
    module = _Module(strategy, model=_DDPWrapped())  # the strategy decides, not the wrapper
    accumulation = gradient_accumulation(module)
    assert type(accumulation) is DeepSpeedAccumulation
    accumulation.configure(max_grad_norm)
    assert strategy.config.get("gradient_clipping") == clipping  # a value set in the config is kept
    for last in (False, False, True):
        assert isinstance(accumulation.backward_context(last), contextlib.nullcontext)
    assert strategy.deepspeed_engine.boundaries == [False, False, True]
    accumulation.clip("optimizer", max_grad_norm)
    assert module.clipped == []


def test_mean_over_processes_is_the_sum_over_processes_divided_by_their_number():
    count = torch.tensor(7.0)
    assert torch.equal(GradientAccumulation(_Module()).mean_over_processes(count), torch.tensor(7.0))
    assert torch.equal(count, torch.tensor(7.0)), "the value given is not reduced in place"
