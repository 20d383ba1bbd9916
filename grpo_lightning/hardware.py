"""Configurations this machine cannot run, refused from the config before anything is built.

The recipe (``configs/internvl.yaml``) trains on a CUDA GPU with DeepSpeed ZeRO-2 and DeepSpeed's CPU Adam. On a
machine without CUDA each of those fails late and in a way that says little: Lightning's "No supported gpu backend
found!" or DeepSpeed's "only supported on CUDA" tracebacks once the Trainer is built, and ``DeepSpeedCPUAdam``
outside a DeepSpeed strategy (it expects the parameters DeepSpeed offloads to the CPU for it) ends the process with
a segmentation fault at the first optimizer step, leaving its dataloader workers behind. :func:`check_hardware`
reads the config's choices (the strategy, the accelerator, the optimizer's class path) and refuses each such
combination in one message that names the options to change.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from grpo_lightning.errors import ConfigError

#: The options that make the recipe's config run on a CPU (slowly: for trying it out with a small model).
CPU_TRY = (
    "--trainer.accelerator cpu --trainer.strategy auto --trainer.precision 32-true --model.dtype float32 "
    "--model.optimizer torch.optim.AdamW"
)

#: Packages whose optimizers run only on CUDA devices (DeepSpeed's run only inside a DeepSpeed strategy, which needs
#: CUDA here anyway).
_CUDA_ONLY_OPTIMIZER_PACKAGES = ("apex.",)


def check_hardware(
    strategy: Any, accelerator: Any, optimizer: Any, cuda_available: Callable[[], bool] | None = None
) -> None:
    """Refuse a strategy, accelerator and optimizer that this machine (or each other) cannot run.

    Args:
        strategy: ``trainer.strategy`` as configured: a name (``"auto"``, ``"deepspeed_stage_2"``), a class path
            with its arguments (``{"class_path": ...}``), or an instance.
        accelerator: ``trainer.accelerator`` as configured (a name or an instance).
        optimizer: ``model.optimizer`` as configured (a class path with its arguments, a class, or a callable).
        cuda_available: whether this machine has a usable CUDA device (None: ``torch.cuda.is_available``).

    Raises:
        ConfigError: naming the options, what is missing, and the options that run here.
    """
    deepspeed = _is_deepspeed(strategy)
    accelerator_name = str(accelerator).lower() if isinstance(accelerator, str) else None
    optimizer_path = _class_path(optimizer)
    deepspeed_optimizer = optimizer_path.startswith("deepspeed.") if optimizer_path else False
    if deepspeed_optimizer and not deepspeed:
        raise ConfigError(
            f"model.optimizer {optimizer_path} runs only inside a DeepSpeed strategy (it updates the parameters "
            f"DeepSpeed hands it; outside one it crashes the process), and trainer.strategy is {_shown(strategy)}. "
            "Use --model.optimizer torch.optim.AdamW, or a DeepSpeed strategy on a CUDA GPU."
        )
    if (cuda_available or torch.cuda.is_available)():
        return
    if accelerator_name in ("gpu", "cuda"):
        raise ConfigError(
            f"trainer.accelerator {accelerator_name} needs a CUDA GPU and this machine has none "
            f"(torch.cuda.is_available() is False). To try the config on the CPU: {CPU_TRY}."
        )
    if deepspeed:
        raise ConfigError(
            f"trainer.strategy {_shown(strategy)} needs a CUDA GPU (Lightning runs DeepSpeed on CUDA only) and this "
            f"machine has none. To try the config on the CPU: {CPU_TRY}."
        )
    if optimizer_path and optimizer_path.startswith(_CUDA_ONLY_OPTIMIZER_PACKAGES):
        raise ConfigError(
            f"model.optimizer {optimizer_path} runs only on a CUDA GPU and this machine has none; use "
            "--model.optimizer torch.optim.AdamW."
        )


def _is_deepspeed(strategy: Any) -> bool:
    if isinstance(strategy, str):
        return strategy.lower().startswith("deepspeed")
    path = _class_path(strategy)
    if path is None:
        return False
    try:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        module_name, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
        return isinstance(cls, type) and issubclass(cls, DeepSpeedStrategy)
    except (ImportError, AttributeError, ValueError):
        return "deepspeed" in path.lower()  # the parser reports a class path that does not import


def _class_path(value: Any) -> str | None:
    """The class path of a configured object: ``{"class_path": ...}`` (a dict or a jsonargparse Namespace), a class
    path string, a class, or an instance; None for a plain name or nothing."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if "." in value else None
    getter = getattr(value, "get", None)
    if callable(getter) and getter("class_path"):
        return str(getter("class_path"))
    cls = value if isinstance(value, type) else getattr(value, "func", None) or type(value)
    if isinstance(cls, type) and cls.__module__ not in ("builtins",):
        return f"{cls.__module__}.{cls.__qualname__}"
    return None


def _shown(strategy: Any) -> str:
    path = _class_path(strategy)
    return path.rpartition(".")[2] if path else str(strategy)


def core_list(text: str, option: str = "model.vllm.cpu_cores") -> list[int]:
    """The cores of a list such as ``0-3,8`` (``option``'s value), in order, each once.

    Raises:
        ConfigError: not such a list, or a core this machine does not have.
    """
    cores: list[int] = []
    try:
        for part in str(text).split(","):
            low, dash, high = part.strip().partition("-")
            first, last = int(low), int(high) if dash else int(low)
            if first < 0 or last < first:
                raise ValueError
            cores.extend(core for core in range(first, last + 1) if core not in cores)
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not a list of CPU cores: write core numbers and ranges separated by "
            "commas, such as 0 or 0-3,8."
        ) from None
    count = os.cpu_count() or 1
    if max(cores) >= count:
        raise ConfigError(f"{option} {text!r} names core {max(cores)}, and this machine has cores 0 to {count - 1}.")
    return cores


__all__ = ["CPU_TRY", "check_hardware", "core_list"]
