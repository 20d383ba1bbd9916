"""The rollout-engine seam: what samples a rollout's completions for :class:`~grpo_lightning.module.GRPOModule`.

An engine gets the prompts (tokenised, with their images) and returns completion token ids; the loss side does not
depend on it: policy, reference and old-policy log-probs are always computed by the trained model on the sampled ids.
Two engines: ``hf`` (:class:`~grpo_lightning.engines.hf.HFEngine`, the policy's own ``generate``) and ``vllm``
(:class:`~grpo_lightning.engines.vllm.VLLMEngine`, vLLM in a process of its own, kept in step with the policy's
weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from grpo_lightning.adapters import PromptBatch, VLMAdapter
    from grpo_lightning.config import SamplingConfig, VLLMConfig


@dataclass
class SampledCompletions:
    """What an engine sampled, in the order of the ``prompt_index`` it was given.

    Attributes:
        completion_ids: (N, C) token ids, right-padded with the tokenizer's pad id after the first EOS.
        logps: (N, C) float32 log-probs of the sampled tokens under the engine's own distribution (0 on padding), or
            None when the engine is the policy itself.
        engine_seconds: how long the engine took to sample them (None: the engine is the policy itself).
    """

    completion_ids: Tensor
    logps: Tensor | None = None
    engine_seconds: float | None = None


class RolloutEngine:
    """Samples completions. ``start`` once before the first rollout of a fit, ``stop`` at its end (or failure).

    An engine owns its facts: which options of a fit it cannot work with (:meth:`check_fit`), and whether its weights
    are those of the policy's current optimizer step (:meth:`bring_weights_to`); the module calls the seam and never
    asks which engine it has.
    """

    #: The ``model.rollout_engine`` value that selects this engine.
    name: str = ""
    #: Whether the engine samples with weights of its own, which must follow the policy's after each optimizer step
    #: (False: it samples with the policy itself).
    holds_own_weights: bool = False
    #: The optimizer step whose weights the engine holds (None: none yet, or not since it started).
    _weights_step: int | None = None

    @classmethod
    def from_options(cls, vllm: VLLMConfig) -> RolloutEngine:
        """The engine for a module's options (``model.vllm``: the options of engines that run beside the policy)."""
        return cls()

    def check_fit(self, strategy: Any, sampling: SamplingConfig) -> None:
        """Refuse (``ConfigError``) what this engine cannot do under ``strategy`` with ``sampling``; warn of the
        options it ignores. Called before :meth:`start`."""

    def bring_weights_to(self, model: torch.nn.Module, step: int, wait: bool = True) -> dict[str, float] | None:
        """Make the engine sample with ``model``'s weights of optimizer step ``step``: synced once per step. ``wait``
        False: the requests sent from now on sample with them, and the trainer does not wait for the engine to load
        them (:meth:`post_weights`).

        Returns:
            What the sync measured (``seconds``), or None when nothing was synced (the weights were the step's
            already, or the engine samples with the policy itself).
        """
        if not self.holds_own_weights or self._weights_step == step:
            return None
        measured = self.sync_weights(model) if wait else self.post_weights(model)
        self._weights_step = step
        return measured

    def start(
        self, model: torch.nn.Module, adapter: VLMAdapter, weights_dtype: str, device: torch.device | None = None
    ) -> None:
        """Get ready to sample from ``model`` (the policy as it trains: frozen parts and LoRA in place) on ``device``
        (the trainer's; None: the model's)."""

    def stop(self) -> None:
        """Release what ``start`` took; safe to call more than once, and without a ``start``."""

    @property
    def running(self) -> bool:
        """Whether ``start`` ran and ``stop`` did not."""
        return False

    def sync_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """Bring the engine's weights to ``model``'s; returns what it measured (empty when nothing is copied)."""
        return {}

    def post_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """:meth:`sync_weights`, for the requests sent from now on, without waiting for the engine to load them."""
        return self.sync_weights(model)

    def idle_seconds(self) -> float:
        """Seconds the engine waited for requests since the last call (0 for an engine that is the policy)."""
        return 0.0

    def sample(
        self,
        model: torch.nn.Module,
        adapter: VLMAdapter,
        prompts: PromptBatch,
        images: list[Any],
        prompt_index: list[int],
        sampling: SamplingConfig,
        do_sample: bool,
    ) -> SampledCompletions:
        """One completion per entry of ``prompt_index`` (an index into ``prompts`` and ``images``)."""
        raise NotImplementedError

    #: Whether :meth:`submit` returns before the completions are sampled (the engine samples while the trainer works:
    #: ``sampling.async_rollouts``); False: it samples them then and there.
    samples_in_background: bool = False

    def submit(
        self,
        model: torch.nn.Module,
        adapter: VLMAdapter,
        prompts: PromptBatch,
        images: list[Any],
        prompt_index: list[int],
        sampling: SamplingConfig,
        do_sample: bool,
        seeds: list[int] | None = None,
    ) -> Any:
        """Ask for :meth:`sample`'s completions; :meth:`collect` gives them. ``seeds``: one per distinct prompt, in
        order of first appearance (None: drawn from torch's global generator now), for engines that seed requests.
        This engine samples them now."""
        return self.sample(model, adapter, prompts, images, prompt_index, sampling, do_sample)

    def collect(self, pending: Any) -> SampledCompletions:
        """The completions :meth:`submit` asked for (waiting for them)."""
        return pending


def right_pad(pieces: list[Tensor], pad_id: int) -> Tensor:
    """Concatenate (n_i, C_i) id tensors along dim 0, right-padded with ``pad_id`` to the widest."""
    width = max(piece.shape[1] for piece in pieces)
    padded = [torch.nn.functional.pad(piece, (0, width - piece.shape[1]), value=pad_id) for piece in pieces]
    return torch.cat(padded, dim=0)


__all__ = ["RolloutEngine", "SampledCompletions", "right_pad"]
