"""The process's global random streams: seeding one process apart, and saving and restoring them in checkpoints.

Sampling draws from the global random number generators; a resumed run continues their streams (Lightning saves
none), and under data parallelism every process has streams of its own.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from grpo_lightning.distributed import every_process


def seed_process_streams(seed: int) -> None:
    """Seed torch's (CPU and CUDA), NumPy's and Python's global random streams of this process."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def collect_process_streams(world_size: int) -> list[dict[str, Any]]:
    """Every process's random states, in rank order (a collective under data parallelism: every process calls it)."""
    return every_process(_rng_states_to_tensors(_collect_rng_states()), world_size)


def restore_process_streams(saved: list[dict[str, Any]] | dict[str, Any], world_size: int, rank: int) -> bool:
    """Restore this process's random states from a checkpoint's; True when every process got its own back.

    Another number of processes than the run that saved: the first process's stream is restored (the others get
    their own later, and the samples then differ from an uninterrupted run's).
    """
    per_process = saved if isinstance(saved, list) else [saved]
    restored = len(per_process) == world_size
    _set_rng_states(_rng_states_from_tensors(per_process[rank if restored else 0]))
    return restored


def _rng_states_to_tensors(states: dict[str, Any]) -> dict[str, Any]:
    """NumPy's RNG state holds an ndarray, which ``torch.load(weights_only=True)`` refuses: store it as a tensor."""
    kind, keys, position, has_gauss, cached = states["numpy"]
    return {**states, "numpy": (kind, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached)}


def _rng_states_from_tensors(states: dict[str, Any]) -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = states["numpy"]
    return {**states, "numpy": (kind, keys.numpy().astype("uint32"), position, has_gauss, cached)}
