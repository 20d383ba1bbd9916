"""Rollout engines: what samples the completions of a training step (``model.rollout_engine``).

``hf`` (:class:`HFEngine`) is the policy's own ``generate``; ``vllm`` (:class:`~grpo_lightning.engines.vllm.VLLMEngine`)
runs vLLM in a process of its own under its own Python environment. The loss side is the same for both: log-probs
come from the policy, on the sampled token ids. ``correction`` holds the math of the engines' mismatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import Callback

from grpo_lightning.engines.base import RolloutEngine, SampledCompletions, right_pad
from grpo_lightning.engines.correction import IMPORTANCE_SAMPLING_MODES, engine_logp_gap, truncated_importance_weights
from grpo_lightning.engines.hf import HFEngine
from grpo_lightning.engines.vllm import EngineError, VLLMEngine
from grpo_lightning.registry import Registry

if TYPE_CHECKING:  # the config checks its options against this package's registries: no import back at run time
    from grpo_lightning.config import VLLMConfig

#: ``model.rollout_engine`` values and their engines.
ENGINES: Registry[type[RolloutEngine]] = Registry("model.rollout_engine")
ENGINES.register("hf", HFEngine)
ENGINES.register("vllm", VLLMEngine)


def build_engine(name: str, vllm: VLLMConfig) -> RolloutEngine:
    """The engine named ``name`` (:data:`ENGINES`) for the module's ``model.vllm`` options, not started.

    Raises:
        ConfigError: an unknown name, with the registered ones.
    """
    return ENGINES[name].from_options(vllm)


class EngineShutdown(Callback):
    """Stops a rollout engine when a fit fails (Lightning calls no module hook then).

    Args:
        engine: the engine to stop.
    """

    def __init__(self, engine: RolloutEngine):
        self.engine = engine

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.engine.stop()


__all__ = [
    "ENGINES",
    "IMPORTANCE_SAMPLING_MODES",
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
