"""What the processes of a data-parallel run exchange besides tensors: Python objects, gathered in rank order."""

from __future__ import annotations

from typing import TypeVar

import torch

Value = TypeVar("Value")


def every_process(value: Value, world_size: int) -> list[Value]:
    """``value`` of every process, in rank order; ``[value]`` with one process or without a process group. A
    collective under data parallelism: every process calls it."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Value] = [None] * world_size  # type: ignore[list-item]
        torch.distributed.all_gather_object(gathered, value)
        return gathered
    return [value]


__all__ = ["every_process"]
