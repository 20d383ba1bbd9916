"""Rollout engines: what samples the completions of a training step (``model.rollout_engine``).

``hf`` (:class:`HFEngine`) is the policy's own ``generate``; ``vllm`` (:class:`~grpo_lightning.engines.vllm.VLLMEngine`)
runs vLLM in a process of its own under its own Python environment. The loss side is the same for both: log-probs
come from the policy, on the sampled token ids. ``correction`` holds the math of the engines' mismatch.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from grpo_lightning.engines.base import RolloutEngine, SampledCompletions, right_pad
from grpo_lightning.engines.correction import engine_logp_gap, truncated_importance_weights
from grpo_lightning.engines.hf import HFEngine
from grpo_lightning.engines.vllm import EngineError, VLLMEngine
from grpo_lightning.errors import ConfigError

#: ``model.rollout_engine`` values and their engines.
ENGINES: dict[str, type[RolloutEngine]] = {"hf": HFEngine, "vllm": VLLMEngine}


def build_engine(name: str, vllm_config: Any) -> RolloutEngine:
    """The engine named ``name``, not started."""
    if name == "vllm":
        return VLLMEngine(vllm_config)
    if name == "hf":
        return HFEngine()
    raise ConfigError(f"model.rollout_engine must be one of {', '.join(ENGINES)}, not {name!r}.")


class EngineShutdown(Callback):
    """Stops the module's rollout engine when a fit fails (Lightning calls no module hook then)."""

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        stop = getattr(pl_module, "stop_rollout_engine", None)
        if stop is not None:
            stop()


__all__ = [
    "ENGINES",
    "EngineError",
    "EngineShutdown",
    "HFEngine",
    "RolloutEngine",
    "SampledCompletions",
    "VLLMEngine",
    "build_engine",
    "engine_logp_gap",
    "right_pad",
    "truncated_importance_weights",
]
